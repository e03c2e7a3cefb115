"""Saving and loading pruned models without pickling classes.

A saved file is a ``torch.save`` of plain data (dicts, lists, strings, numbers, tensors), so it
opens with ``torch.load(path, weights_only=True)``:

* ``graph``: the nodes of the GraphModule (op, name, target, args with node references);
* ``modules``: each leaf module as its class path, simple attributes, parameters and buffers;
* ``attrs``: tensors read by ``get_attr`` nodes;
* ``manifest``: the kept indices of every pruned parameter axis.

:func:`load` rebuilds the GraphModule without running code from the file: every name and
target is checked by :mod:`fxprune.files.trust` (identifiers only; tensor ops, operators and
nn.Module classes of torch, torchvision, timm and fxprune, plus ``trusted_modules``), the file
is checked against itself by :mod:`fxprune.files.filecheck`, and any corrupt file raises
:class:`~fxprune.errors.InputError`. ``load(path, model=fresh)`` instead re-applies the manifest
to a freshly created original model (:func:`apply_manifest`) and loads the saved weights into it.
"""

from __future__ import annotations

__all__ = ["save", "load", "read", "from_payload", "apply_manifest", "NotAnFxpruneFile"]

import builtins
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.errors import FxPruneError, InputError, short_error
from fxprune.files import filecheck, trust
from fxprune.files.rebuild import build
from fxprune.files.records import check_records, records
from fxprune.ir import meta
from fxprune.ir.threads import model_guard

FORMAT = "fxprune/1"
_MODULE_INTERNALS = set(nn.Module().__dict__) - {"training"}


class NotAnFxpruneFile(InputError):
    """The file is not an :func:`save` file (it may be a pickle: never unpickled here).

    ``reason`` is the first sentence of the message, without the hint.
    """

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(f"{reason}. {hint}".strip())
        self.reason = reason


# --- encoding ---------------------------------------------------------------------------------

def _qualname(obj: Any) -> str:
    """An importable dotted name that resolves back to ``obj``."""
    if obj is builtins.getattr:
        return "builtins.getattr"
    mod = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    candidates = []
    if mod and name:
        candidates.append(f"{mod}.{name}")
    short = getattr(obj, "__name__", None)
    if short:
        candidates += [f"torch.{short}", f"torch.nn.functional.{short}", f"operator.{short}",
                       f"torch.Tensor.{short}", f"math.{short}"]
    for c in candidates:
        try:
            if _import_path(c) is obj:
                return c
        except Exception:  # noqa: BLE001 - try the next candidate
            continue
    raise FxPruneError(
        f"cannot save a reference to {obj!r}: it has no importable name. Hint: use "
        "torch.save(pruned, path) (pickle) for this model, or save the manifest and re-apply "
        "it with fxprune.apply_manifest().")


