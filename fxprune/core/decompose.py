"""Modules traced as the tensor ops they compute, so their inner channels can be pruned.

Reads:  the module being traced and its call's arguments
Writes: nothing; :class:`fxprune.core.trace.FxPruneTracer` traces :func:`decomposition` instead of
        the module's opaque ``forward``

``nn.MultiheadAttention`` hides its heads inside ``F.multi_head_attention_forward``, which
torch.fx cannot trace, so as one op it would freeze the residual stream it reads and writes.
Traced as its ops instead (the packed in-projection ``F.linear`` on the module's own
``in_proj_weight``, ``chunk``, a heads ``unflatten``, ``scaled_dot_product_attention`` with the
module's scale, the ``out_proj`` Linear), every inner channel meets a rule of its own and the
oracle checks it at a graph edge. The parameters stay where they are
(``...self_attention.in_proj_weight``), so ``state_dict`` keys do not change.

timm's ``MobileVitBlock`` and ``MobileVitV2Block`` are traced the same way: their forwards
branch on the input size (resize unless a multiple of the patch size), which torch.fx cannot
trace, so the decompositions assert the multiple in the graph and unfold/fold with reshapes.

MultiheadAttention is decomposed for self-attention (``query is key is value``) with packed
projections, no ``bias_k``/``add_zero_attn``, no attention dropout and no masks. Any other use
stays one opaque op (its channels are frozen, with the reason in the analysis' warning).
"""

from __future__ import annotations

__all__ = ["decomposition", "decomposes", "needs_shape"]

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def _mha_why_not(m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> str | None:
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
             "average_attn_weights", "is_causal")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    q, k, v = bound.get("query"), bound.get("key"), bound.get("value")
    if not (q is k is v):
        return "cross-attention (query, key and value differ)"
    if not m._qkv_same_embed_dim or m.in_proj_weight is None:
        return "separate q/k/v projection weights (kdim/vdim)"
    if m.bias_k is not None or m.add_zero_attn:
        return "add_bias_kv/add_zero_attn"
    if m.dropout:
        return "attention dropout"
    if bound.get("key_padding_mask") is not None or bound.get("attn_mask") is not None:
        return "an attention mask"
    if bound.get("is_causal"):
        return "is_causal"
    return None


def _mha_forward(m: nn.MultiheadAttention, query: Any, key: Any = None, value: Any = None,
                 key_padding_mask: Any = None, need_weights: bool = True, attn_mask: Any = None,
                 average_attn_weights: bool = True, is_causal: bool = False) -> Any:
    """``nn.MultiheadAttention.forward`` for self-attention, as traceable tensor ops."""
    x = query if m.batch_first else query.transpose(0, 1)  # (B, N, E)
    q, k, v = F.linear(x, m.in_proj_weight, m.in_proj_bias).chunk(3, dim=-1)
    heads = m.num_heads
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
    scale = float(m.head_dim) ** -0.5
    weights = None
    if need_weights:
        attn = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)
        out = attn @ v
        weights = attn.mean(dim=1) if average_attn_weights else attn
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    out = m.out_proj(out.transpose(1, 2).flatten(-2))
    if not m.batch_first:
        out = out.transpose(0, 1)
    return out, weights


def _mobilevit_why_not(m: nn.Module, args: tuple, kwargs: dict) -> str | None:
    return None if len(args) == 1 and not kwargs else "unexpected arguments"


def _mobilevit_forward(m: Any, x: Any) -> Any:
    """timm's ``MobileVitBlock.forward`` for inputs whose size is a multiple of the patch
    size (asserted in the graph; timm resizes other inputs with ``F.interpolate``, a branch
    torch.fx cannot trace)."""
    shortcut = x
    x = m.conv_1x1(m.conv_kxk(x))
    ph, pw = m.patch_size
    b, h, w = x.shape[0], x.shape[2], x.shape[3]  # the width is never read: it is pruned
    torch._assert(h % ph == 0, "MobileVitBlock: the input height must be a multiple of the "
                  "patch size (fxprune traced it without timm's resize)")
    torch._assert(w % pw == 0, "MobileVitBlock: the input width must be a multiple of the "
                  "patch size (fxprune traced it without timm's resize)")
    nh, nw = h // ph, w // pw
    n = nh * nw
    x = x.reshape(-1, ph, nw, pw).transpose(1, 2)  # unfold: (B*C*nh, nw, ph, pw)
    x = x.reshape(b, -1, n, m.patch_area).transpose(1, 3).reshape(b * m.patch_area, n, -1)
    x = m.norm(m.transformer(x))
    x = x.contiguous().view(b, m.patch_area, n, -1)  # fold back
    x = x.transpose(1, 3).reshape(-1, nw, ph, pw)
    x = x.transpose(1, 2).reshape(b, -1, nh * ph, nw * pw)
    x = m.conv_proj(x)
    if m.conv_fusion is not None:
        x = m.conv_fusion(torch.cat((shortcut, x), dim=1))
    return x


def _mobilevit2_why_not(m: Any, args: tuple, kwargs: dict) -> str | None:
    if len(args) != 1 or kwargs:
        return "unexpected arguments"
    return "coreml_exportable" if getattr(m, "coreml_exportable", False) else None


