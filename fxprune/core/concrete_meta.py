"""The concrete-value trace on meta tensors first: shape decisions need no values.

Reads:  the user's model and its example inputs (neither is modified)
Writes: a torch.fx Graph (as :func:`fxprune.core.concrete.concrete_graph`)

:func:`concrete_graph` runs every op of the model on the example's values while it records
them, which costs a forward pass (12 s of CPU for timm's ``mobilenetv5_300m`` at 768x768 on
one thread, where torch.fx's symbolic trace takes 0.4 s). Most models need the concrete trace
only for decisions on *sizes* (``if feat.shape[-1] < high.shape[-1]``, ``list(x.chunk(2))``),
which tensors on the ``meta`` device answer without computing anything. So the trace runs
first on a twin of the model whose parameters and buffers are meta tensors, with meta inputs.
Its graph is used only when it is complete: no module had to stay opaque, and every attribute
it reads resolves on the user's model (no tensor constant made during the trace). Python that
reads a tensor's *values* (``.item()``, ``.tolist()``, ``bool()``) fails on meta tensors, so a
graph that completes read none: it is the graph the real trace records. Otherwise the trace
runs again on the real values, as before; the first attempt stops at its first failure.
"""

from __future__ import annotations

__all__ = ["concrete_graph_cheapest"]

import copy
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.concrete import concrete_graph


def _meta_tensor(t: Tensor) -> Tensor:
    m = torch.empty_like(t, device="meta")
    return nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else m


def _meta_inputs(value: Any) -> Any:
    """``value`` with every tensor on the meta device (tuples, lists and dicts of them);
    ``None`` where it holds anything else that is not a plain Python scalar or string."""
    if isinstance(value, Tensor):
        return _meta_tensor(value) if type(value) in (Tensor, nn.Parameter) else None
    if isinstance(value, (tuple, list)):
        items = [_meta_inputs(v) for v in value]
        if any(i is None and v is not None for i, v in zip(items, value)):
            return None
        return type(value)(items) if type(value) in (tuple, list) else None
    if isinstance(value, dict):
        items = {k: _meta_inputs(v) for k, v in value.items()}
        if any(items[k] is None and v is not None for k, v in value.items()):
            return None
        return items if type(value) is dict else None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None


def meta_twin(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` whose registered parameters and buffers are meta tensors (no data
    is copied); ``None`` when a tensor is of a subclass that may not move to meta."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if type(t) not in (Tensor, nn.Parameter):
            return None
        memo[id(t)] = _meta_tensor(t)
    try:
        return copy.deepcopy(model, memo)
    except Exception:  # noqa: BLE001 - an attribute that does not copy: trace the real model
        return None


def _names_meta(a: Any) -> bool:
    """An argument that recorded the twin's device (``torch.zeros(..., device=x.device)``)."""
    found = False

    def look(v: Any) -> Any:
        nonlocal found
        found = found or (isinstance(v, torch.device) and v.type == "meta") or (
            isinstance(v, str) and v == "meta") or (isinstance(v, Tensor) and v.is_meta)
        return v

    fx.node.map_aggregate(a, look)
    return found


def _usable(model: nn.Module, graph: fx.Graph) -> bool:
    """Every attribute the graph reads resolves on ``model``, to no meta tensor, and no
    argument names the meta device."""
    for n in graph.nodes:
        if _names_meta(n.args) or _names_meta(n.kwargs):
            return False
        if n.op in ("get_attr", "call_module"):
            obj: Any = model
            for part in str(n.target).split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    return False
            if isinstance(obj, Tensor) and obj.is_meta:
                return False
    return True


def concrete_graph_cheapest(model: nn.Module, inputs: tuple, shapes: dict[str, tuple[int, ...]]
                            ) -> tuple[fx.Graph, dict[str, str]]:
    """:func:`~fxprune.core.concrete.concrete_graph` of ``model`` on ``inputs``, traced on
    meta tensors where that gives a complete graph (module docstring), else on the values."""
    twin, meta_in = meta_twin(model), _meta_inputs(tuple(inputs))
    if twin is not None and meta_in is not None:
        try:
            graph, opaque = concrete_graph(twin, meta_in, shapes, max_retries=1)
        except Exception:  # noqa: BLE001 - a module needs values (or fails): trace them
            pass
        else:
            if not opaque and _usable(model, graph):
                return graph, opaque
    return concrete_graph(model, inputs, shapes)
