"""Helpers shared by the rule families (argument access, id alignment)."""

from __future__ import annotations

__all__ = ["align", "norm_dim", "tensor_args", "reshape_ids", "dims_arg", "new_shape_of",
           "last_axes", "channel_axes_beside"]

from typing import Any

import torch.fx as fx
from torch import Tensor

from fxprune.ir import meta
from fxprune.ir.channels import compress, kept_along


def align(ids: Tensor, ndim: int) -> Tensor:
    """Prepend size-1 dims (torch broadcasting aligns shapes on the right)."""
    if ids.dim() < ndim:
        return ids.reshape((1,) * (ndim - ids.dim()) + tuple(ids.shape))
    return ids


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def dims_arg(d: Any, ndim: int) -> list[int]:
    if d is None:
        return list(range(ndim))
    if isinstance(d, int):
        return [norm_dim(d, ndim)]
    return [norm_dim(int(x), ndim) for x in d]


def tensor_args(node: fx.Node, args: tuple, kwargs: dict) -> list[tuple[Tensor, Tensor]]:
    """(ids, value) for every tensor-valued node among the positional and keyword args."""
    out = []
    items = list(zip(node.args, args)) + [(node.kwargs[k], kwargs[k]) for k in node.kwargs]
    for a, v in items:
        if isinstance(a, fx.Node) and isinstance(v, Tensor):
            ids = meta.get_ids(a)
            if isinstance(ids, Tensor):
                out.append((ids, v))
    return out


def reshape_ids(ids: Tensor, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Tensor:
    """Ids of ``value.reshape(out_shape)`` given the ids of a value of ``in_shape``."""
    if ids.numel() == 1:
        return ids.reshape(()).expand((1,) * len(out_shape)).clone()
    if (in_shape and out_shape and in_shape[0] == out_shape[0] and ids.shape[0] == 1
            and len(in_shape) > 1 and len(out_shape) > 1):
        inner = ids.reshape(ids.shape[1:]).expand(in_shape[1:]).reshape(out_shape[1:])
        return compress(inner.unsqueeze(0))
    full = ids.expand(in_shape).reshape(out_shape)
    return compress(full)


def new_shape_of(ids: Tensor, old_shape: tuple[int, ...], kept: Tensor) -> tuple[int, ...]:
    """Expected shape of a value after pruning, from its ids and the global kept mask."""
    shape = list(old_shape)
    for d in range(ids.dim()):
        if ids.shape[d] > 1:
            shape[d] = int(kept_along(ids, kept, d).sum())
    return tuple(shape)


def last_axes(nd: int, k: int) -> str:
    """The last ``k`` of ``nd`` axes, for messages: ``"2..3"``, or ``"3"`` for one axis."""
    return f"{nd - k}..{nd - 1}" if k > 1 else str(nd - 1)


def channel_axes_beside(node: fx.Node, users: Any, shape: tuple[int, ...],
                        same_size: bool = False) -> set[int]:
    """Axes of ``node``'s value (of ``shape``, right-aligned) along which the already
    analysed operands next to it in ``users`` carry channels; ``same_size``: only where the
    operand's axis has ``node``'s size there (an elementwise use, not a ``cat``)."""
    nd = len(shape)
    found: set[int] = set()

    def visit(a: Any) -> None:
        if isinstance(a, (list, tuple)):
            for x in a:
                visit(x)
        elif isinstance(a, fx.Node) and a is not node:
            ids = meta.get_ids(a)
            if not isinstance(ids, Tensor):
                return
            off = nd - ids.dim()
            found.update(d + off for d in range(ids.dim()) if ids.shape[d] > 1 and d + off >= 0
                         and (not same_size or ids.shape[d] == shape[d + off]))

    for user in users:
        visit(user.args)
    return found