def _mobilevit2_forward(m: Any, x: Any) -> Any:
    """timm's ``MobileVitV2Block.forward`` for inputs whose size is a multiple of the patch
    size (asserted), with the width never read (``-1``), so it can be pruned."""
    ph, pw = m.patch_size
    b, h, w = x.shape[0], x.shape[2], x.shape[3]
    torch._assert(h % ph == 0, "MobileVitV2Block: the input height must be a multiple of the "
                  "patch size (fxprune traced it without timm's resize)")
    torch._assert(w % pw == 0, "MobileVitV2Block: the input width must be a multiple of the "
                  "patch size (fxprune traced it without timm's resize)")
    nh, nw = h // ph, w // pw
    x = m.conv_1x1(m.conv_kxk(x))
    x = x.reshape(b, -1, nh, ph, nw, pw).permute(0, 1, 3, 5, 2, 4)
    x = x.reshape(b, -1, ph * pw, nh * nw)  # (B, C, P, N)
    x = m.norm(m.transformer(x))
    x = x.reshape(b, -1, ph, pw, nh, nw).permute(0, 1, 4, 2, 5, 3)
    return m.conv_proj(x.reshape(b, -1, nh * ph, nw * pw))


def _swin_why_not(m: Any, args: tuple, kwargs: dict) -> str | None:
    if len(args) != 1 or kwargs:
        return "unexpected arguments"
    if m.attention_dropout or m.dropout:
        return "dropout inside the attention"
    return None


def _swin_forward(m: Any, x: Any, shape: tuple[int, ...]) -> Any:
    """torchvision's ``shifted_window_attention`` (Swin v1) as tensor ops, for inputs of the
    example's height and width (asserted in the graph): padding, shift and the shifted
    windows' mask follow from those sizes, as in torchvision, where they branch on them.

    The channel width is never read from the input (``-1`` in the reshapes) and the q/k/v
    split is an ``unbind``, so the embed dim and the head dims can be pruned; the original
    ``1/sqrt(head dim)`` is a constant. The mask is built from ``arange`` comparisons
    (torchvision fills slices of a zero tensor): the same values, -100 across regions.
    """
    _, h, w, c = shape
    ws, shift, heads = list(m.window_size), list(m.shift_size), m.num_heads
    msg = "ShiftedWindowAttention was traced for a {} of {} (fxprune specialises its windows)"
    torch._assert(x.shape[1] == h, msg.format("height", h))
    torch._assert(x.shape[2] == w, msg.format("width", w))
    pad_r, pad_b = (ws[1] - w % ws[1]) % ws[1], (ws[0] - h % ws[0]) % ws[0]
    if pad_r or pad_b:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    ph, pw = h + pad_b, w + pad_r
    shift = [0 if ws[i] >= (ph, pw)[i] else shift[i] for i in range(2)]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    nh, nw, n = ph // ws[0], pw // ws[1], ws[0] * ws[1]
    b = x.shape[0]
    x = x.view(b, nh, ws[0], nw, ws[1], -1).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, n, -1)
    qkv = m.qkv(x).reshape(b * nh * nw, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    attn = attn + m.get_relative_position_bias()
    if sum(shift) > 0:
        def regions(size: int, win: int, sh: int) -> Any:
            idx = torch.arange(size, device=x.device)
            return (idx >= size - win).long() + (idx >= size - sh).long()

        region = regions(ph, ws[0], shift[0]).unsqueeze(1) * 3 + regions(pw, ws[1], shift[1])
        region = region.view(nh, ws[0], nw, ws[1]).permute(0, 2, 1, 3).reshape(nh * nw, n)
        mask = ((region.unsqueeze(1) - region.unsqueeze(2)) != 0).to(attn.dtype) * -100.0
        attn = attn.view(b, nh * nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b * nh * nw, n, -1)
    x = m.proj(x)
    x = x.view(b, nh, nw, ws[0], ws[1], -1).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, -1)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    if pad_r or pad_b:
        x = x[:, :h, :w, :]
    return x.contiguous()


#: type -> (why not decompose this call, traceable forward, needs the example's input shape)
_DECOMPOSITIONS: dict[type, tuple[Callable[..., str | None], Callable[..., Any], bool]] = {
    nn.MultiheadAttention: (_mha_why_not, _mha_forward, False),
}
try:  # timm is optional
    from timm.models.mobilevit import MobileVitBlock, MobileVitV2Block

    _DECOMPOSITIONS[MobileVitBlock] = (_mobilevit_why_not, _mobilevit_forward, False)
    _DECOMPOSITIONS[MobileVitV2Block] = (_mobilevit2_why_not, _mobilevit2_forward, False)
except ImportError:  # pragma: no cover
    pass
try:
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    _DECOMPOSITIONS[ShiftedWindowAttention] = (_swin_why_not, _swin_forward, True)
except ImportError:  # pragma: no cover
    pass


def decomposes(m: nn.Module) -> bool:
    """Does this module type have a decomposition (for some calls)?"""
    return type(m) in _DECOMPOSITIONS


def needs_shape(m: nn.Module) -> bool:
    """Does this module's decomposition specialise on its input's shape?"""
    entry = _DECOMPOSITIONS.get(type(m))
    return entry is not None and entry[2]


def decomposition(m: nn.Module, args: tuple, kwargs: dict,
                  shape: tuple[int, ...] | None = None) -> Callable[..., Any] | None:
    """The traceable forward of this call of ``m``, or None to keep ``m`` one opaque op.

    ``shape``: the input shape this module saw on the example inputs (needed where
    :func:`needs_shape`; without it the module stays one op)."""
    entry = _DECOMPOSITIONS.get(type(m))
    if entry is None or entry[0](m, args, kwargs) is not None:
        return None
    _why_not, fn, shaped = entry
    if shaped:
        if shape is None:
            return None
        return lambda *a, **k: fn(m, *a, shape, **k)
    return lambda *a, **k: fn(m, *a, **k)
