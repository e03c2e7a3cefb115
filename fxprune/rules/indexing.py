"""Indexing: ``x[...]`` (ints, slices, None, Ellipsis, one index tensor) and ``narrow``.

Slices of a channel axis take ranges of its ids (the rewrite translates the bounds to the
pruned layout); an integer picks one channel (frozen: its axis disappears); an index tensor
gathers along an axis without channels (a relative-position table indexed by a buffer of
positions) and puts the index's shape in its place.
"""

from __future__ import annotations

__all__ = ["GetItem", "Narrow"]

import operator

import torch
import torch.fx as fx
from torch import Tensor

from fxprune.rules import register_rule
from fxprune.rules.shape import _one_channel_frozen, _Sizes, _unsupported, _val
from fxprune.rules.util import norm_dim


def _expand_index(idx: object, ndim: int) -> list[object]:
    items = list(idx) if isinstance(idx, tuple) else [idx]
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    out: list[object] = []
    for i in items:
        if i is Ellipsis:
            out.extend([slice(None)] * (ndim - n_real))
        else:
            out.append(i)
    consumed = sum(1 for i in out if i is not None)
    out.extend([slice(None)] * (ndim - consumed))
    return out


@register_rule(operator.getitem)
class GetItem(_Sizes):
    """Indexing: tuples pick ids; tensor slices slice ids (bounds translated on rewrite)."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        src = ctx.ids(0)
        idx = ctx.arg(1)
        if isinstance(src, tuple):
            return src[idx]
        x = ctx.arg(0)
        items = _expand_index(idx, x.dim())
        raw = _expand_index(ctx.node.args[1], x.dim())
        tensors = [it for it in items if isinstance(it, Tensor)]
        if len(tensors) > 1 or (tensors and any(
                isinstance(it, int) and not isinstance(it, bool) for it in items)):
            raise _unsupported("advanced indexing with several index tensors or integers")
        out, d = src, 0
        for it, r in zip(items, raw):
            if it is None:
                out = out.unsqueeze(d)
                d += 1
                continue
            vary = out.shape[d] > 1
            if isinstance(it, Tensor) and not vary and it.dtype != torch.bool:
                # a gather along an axis without channels: the index's shape takes its place
                out = out.reshape(out.shape[:d] + (1,) * it.dim() + out.shape[d + 1:])
                d += it.dim()
                continue
            if isinstance(it, bool) or not isinstance(it, (int, slice)):
                if vary:
                    raise _unsupported("advanced indexing on a channel axis")
                raise _unsupported("advanced indexing")
            if vary and (isinstance(r, fx.Node) or (isinstance(r, slice) and any(
                    isinstance(v, fx.Node) for v in (r.start, r.stop, r.step)))):
                raise _unsupported("a computed index on a channel axis")
            if isinstance(it, int):
                if vary:
                    ctx.freeze(out.select(d, it), "selected by an integer index")
                    out = out.select(d, it)
                else:
                    out = out.squeeze(d)
                continue
            if vary:
                if it.step not in (None, 1):
                    raise _unsupported("strided slice on a channel axis")
                out = _one_channel_frozen(ctx, out[(slice(None),) * d + (it,)], d)
            d += 1
        return out.contiguous()

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        old = ctx.old(node)
        src = old.args[0]
        shape = ctx.old_shape(src)
        if not isinstance(shape, tuple) or not shape or not isinstance(shape[0], int):
            return  # indexing a tuple of tensors
        values = _expand_index(ctx.arg_value(old, 1), len(shape))
        items = _expand_index(node.args[1], len(shape))  # the new graph's own nodes
        new_items, d, changed = [], 0, False
        for it, val in zip(items, values):
            if val is None:
                new_items.append(it)
                continue
            keep = ctx.kept_positions(src, d)
            if keep is not None and isinstance(val, int):
                p = val % shape[d]
                it, changed = int(keep[:p].sum()), True
            elif keep is not None and isinstance(val, slice):
                start, stop, _ = val.indices(shape[d])
                it = slice(None if val.start is None else int(keep[:start].sum()),
                           None if val.stop is None else int(keep[:stop].sum()), val.step)
                changed = True
            new_items.append(it)
            d += 1
        if changed:
            node.args = (node.args[0], tuple(new_items))


@register_rule(torch.narrow, "narrow")
class Narrow(_Sizes):
    """narrow(dim, start, length): a slice along one axis."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        ids = ctx.ids(0, "input")
        dim = norm_dim(int(ctx.arg(1, "dim")), ids.dim())
        start, length = int(ctx.arg(2, "start")), int(ctx.arg(3, "length"))
        if ids.shape[dim] == 1:
            return ids
        return _one_channel_frozen(ctx, ids.narrow(dim, start, length), dim)

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        old = ctx.old(node)
        src = old.args[0]
        dim = norm_dim(int(_val(ctx, old, 1, "dim")), len(ctx.old_shape(src)))
        keep = ctx.kept_positions(src, dim)
        if keep is None:
            return
        start, length = int(_val(ctx, old, 2, "start")), int(_val(ctx, old, 3, "length"))
        node.args = (node.args[0], dim, int(keep[:start].sum()),
                     int(keep[start:start + length].sum()))
        node.kwargs = {}
