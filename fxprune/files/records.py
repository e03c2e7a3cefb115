"""What a saved file records beyond modules and graph, so that a load gives back what
:func:`fxprune.compress` returned (issue 24):

- ``ties``: ``{alias: parameter}`` for every saved parameter reachable under more than one name
  (torch.save stores the tensor once; :func:`fxprune.files.selfcheck.retie` makes the alias the same
  ``nn.Parameter`` again, so a tied model keeps its parameter count);
- ``module_training``: ``{module name: training}`` for every module the load rebuilds;
- ``manifest_widths``: ``{param path: {dim: original width}}``, which lets a load without the
  original check the manifest's indices (:func:`fxprune.files.selfcheck.check_manifest_widths`).

``requires_grad`` is recorded with each parameter (module specs and ``attrs``). Files written
before these records load as before: every module takes the root's training flag, parameters
are not tied, and the manifest is checked against the saved tensors only.
"""

from __future__ import annotations

__all__ = ["records", "check_records"]

from typing import Any

import torch.fx as fx
import torch.nn as nn

from fxprune.errors import InputError
from fxprune.files import trust


def _rebuilt_names(pruned: fx.GraphModule, targets: list[str]) -> list[str]:
    """The names of the modules a load rebuilds: the root, the containers on the way to each
    saved module or attribute, and the saved modules with their children."""
    names = {""}
    for t in targets:
        parts = t.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts)))
    for t in targets:
        mod = pruned.get_submodule(t) if _is_module(pruned, t) else None
        if mod is not None:
            names.update(f"{t}.{n}" if n else t
                         for n, _m in mod.named_modules(remove_duplicate=False))
    return sorted(names)


def _is_module(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def records(pruned: fx.GraphModule, modules: dict[str, Any], attrs: dict[str, Any],
            widths: dict[str, dict[int, int]] | None) -> dict[str, Any]:
    """The records above for a GraphModule whose saved modules and attrs are given."""
    first: dict[int, str] = {}
    ties: dict[str, str] = {}
    for target in modules:
        mod = pruned.get_submodule(target)
        for rel, p in mod.named_parameters(remove_duplicate=False):
            path = f"{target}.{rel}"
            ties.update({path: first[id(p)]} if id(p) in first else {})
            first.setdefault(id(p), path)
    for target, a in attrs.items():
        if a.get("parameter"):
            p = pruned.get_parameter(target)
            ties.update({target: first[id(p)]} if id(p) in first else {})
            first.setdefault(id(p), target)
    found = {name: m for name, m in pruned.named_modules(remove_duplicate=False)}
    flags = {name: bool(found[name].training)
             for name in _rebuilt_names(pruned, [*modules, *attrs]) if name in found}
    manifest = pruned.meta.get("fxprune.manifest") or {}
    out: dict[str, Any] = {"ties": ties, "module_training": flags}
    if widths:
        out["manifest_widths"] = {k: {int(d): int(n) for d, n in v.items()}
                                  for k, v in widths.items() if k in manifest}
    return out


def _str_map(field: str, v: Any, value_type: type) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise InputError(f"field '{field}': expected dict, got {type(v).__name__}")
    for k, x in v.items():
        if not isinstance(k, str):
            raise InputError(f"field '{field}': a key is a {type(k).__name__}, not a name")
        if k:
            trust.check_path(k, f"field '{field}'")
        if not isinstance(x, value_type) or (value_type is int and isinstance(x, bool)):
            raise InputError(f"field '{field}'['{k}']: expected {value_type.__name__}, got "
                             f"{type(x).__name__}")
    return v


def check_records(p: dict[str, Any]) -> None:
    """The records' structure (their meaning is checked once the modules are rebuilt)."""
    if p.get("ties") is not None:
        for k, v in _str_map("ties", p["ties"], str).items():
            trust.check_path(v, f"field 'ties'['{k}']")
    if p.get("module_training") is not None:
        _str_map("module_training", p["module_training"], bool)
    if p.get("manifest_widths") is not None:
        for k, dims in _str_map("manifest_widths", p["manifest_widths"], dict).items():
            for d, n in dims.items():
                if isinstance(d, bool) or not isinstance(d, int) or isinstance(n, bool) or \
                        not isinstance(n, int) or n < 1:
                    raise InputError(f"field 'manifest_widths'['{k}']: expected "
                                     f"{{dim: positive width}}, got {{{d!r}: {n!r}}}")
    for k, a in p.get("attrs", {}).items():
        if isinstance(a, dict) and not isinstance(a.get("requires_grad", True), bool):
            raise InputError(f"attrs['{k}']['requires_grad']: expected bool")
