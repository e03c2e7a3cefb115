"""Attention: matrix products and ``scaled_dot_product_attention``.

Both contract one axis and broadcast the leading (batch, head) axes:

* the **contracted axis** (a head's dims in ``q @ k^T``) couples the two operands elementwise,
  head by head: pruning dim ``d`` of ``q`` and of ``k`` removes the term ``q_d k_d``, which is
  what the oracle's zeroing does;
* the **head axis** must keep the same positions in every operand. With the default
  ``attention="dims"`` heads are never removed (a reshape that splits a channel axis into
  ``(heads, dims)`` couples dim ``j`` of every head, :class:`fxprune.rules.shape.Reshape`), so
  the products leave it alone; with ``attention="heads"`` each head is one unit (all its dims
  coupled) and the operands' heads are coupled, so whole heads go;
* a product's output carries the channels of the operand axes that pass through (``v``'s dims
  in ``attn @ v``), and of the leading axes.

``scaled_dot_product_attention`` scales by ``1/sqrt(E)`` of the *original* head dim when no
``scale`` is given: the rewrite passes that scale explicitly once ``E`` shrinks.
"""

from __future__ import annotations

__all__ = ["MatMul", "ScaledDotProductAttention"]

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from fxprune.ir.channels import FREE
from fxprune.rules import Rule, register_rule
from fxprune.rules.util import align


def _unsupported(msg: str) -> Exception:
    from fxprune.ir.propctx import Unsupported

    return Unsupported(msg)


def _varies(ids: Tensor, axis: int) -> bool:
    return ids.shape[axis] > 1


def _inner(ids: Tensor) -> bool:
    """Do the ids vary along one of the two matrix axes?"""
    return _varies(ids, -1) or _varies(ids, -2)


def _lead(ids: Tensor) -> bool:
    """Do the ids vary along a leading (batch/head) axis?"""
    return any(s > 1 for s in ids.shape[:-2])


def _heads_part(ctx, ids: Tensor) -> Tensor | None:  # type: ignore[no-untyped-def]
    """The ids that say whether a leading-axis position (a head) survives, or None.

    Ids that vary only along leading axes are that already. Ids that also vary along a matrix
    axis (a head's dims) say it only when every dim of a head is one unit (``"heads"``); then
    the first dim stands for its head. Under ``"dims"`` no head is ever removed.
    """
    if not _lead(ids):
        return None
    if not _inner(ids):
        return ids
    if ctx.attention == "heads":
        return ids.narrow(-1, 0, 1).narrow(-2, 0, 1)
    return None


def _couple_heads(ctx, operands: list[Tensor]) -> None:  # type: ignore[no-untyped-def]
    """Leading axes are elementwise: every operand keeps the same heads."""
    parts = [p for p in (_heads_part(ctx, i) for i in operands) if p is not None]
    if ctx.attention != "heads" and parts and any(_lead(i) and _inner(i) for i in operands):
        # heads-only ids beside per-head dims: under "dims" the heads stay, so these too
        for p in parts:
            ctx.freeze(p, "heads of an attention product (attention='dims' keeps every head; "
                          "attention='heads' removes whole heads)")
        return
    if len(parts) > 1:
        nd = max(p.dim() for p in parts)
        base = align(parts[0], nd)
        for other in parts[1:]:
            ctx.union(base, align(other, nd))


def _contract(ctx, a_k: Tensor, b_k: Tensor, what: str) -> None:  # type: ignore[no-untyped-def]
    """Couple the contracted axis of two operands, given as ``(..., k, 1)`` id tensors."""
    va, vb = _varies(a_k, -2), _varies(b_k, -2)
    if va and vb:
        nd = max(a_k.dim(), b_k.dim())
        ctx.union(align(a_k, nd), align(b_k, nd))
    elif va or vb:
        ctx.freeze(a_k if va else b_k, f"{what}: contracted with a value whose axis carries no "
                                       "channels")


@register_rule(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", "__matmul__")
class MatMul(Rule):
    """a @ b: the contracted axis couples a's columns with b's rows; a's rows and b's
    columns pass through (one of them at most carries channels)."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        a, b = ctx.arg(0, "input"), ctx.arg(1, "other")
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.dim() < 2 or b.dim() < 2:
            raise _unsupported("matmul of a vector (only matrices and batches of them)")
        ia, ib = align(ctx.ids(0, "input"), a.dim()), align(ctx.ids(1, "other"), b.dim())
        if _varies(ia, -2) and _varies(ia, -1) or _varies(ib, -2) and _varies(ib, -1):
            raise _unsupported("matmul of an operand with channels on both matrix axes")
        _contract(ctx, ia.narrow(-2, 0, 1).transpose(-1, -2), ib.narrow(-1, 0, 1), "matmul")
        _couple_heads(ctx, [ia, ib])
        ctx.consume(0, 1)
        rows, cols = ia.narrow(-1, 0, 1), ib.narrow(-2, 0, 1)  # (..., n, 1), (..., 1, m)
        if _varies(rows, -2) and _varies(cols, -1):
            raise _unsupported("matmul whose output has channels on both matrix axes")
        nd = ctx.out.dim()
        if _varies(rows, -2):
            return align(rows, nd)
        if _varies(cols, -1):
            return align(cols, nd)
        lead = [p for p in (_heads_part(ctx, ia), _heads_part(ctx, ib)) if p is not None]
        if lead:
            return align(lead[0], nd)
        return torch.full((1,) * nd, FREE, dtype=torch.long)


_SDPA = [F.scaled_dot_product_attention]
if getattr(torch, "scaled_dot_product_attention", None) is not None:
    _SDPA.append(torch.scaled_dot_product_attention)


@register_rule(*_SDPA)
class ScaledDotProductAttention(Rule):
    """softmax(q k^T * scale + mask) v: q and k share their dims, v's pass through; heads
    are coupled across q, k, v and the mask; the original scale is kept."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        q, k, v = (ctx.arg(i, n) for i, n in enumerate(("query", "key", "value")))
        if any(not isinstance(t, Tensor) or t.dim() < 2 for t in (q, k, v)):
            raise _unsupported("attention on values that are not batches of matrices")
        if bool(ctx.arg(7, "enable_gqa", False)):
            raise _unsupported("grouped-query attention (enable_gqa=True)")
        iq, ik, iv = (align(ctx.ids(i, n), t.dim())
                      for i, (n, t) in enumerate((("query", q), ("key", k), ("value", v))))
        if any(_varies(i, -2) for i in (iq, ik, iv)):
            raise _unsupported("attention over a token axis that carries channels")
        _contract(ctx, iq.transpose(-1, -2), ik.transpose(-1, -2), "attention (q @ k^T)")
        operands = [iq, ik, iv]
        mask_node = ctx.arg_node(3, "attn_mask")
        mask = ctx.arg(3, "attn_mask")
        if isinstance(mask_node, fx.Node) and isinstance(mask, Tensor):
            im = align(ctx.ids_of(mask_node), mask.dim())
            if _inner(im):
                raise _unsupported("an attention mask with channels on its token axes")
            operands.append(im)
        _couple_heads(ctx, operands)
        ctx.consume(0, 1, 2)
        return align(iv, ctx.out.dim())

    def is_size_arg(self, node: fx.Node, key: int | str) -> bool:
        return False

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        old = ctx.old(node)
        src = old.args[0] if old.args else old.kwargs["query"]
        old_e = ctx.old_shape(src)[-1]
        keep = ctx.kept_positions(src, len(ctx.old_shape(src)) - 1)
        given = len(node.args) > 6 or "scale" in node.kwargs
        if keep is None or given:
            return
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(old_e)}
