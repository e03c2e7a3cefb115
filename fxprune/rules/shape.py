"""Shape ops: reshape family, permutes, concatenation, splitting, padding, expand (indexing:
:mod:`fxprune.rules.indexing`).

Index bookkeeping lives here: ``cat`` concatenates the inputs' ids, ``split``/``chunk``/slicing
take ranges of them (and the rewrite translates offsets to the pruned layout), ``flatten`` into a
Linear repeats each channel id once per spatial position. ``view``/``reshape`` that split one
channel axis into several (channel shuffle, ``[B, 2, C, H, W]``) couple position ``j`` of every
block so the pruned tensor stays rectangular; the rewrite patches literal sizes.
"""

from __future__ import annotations

__all__ = ["Reshape", "Permute", "Transpose", "Cat", "Stack", "Split", "Expand", "Repeat",
           "Pad"]


import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fxprune.ir.channels import at_axis
from fxprune.rules import Rule, register_rule
from fxprune.rules.util import align, norm_dim, reshape_ids


class _Sizes(Rule):
    """Base of shape ops: their non-tensor arguments are sizes, indices or amounts."""

    def is_size_arg(self, node: fx.Node, key: int | str) -> bool:
        return True


def _unsupported(msg: str) -> Exception:
    from fxprune.ir.propctx import Unsupported

    return Unsupported(msg)


@register_rule(torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.ravel,
               "view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
               "unflatten", "ravel", torch.unflatten, nn.Flatten, nn.Unflatten, "squeeze_",
               "unsqueeze_")
class Reshape(_Sizes):
    """view/reshape/flatten/squeeze: ids follow elements; literal sizes are patched."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        x = ctx.arg(0, "input")
        ids = ctx.ids(0, "input")
        out = reshape_ids(ids, tuple(x.shape), tuple(ctx.out.shape))
        vary = [d for d in range(out.dim()) if out.shape[d] > 1]
        if ctx.attention == "heads" and len(vary) > 1:
            # (..., heads, dims): every dim of a head is one unit, the outer blocks (q/k/v)
            # share their heads; whole heads are removed
            for d in vary[:-2] + vary[-1:]:
                ctx.union(out.narrow(d, 0, 1), out)
            return out
        for d in vary[:-1]:  # several channel axes: couple position-wise across outer blocks
            ctx.union(out.narrow(d, 0, 1), out)
        return out

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        if node.op == "call_module" or node.target in (torch.flatten, "flatten", torch.ravel,
                                                       "ravel", "view_as", "reshape_as"):
            return
        if node.target in (torch.squeeze, torch.unsqueeze, "squeeze", "unsqueeze", "squeeze_",
                           "unsqueeze_"):
            return
        if node.target in ("unflatten", torch.unflatten):
            ctx.patch_unflatten(node)
            return
        ctx.patch_shape_args(node, first=1)


@register_rule(torch.permute, "permute")
class Permute(Rule):
    """permute: ids are permuted the same way."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        ids = ctx.ids(0, "input")
        dims = ctx.node.args[1:] if len(ctx.args) > 2 else ctx.arg(1, "dims")
        dims = ctx.args[1:] if len(ctx.args) > 2 else dims
        return ids.permute(*[norm_dim(int(d), ids.dim()) for d in dims])


@register_rule(torch.transpose, "transpose", torch.swapaxes, "swapaxes", torch.swapdims,
               "swapdims", torch.movedim, "movedim", torch.moveaxis, "moveaxis", "t", torch.t,
               "transpose_")
class Transpose(Rule):
    """transpose/movedim/t: ids move with their axes."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        ids = ctx.ids(0, "input")
        name = ctx.node.target if isinstance(ctx.node.target, str) else ctx.node.target.__name__
        if name == "t":
            return ids.t() if ids.dim() == 2 else ids
        a, b = ctx.arg(1), ctx.arg(2)
        if name in ("movedim", "moveaxis"):
            return torch.movedim(ids, a, b)
        return ids.transpose(int(a), int(b))


@register_rule(torch.cat, torch.concat, torch.concatenate)
class Cat(Rule):
    """cat: output ids are the inputs' ids concatenated (offsets follow automatically)."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        tensors = ctx.arg(0, "tensors")
        nodes = ctx.arg_node(0, "tensors")
        dim = norm_dim(int(ctx.arg(1, "dim", 0) or 0), ctx.out.dim())
        ids = [ctx.ids_of(n) for n in nodes]
        if any(not isinstance(i, Tensor) for i in ids):
            raise _unsupported("cat of a value without ids")
        ids = [align(i, ctx.out.dim()) for i in ids]
        if all(i.shape[dim] == 1 for i in ids):
            # concatenated along an axis without channels (batch, spatial): the inputs share
            # their channel axes, so they must keep the same channels
            base = max(ids, key=lambda t: t.numel())
            for other in ids:
                ctx.union(base, other)
            return base
        shape = [1] * ctx.out.dim()
        for i in ids:
            for d in range(len(shape)):
                if d != dim:
                    shape[d] = max(shape[d], i.shape[d])
        parts = []
        for i, t in zip(ids, tensors):
            s = list(shape)
            s[dim] = t.shape[dim]
            parts.append(i.expand(s))
        return torch.cat(parts, dim)


