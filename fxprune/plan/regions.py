"""Opaque regions: modules a trace keeps as one op, with their children pruned on their own.

Reads:  a pruned GraphModule whose trace kept modules opaque (``gm.meta["fxprune.opaque"]``),
        the original model and its example inputs
Writes: the pruned GraphModule, with each opaque module replaced by a copy whose children are
        pruned GraphModules; ``pruned.meta["fxprune.regions"]``: one entry per child

A module that decides on tensor values (torchvision's RPN and ROI heads run NMS and score
thresholds) or cannot be traced is kept whole by the trace: its inputs' and outputs'
channels are kept (frozen, with the reason). Its children are then pruned one by one, as
NVIDIA ModelOpt's tracer does: each child that was called during one run of the original
model on the example inputs is compressed on the inputs it received (its own trace, analysis
and oracle: a detector's heads are checked on their raw outputs, before thresholds and NMS);
a child that cannot be traced is split into its own children in turn. A child keeps its input
and output channels (they are the region's boundary), so the opaque code around it sees the
same shapes. A child that fails (nothing to prune, the oracle rejects it) is kept as it was,
with the reason in ``pruned.meta["fxprune.regions"]``.
"""

from __future__ import annotations

__all__ = ["prune_regions", "prune_opaque_root", "REGIONS"]

import copy
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from fxprune.errors import FxPruneError
from fxprune.ir.state import untouched

REGIONS = "fxprune.regions"  # pruned.meta: {child path: "pruned (...)" or why it was kept}
_MAX_DEPTH = 4


def _record_calls(model: nn.Module, paths: list[str], inputs: tuple) -> dict[str, list[dict]]:
    """The arguments (bound by name) of every call of the modules at ``paths`` during one run
    of ``model`` on ``inputs``."""
    calls: dict[str, list[dict]] = {p: [] for p in paths}
    handles = []
    for path in paths:
        mod = model.get_submodule(path)

        def hook(m: nn.Module, args: tuple, kwargs: dict, path: str = path) -> None:
            try:
                bound = inspect.signature(m.forward).bind(*args, **kwargs).arguments
            except TypeError:
                return
            calls[path].append(dict(bound))

        handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with untouched(model, eval_mode=True), torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


def prune_regions(model: nn.Module, pruned: nn.Module, opaque: dict[str, str], inputs: tuple,
                  compress_kw: dict[str, Any], compress: Callable[..., Any], depth: int = 0
                  ) -> dict[str, str]:
    """Prune the children of every opaque module of ``model`` with ``compress`` (called as
    ``compress(child, example_inputs=..., **compress_kw)``) and put them into ``pruned`` (which
    holds the opaque modules under the same paths); returns ``{path: outcome}``."""
    compress_kw = {**compress_kw, "_compress": compress}
    report: dict[str, str] = {}
    if depth >= _MAX_DEPTH or not opaque:
        return report
    roots = [p for p in opaque if p and not any(p.startswith(q + ".") for q in opaque if q)]
    children = {p: [f"{p}.{n}" for n, c in model.get_submodule(p).named_children()
                    if _has_params(c)] for p in roots}
    wanted = [c for cs in children.values() for c in cs]
    if not wanted:
        return report
    calls = _record_calls(model, wanted, inputs)
    for path in roots:
        new = _prune_children(model, path, children[path], calls, inputs, compress_kw, report,
                              depth)
        if new is not None:
            pruned.set_submodule(path, new)
    return report


def _prune_children(model: nn.Module, path: str, kids: list[str], calls: dict[str, list[dict]],
                    inputs: tuple, compress_kw: dict[str, Any], report: dict[str, str],
                    depth: int) -> nn.Module | None:
    """A copy of the module at ``path`` with its children pruned (None: none was)."""
    replaced: dict[str, nn.Module] = {}
    for kid in kids:
        child = model.get_submodule(kid)
        seen = calls.get(kid) or []
        new_kid = None
        if seen:
            new_kid = _prune_one(kid, child, seen, compress_kw, report)
        elif depth + 1 < _MAX_DEPTH:  # a container (ModuleList...): its modules are called
            inner = [f"{kid}.{n}" for n, c in child.named_children() if _has_params(c)]
            if inner:
                new_kid = _prune_children(model, kid, inner, _record_calls(model, inner, inputs),
                                          inputs, compress_kw, report, depth + 1)
            else:
                report[kid] = "kept: not called on the example inputs"
        if new_kid is not None:
            replaced[kid.rsplit(".", 1)[-1]] = new_kid
    if not replaced:
        return None
    parent = model.get_submodule(path)
    new = copy.copy(parent)
    new._parameters, new._buffers = dict(parent._parameters), dict(parent._buffers)
    new._modules = dict(parent._modules)
    new._modules.update(replaced)
    return new


def prune_opaque_root(model: nn.Module, inputs: tuple, compress_kw: dict[str, Any],
                      reason: str, compress: Callable[..., Any]) -> nn.Module:
    """The model's own forward cannot be traced (a detector's post-processing runs in it):
    a copy of the model, of its class, whose children are pruned as opaque regions' are.
    ``copy.fxprune_meta`` holds ``{"fxprune.opaque": {"": reason}, "fxprune.regions": ...}``.
    Raises :class:`~fxprune.errors.TraceFailure` when no child could be pruned."""
    from fxprune.errors import TraceFailure

    kids = [n for n, c in model.named_children() if _has_params(c)]
    report: dict[str, str] = {}
    new = _prune_children(model, "", kids, _record_calls(model, kids, inputs), inputs,
                          {**compress_kw, "_inputs": inputs, "_compress": compress}, report, 0)
    if new is None:
        kept = "; ".join(f"{k}: {v}" for k, v in report.items())[:600]
        raise TraceFailure(f"{reason}\nNone of its children could be pruned on its own "
                           f"either ({kept or 'none has parameters'}).")
    new.__dict__["fxprune_meta"] = {"fxprune.opaque": {"": reason}, REGIONS: report}
    return new


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _prune_one(path: str, child: nn.Module, seen: list[dict], compress_kw: dict[str, Any],
               report: dict[str, str]) -> nn.Module | None:
    from fxprune.core.verify import verify

    compress = compress_kw["_compress"]
    kw = {k: v for k, v in compress_kw.items() if not k.startswith("_")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = compress(child, example_inputs=seen[0], **kw)
            for other in seen[1:]:  # a module called again (per feature level...)
                again = verify(child, small, other)
                if not again.ok:
                    raise FxPruneError(f"another call's inputs: {again}")
    except Exception as e:  # noqa: BLE001 - the child is kept as it was, with the reason
        report[path] = f"kept: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return None
    meta = getattr(small, "meta", None) or small.__dict__.get("fxprune_meta", {})
    v = meta.get("fxprune.verify")
    report[path] = (f"pruned ({v.status})" if v is not None else
                    "pruned (its children, as regions)" if REGIONS in meta else "pruned")
    for sub, why in meta.get(REGIONS, {}).items():
        report[f"{path}.{sub}"] = why
    return small