def _import_path(path: str) -> Any:
    """Resolve a dotted name of the user's own model at save time (load uses fxprune.trust)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(path)


def _enc(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str, Tensor)):
        return v
    if isinstance(v, fx.Node):
        return {"__node__": v.name}
    if isinstance(v, torch.Size):
        return {"__tuple__": [int(x) for x in v]}
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"__dict__": {k: _enc(x) for k, x in v.items()}}
    if isinstance(v, slice):
        return {"__slice__": [_enc(v.start), _enc(v.stop), _enc(v.step)]}
    if v is Ellipsis:
        return {"__ellipsis__": True}
    if isinstance(v, torch.dtype):
        return {"__dtype__": str(v).replace("torch.", "")}
    if isinstance(v, torch.device):
        return {"__device__": str(v)}
    if isinstance(v, torch.memory_format):
        return {"__memfmt__": str(v).replace("torch.", "")}
    if isinstance(v, (set, frozenset)):
        return {"__set__": [_enc(x) for x in v]}
    if callable(v):
        return {"__ref__": _qualname(v)}
    raise FxPruneError(f"cannot save a value of type {type(v).__name__}: {v!r}")


def _module_spec(m: nn.Module) -> dict[str, Any]:
    cls = type(m)
    attrs = {k: _enc(v) for k, v in m.__dict__.items() if k not in _MODULE_INTERNALS}
    return {
        "class": _qualname(cls),
        "attrs": attrs,
        "params": {k: p.detach() for k, p in m._parameters.items() if p is not None},
        "requires_grad": {k: bool(p.requires_grad) for k, p in m._parameters.items()
                          if p is not None},
        "buffers": {k: b for k, b in m._buffers.items() if b is not None},
        "non_persistent": sorted(m._non_persistent_buffers_set),
        "none": sorted([k for k, p in m._parameters.items() if p is None]),
        "none_buffers": sorted([k for k, b in m._buffers.items() if b is None]),
        "children": {k: _module_spec(c) for k, c in m._modules.items() if c is not None},
    }


# --- public API -------------------------------------------------------------------------------

def save(pruned: fx.GraphModule, path: str | Path) -> None:
    """Save a pruned GraphModule as plain data (loadable with ``weights_only=True``)."""
    if not isinstance(pruned, fx.GraphModule):
        hint = (" (a compress(..., keep_class=True) result: save the GraphModule of "
                "compress() without keep_class, and fxprune.graft() it into the class after "
                "load; see docs/tracing.md)" if hasattr(pruned, "fxprune_meta") else "")
        raise InputError(f"save() expects the GraphModule returned by compress(), got "
                         f"{type(pruned).__name__}{hint}")
    path = writable(path)
    with model_guard(pruned):  # not while another thread runs it (eval mode, buffers)
        payload = _payload(pruned)
    torch.save(payload, str(path))


def _payload(pruned: fx.GraphModule) -> dict[str, Any]:
    graph, modules, attrs = [], {}, {}
    for n in pruned.graph.nodes:
        target = n.target if isinstance(n.target, str) else {"__ref__": _qualname(n.target)}
        graph.append({"op": n.op, "name": n.name, "target": target, "args": _enc(n.args),
                      "kwargs": _enc(dict(n.kwargs))})
        if n.op == "call_module":
            modules[n.target] = _module_spec(pruned.get_submodule(str(n.target)))
        elif n.op == "get_attr":
            obj: Any = pruned
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            attrs[n.target] = {"value": obj.detach() if isinstance(obj, Tensor) else _enc(obj),
                               "parameter": isinstance(obj, nn.Parameter)}
            if isinstance(obj, nn.Parameter):
                attrs[n.target]["requires_grad"] = bool(obj.requires_grad)
    inputs = [x for x in pruned.meta.get("fxprune.example_inputs") or ()
              if isinstance(x, Tensor)]
    payload = {
        "format": FORMAT,
        "class_name": type(pruned).__name__,
        "graph": graph,
        "modules": modules,
        "attrs": attrs,
        "training": pruned.training,
        "manifest": {k: {int(d): list(v) for d, v in dims.items()}
                     for k, dims in (pruned.meta.get(meta.MANIFEST) or {}).items()},
        "state_dict": pruned.state_dict(),
        "residual": pruned.meta.get(meta.RESIDUAL, "coupled"),
        "example_input_shapes": [list(x.shape) for x in inputs],
        "example_input_dtypes": [str(x.dtype).replace("torch.", "") for x in inputs
                                 if x.is_floating_point()],
        **records(pruned, modules, attrs, pruned.meta.get(meta.MANIFEST_WIDTHS)),
    }
    if len(payload["example_input_dtypes"]) != len(inputs):
        del payload["example_input_dtypes"]  # non-float inputs: float32 is used at load
    return payload


def writable(path: str | Path) -> Path:
    """``path`` as a file that can be written, or an InputError (one line) saying why not."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise InputError(f"save: path must be a file name (str or pathlib.Path), got {path!r}")
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"save: {str(path)!r} is a directory; give a file name in it, e.g. "
                         f"{str(p / 'pruned.pt')!r}")
    parent = p.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise InputError(f"save: the folder of {str(path)!r} ({str(parent)!r}) {what}; create "
                         f"it first (e.g. mkdir -p {parent}) or save elsewhere")
    return p