@register_rule(torch.stack)
class Stack(Rule):
    """stack: all inputs must keep the same channels; a new axis is inserted."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        nodes = ctx.arg_node(0, "tensors")
        dim = norm_dim(int(ctx.arg(1, "dim", 0) or 0), ctx.out.dim())
        ids = [ctx.ids_of(n) for n in nodes]
        base = ids[0]
        for other in ids[1:]:
            ctx.union(base, other)
        return base.unsqueeze(dim)


def _one_channel_frozen(ctx, piece: Tensor, dim: int) -> Tensor:  # type: ignore[no-untyped-def]
    """A piece that keeps a single channel cannot lose it (its id dim would be ambiguous)."""
    if piece.shape[dim] == 1:
        ctx.freeze(piece, "a single channel selected by a slice")
    return piece


def _piece_ranges(sizes: list[int]) -> list[tuple[int, int]]:
    out, off = [], 0
    for s in sizes:
        out.append((off, s))
        off += s
    return out


def _equal_by_code(ctx, name: str) -> bool:  # type: ignore[no-untyped-def]
    """Does the op's own code split into equal pieces (``chunk(n)``, ``split(int)``, or
    ``split((c, c))`` with the sizes one attribute gives), so that run eagerly on a pruned
    tensor it cuts where the graph does only if the pieces stay equal?"""
    if name == "chunk":
        return True
    size = ctx.arg(1, "split_size", ctx.arg(1, "split_size_or_sections"))
    if isinstance(size, (list, tuple)):
        return name in ("split", "split_with_sizes") and len(set(size)) == 1
    return name == "split" and isinstance(size, int)


def _couple_pieces(ctx, ids: Tensor, pieces: tuple, sizes: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Position ``j`` of every piece lives or dies together (``equal_chunks``): the pieces
    stay equal. Pieces of different sizes cannot stay so: their channels are kept."""
    if len(set(sizes)) > 1:
        ctx.freeze(ids, "chunk into pieces of different sizes (keep_class: the model's own "
                        "code splits the pruned tensor)")
        return
    for p in pieces[1:]:
        ctx.union(pieces[0], p)


@register_rule(torch.split, "split", torch.chunk, "chunk", torch.unbind, "unbind",
               torch.split_with_sizes, "split_with_sizes")
class Split(_Sizes):
    """split/chunk/unbind: each piece gets its range of ids; sizes are re-derived on rewrite."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        x = ctx.arg(0, "input")
        ids = ctx.ids(0, "input")
        name = ctx.node.target if isinstance(ctx.node.target, str) else ctx.node.target.__name__
        if name == "unbind":
            dim = norm_dim(int(ctx.arg(1, "dim", 0) or 0), x.dim())
            if ids.shape[dim] > 1:
                pieces = tuple(ids.select(dim, i) for i in range(x.shape[dim]))
                if pieces[0].numel() > 1:
                    # (3, ..., dims) from a split channel axis (q, k, v): the pieces keep the
                    # same positions, so the unbound axis never shrinks
                    for p in pieces[1:]:
                        ctx.union(pieces[0], p)
                    return pieces
                ctx.freeze(ids, "unbind over a channel axis")
                return pieces
            return tuple(ids.squeeze(dim) for _ in range(x.shape[dim]))
        dim_default = 0
        dim = norm_dim(int(ctx.arg(2, "dim", dim_default) or 0), x.dim())
        sizes = [int(t.shape[dim]) for t in ctx.out]
        if ids.shape[dim] == 1:
            return tuple(ids for _ in sizes)
        pieces = tuple(_one_channel_frozen(ctx, ids.narrow(dim, off, s), dim)
                       for off, s in _piece_ranges(sizes))
        if ctx.equal_chunks and _equal_by_code(ctx, name):
            _couple_pieces(ctx, ids, pieces, sizes)
        return pieces

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        name = node.target if isinstance(node.target, str) else node.target.__name__
        if name == "unbind":
            return
        old = ctx.old(node)
        src = old.args[0]
        dim = norm_dim(int(_val(ctx, old, 2, "dim", 0) or 0), len(ctx.old_shape(src)))
        keep = ctx.kept_positions(src, dim)
        if keep is None:
            return
        sizes = [int(s[dim]) for s in ctx.old_shape(old)]
        new_sizes = [int(keep[o:o + s].sum()) for o, s in _piece_ranges(sizes)]
        args = list(node.args)
        if node.op == "call_method":
            node.target = "split"
        else:
            node.target = torch.split
        args[1] = new_sizes
        node.args = tuple(args[:2])
        node.kwargs = {"dim": dim}


def _val(ctx, node: fx.Node, i: int, name: str, default: object = None) -> object:  # type: ignore[no-untyped-def]
    """The value argument ``i`` of an old node had during analysis."""
    if i >= len(node.args) and name not in node.kwargs:
        return default
    return ctx.arg_value(node, i, name)


@register_rule("expand", "expand_as", torch.broadcast_to, "broadcast_to")
class Expand(_Sizes):
    """expand: a size-1 axis broadcast to n copies gets a fresh, prunable space."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        x = ctx.arg(0)
        ids = align(ctx.ids(0), ctx.out.dim())
        xs = (1,) * (ctx.out.dim() - x.dim()) + tuple(x.shape)
        grown = [d for d in range(1, ctx.out.dim()) if xs[d] == 1 and ctx.out.shape[d] > 1]
        if grown and ids.numel() == 1:
            d = grown[0]
            return at_axis(ctx.new_ids(ctx.out.shape[d]), d, ctx.out.dim())
        return ids

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        if node.target != "expand_as":
            ctx.patch_shape_args(node, first=1)


