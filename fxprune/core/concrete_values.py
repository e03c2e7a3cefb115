"""Values of a concrete-value trace (:mod:`fxprune.core.concrete`): where each comes from,
and the Python structures that carry proxies.

Reads:  the arguments and results of the ops a :class:`~fxprune.core.concrete.ConcreteTracer`
        records
Writes: nothing (pure helpers), bar :func:`attrs_restore`, which puts back module attributes

Every value is ``CONST`` (the same for any input), ``SIZE`` (follows the input's sizes) or
``DATA`` (follows the input's values); a tensor has one for its shape and one for its contents.
"""

from __future__ import annotations

__all__ = ["CONST", "SIZE", "DATA", "deps", "walk", "proxies", "unwrap", "tensorish",
           "holds_proxy", "any_proxy", "remake", "remake_dict", "with_node", "PLAIN", "arg",
           "op_name", "attrs_snapshot", "attrs_restore", "SPLITS", "CONSTANT_ATTRS",
           "META_READS"]

import dataclasses
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

CONST, SIZE, DATA = 0, 1, 2

#: Ops whose output's shape depends on the input's values.
_DATA_SHAPED = frozenset(("nonzero", "masked_select", "unique", "unique_consecutive", "nms",
                          "batched_nms", "argwhere", "repeat_interleave", "bincount"))
#: Reads of a tensor's sizes, and of its metadata (constant for one trace).
_SIZE_READS = frozenset(("size", "numel", "nelement", "shape", "len"))
META_READS = frozenset(("dim", "ndimension", "ndim", "dtype", "device", "is_cuda",
                         "is_floating_point", "is_complex", "is_contiguous", "requires_grad",
                         "layout", "get_device", "is_sparse", "is_quantized", "is_meta"))
CONSTANT_ATTRS = frozenset(("dtype", "device", "ndim", "is_cuda", "layout", "is_sparse",
                             "is_quantized", "is_meta"))
#: Ops whose scalar arguments do not change the output's shape.
_ELEMENTWISE = frozenset(("add", "sub", "mul", "truediv", "floordiv", "pow", "mod", "div",
                          "clamp", "clip", "where", "fill_", "masked_fill", "eq", "ne", "lt",
                          "le", "gt", "ge", "and_", "or_", "neg", "rsub", "radd", "rmul"))
SPLITS = frozenset(("chunk", "split", "unbind", "tensor_split", "unsafe_chunk",
                     "unsafe_split"))



def op_name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def walk(x: Any, fn: Any, memo: set[int] | None = None) -> Any:
    """Map ``fn`` over the proxies in ``x``: containers, dataclasses and plain objects."""
    if isinstance(x, fx.Proxy):
        return fn(x)
    if isinstance(x, (list, tuple)) and not isinstance(x, torch.Size):
        items = [walk(v, fn, memo) for v in x]
        if isinstance(x, list):
            return items
        return type(x)(*items) if hasattr(x, "_fields") else remake(x, items)
    if isinstance(x, dict):
        out = {k: walk(v, fn, memo) for k, v in x.items()}
        return out if type(x) is dict else remake_dict(x, out)
    if holds_proxy(x):
        copy = x.__class__.__new__(x.__class__)
        copy.__dict__.update({k: walk(v, fn, memo) for k, v in vars(x).items()})
        return copy
    return x


def remake(x: tuple, items: list) -> tuple:
    try:
        return type(x)(items)
    except Exception:  # noqa: BLE001 - a tuple subclass with another constructor
        return tuple(items)


def remake_dict(x: dict, out: dict) -> Any:
    if dataclasses.is_dataclass(x):
        return type(x)(**out)
    try:
        return type(x)(out)
    except Exception:  # noqa: BLE001
        return out


def holds_proxy(x: Any) -> bool:
    d = getattr(x, "__dict__", None)
    if not isinstance(d, dict) or isinstance(x, (nn.Module, type, fx.Proxy)) or callable(x):
        return False
    return any(isinstance(v, fx.Proxy) or (isinstance(v, (list, tuple, dict)) and any_proxy(v))
               for v in d.values())


def any_proxy(x: Any) -> bool:
    found = []
    walk(x, lambda p: found.append(p))
    return bool(found)


def proxies(x: Any) -> list[Any]:
    found: list[Any] = []
    walk(x, lambda p: found.append(p) if hasattr(p, "_cv") else None)
    return found


def unwrap(x: Any) -> Any:
    return walk(x, lambda p: p._cv)


def tensorish(v: Any) -> bool:
    return isinstance(v, Tensor) or (isinstance(v, (list, tuple)) and not isinstance(
        v, torch.Size) and any(isinstance(t, Tensor) for t in v))


def deps(kind: str, target: Any, args: Any, kwargs: Any, value: Any) -> tuple[int, int]:
    """(shape or value dependence, contents dependence) of an op's result."""
    ins = proxies((args, kwargs))
    tens = [p for p in ins if tensorish(p._cv)]
    shape = max((p._dep for p in tens), default=CONST)
    content = max((p._cdep for p in ins), default=CONST)
    scalars = max((p._dep for p in ins if not tensorish(p._cv)), default=CONST)
    name = op_name(target)
    if tensorish(value) or kind == "call_module":
        if name in _DATA_SHAPED or (name == "where" and len(args) + len(kwargs) == 1):
            return DATA, max(content, DATA)
        if name in ("getitem", "__getitem__") and len(args) > 1 and any(
                isinstance(p._cv, Tensor) and p._cv.dtype == torch.bool
                for p in proxies(args[1])):
            return max(shape, content), content  # a boolean mask selects by value
        if name not in _ELEMENTWISE:
            shape = max(shape, scalars)
        return shape, content
    if name in _SIZE_READS and tens:
        return shape, shape
    if name in META_READS:
        return CONST, CONST
    return content, content


class _NodeList(list):
    """A list an op returned, unpacked, still naming its node (as torch.fx's wrapped
    functions expect of what ``create_proxy`` returns)."""


class _NodeTuple(tuple):  # noqa: SLOT001 - it carries .node and .tracer
    pass


class _NodeDict(dict):
    pass


PLAIN: dict[type, type] = {_NodeList: list, _NodeTuple: tuple, _NodeDict: dict}


def with_node(items: Any, p: fx.Proxy) -> Any:
    if type(items) is list:
        out: Any = _NodeList(items)
    elif type(items) is tuple:
        out = _NodeTuple(items)
    elif type(items) is dict:
        out = _NodeDict(items)
    else:
        return items  # an OrderedDict: torch.fx's wrapped functions do not return those
    out.node, out.tracer = p.node, p.tracer
    return out


def arg(args: tuple, kwargs: dict, i: int, *names: str) -> Any:
    for n in names:
        if n in kwargs:
            return kwargs[n]
    return args[i] if len(args) > i else None


_STATE_KEYS = ("_parameters", "_buffers", "_modules")


def attrs_snapshot(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    """The plain attributes of every module (a forward may cache values on ``self``)."""
    return [(m, {k: v for k, v in m.__dict__.items() if k not in _STATE_KEYS})
            for m in model.modules()]


def attrs_restore(snapshot: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    """Put back the attributes a trace set (proxies, caches), keeping torch.fx's constants."""
    for m, saved in snapshot:
        for k in [k for k in m.__dict__ if k not in saved and k not in _STATE_KEYS]:
            if not k.startswith(("_tensor_constant", "_torchbind_obj")):
                del m.__dict__[k]
        for k, v in saved.items():
            if m.__dict__.get(k, saved) is not v:
                m.__dict__[k] = v