def read(path: str | Path) -> dict[str, Any]:
    """The plain-data payload of a :func:`save` file, read with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        NotAnFxpruneFile: the file is not plain data with fxprune's format tag (a pickled
            module, a state_dict, a truncated file, ...). It is never unpickled.
    """
    hint = ("Files written by torch.save(model) load with torch.load(path, "
            "weights_only=False), which runs code stored in the file: only for files you trust.")
    try:
        payload = torch.load(str(path), weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        raise NotAnFxpruneFile(f"{path} is not an fxprune file: it holds pickled Python "
                               "objects, not plain data", hint) from e
    except Exception as e:  # noqa: BLE001 - whatever torch.load raises, the file is unreadable
        first = re.sub(r"\x1b\[[0-9;]*m", "", short_error(e)).splitlines()[0][:160]
        raise NotAnFxpruneFile(f"{path} is not an fxprune file: it cannot be read as plain "
                               f"data ({first})", hint) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        what = (f"a dict with keys {sorted(map(str, payload))[:5]}"
                if isinstance(payload, dict) else f"a {type(payload).__name__}")
        raise NotAnFxpruneFile(f"{path} is not an fxprune file (expected format {FORMAT}, it "
                               f"holds {what})")
    return payload


def load(path: str | Path, model: nn.Module | None = None, *,
         trusted_modules: list[str] | tuple[str, ...] = (), check: bool = True
         ) -> fx.GraphModule:
    """Load a model saved with :func:`save`, without running code from the file.

    Args:
        path: the file.
        model: optional freshly created *original* model (same architecture): the saved
            manifest is re-applied to it and the saved weights loaded, without using the saved
            graph.
        trusted_modules: extra top-level packages whose functions and classes the file may
            name (the default is the policy of :mod:`fxprune.files.trust`).
        check: run the loaded module once, in eval mode and without gradients, on random
            inputs of the saved example-input shapes, so that a file inconsistent with itself
            fails here (naming the node) instead of at its first use.

    Raises:
        InputError: the file is not an fxprune file, is corrupt, or names code outside the
            trust policy; the message says what and where.
    """
    return from_payload(read(path), path, model=model, trusted_modules=trusted_modules,
                        check=check)


def from_payload(payload: dict[str, Any], source: str | Path = "<payload>",
                 model: nn.Module | None = None, *,
                 trusted_modules: list[str] | tuple[str, ...] = (), check: bool = True
                 ) -> fx.GraphModule:
    """:func:`load` for a payload already returned by :func:`read`."""
    if not isinstance(check, bool):
        raise InputError(f"check must be a bool, got {type(check).__name__}")
    extra = tuple(trusted_modules)
    for t in extra:
        trust.check_name(t, "trusted_modules")
    try:
        filecheck.check_payload(payload)
        check_records(payload)
        if model is not None:
            return _reapply(payload, model)
        return build(payload, extra, check)
    except InputError as e:
        raise InputError(f"{source}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a corrupt file is bad input, never a deep trace
        raise InputError(f"{source}: corrupt fxprune file ({short_error(e)[:300]})") from e


def _reapply(payload: dict[str, Any], model: nn.Module) -> fx.GraphModule:
    shapes = filecheck.example_shapes(payload)
    inputs = tuple(torch.randn(s, dtype=d) for s, d in shapes) or None
    pruned = apply_manifest(model, payload["manifest"], example_inputs=inputs,
                            residual=payload.get("residual", "coupled"))
    try:
        pruned.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise InputError(f"the saved weights do not fit the re-pruned model (is `model` the "
                         f"original architecture?): {short_error(e)[:400]}") from e
    return pruned


def apply_manifest(model: nn.Module, manifest: dict[str, dict[int, list[int]]],
                   example_inputs: Any = None, residual: str = "coupled") -> fx.GraphModule:
    """Prune a freshly created original model to the keep-sets recorded in ``manifest``.

    ``manifest`` is ``pruned.meta["fxprune.manifest"]`` (also stored by :func:`save`);
    ``residual`` must be the policy the model was pruned with.
    """
    from fxprune.core.analyze import analyze
    from fxprune.core.rewrite import rewrite
    from fxprune.core.select import annotate
    from fxprune.core.trace import trace
    from fxprune.core.verify import kept_from_manifest

    gm = trace(model, example_inputs)
    analysis = analyze(gm, residual=residual)
    kept = kept_from_manifest(analysis, manifest)
    keep: dict[int, meta.KeepSet] = {}
    for g in analysis.groups:
        keep[g.id] = meta.KeepSet(g.id, g.size, ())
    sel: dict[int, set[int]] = {g.id: set() for g in analysis.groups}
    ids = torch.nonzero(kept).flatten()
    ids = ids[analysis.group_of[ids] >= 0]
    for gid, u in zip(analysis.group_of[ids].tolist(), analysis.unit_index[ids].tolist()):
        sel[gid].add(u)
    keep = {g: meta.KeepSet(g, analysis.groups[g].size, tuple(sorted(s))) for g, s in
            sel.items()}
    annotate(gm, kept)
    gm.meta[meta.KEEPSETS] = keep
    return rewrite(gm)