@register_rule("repeat", "tile", torch.tile)
class Repeat(_Sizes):
    """repeat/tile: ids are tiled the same way."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        ids = ctx.ids(0)
        reps = list(ctx.args[1:]) if len(ctx.args) > 2 else ctx.arg(1)
        reps = [reps] if isinstance(reps, int) else list(reps)
        ids = align(ids, len(reps))
        reps = [r if ids.shape[i] > 1 else 1 for i, r in enumerate(reps)]
        return ids.repeat(*reps)


@register_rule(F.pad, torch.constant_pad_nd)
class Pad(_Sizes):
    """F.pad: padding a channel axis adds fresh (constant) channels; amounts are patched."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        ids = ctx.ids(0, "input")
        pad = list(ctx.arg(1, "pad"))
        nd = ids.dim()
        out = ids
        for i in range(len(pad) // 2):
            d = nd - 1 - i
            lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
            # axis 1 of a value without channel ids anywhere is a conv's channel axis; where
            # ids vary along another axis (channels-last), axis 1 is spatial
            if (lo or hi) and (out.shape[d] > 1 or (d == 1 and out.numel() == 1)):
                raw = ctx.arg_node(1, "pad")
                if isinstance(raw, fx.Node) or any(isinstance(raw[k], fx.Node)
                                                   for k in (2 * i, 2 * i + 1)):
                    raise _unsupported("computed padding on a channel axis")
                if lo < 0 or hi < 0:
                    raise _unsupported("negative padding on a channel axis")
                other = list(out.shape)
                pieces = []
                for n in (lo, hi):
                    other[d] = n
                    pieces.append(ctx.new_ids(n).reshape(
                        [n if k == d else 1 for k in range(nd)]).expand(
                        [n if k == d else s for k, s in enumerate(out.shape)]) if n else None)
                if out.shape[d] == 1 and ctx.arg(0).shape[d] > 1:
                    out = out.expand([ctx.arg(0).shape[d] if k == d else s
                                      for k, s in enumerate(out.shape)])
                parts = [p for p in (pieces[0], out, pieces[1]) if p is not None]
                out = torch.cat(parts, d)
        return out

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        old = ctx.old(node)
        values = list(ctx.arg_value(old, 1, "pad"))
        in_kwargs = len(node.args) < 2
        pad = list(node.kwargs["pad"] if in_kwargs else node.args[1])
        shape = ctx.old_shape(old)
        nd = len(shape)
        for i in range(len(pad) // 2):
            keep = ctx.kept_positions(old, nd - 1 - i)
            if keep is None:
                continue
            lo, hi = int(values[2 * i]), int(values[2 * i + 1])
            pad[2 * i] = int(keep[:lo].sum())
            pad[2 * i + 1] = int(keep[shape[nd - 1 - i] - hi:].sum()) if hi else 0
        if in_kwargs:
            node.kwargs = {**node.kwargs, "pad": tuple(pad)}
        else:
            node.args = (node.args[0], tuple(pad), *node.args[2:])
