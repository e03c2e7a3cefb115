"""The conv forms a stripe-pruned layer is emitted as (algorithms.md §6.3, fxprune's [INF] rewrite).

Every form is exact against the masked dense conv ``conv2d(x, W * S, padding=K//2)`` where
``S`` (``[O, K, K]`` bool) marks the live stripes:

* :func:`dense_form`: the smallest dense conv that covers the live kernel positions. When the
  live positions' bounding rectangle is centred, a plain ``nn.Conv2d`` with adjusted padding
  (3x3 -> 1x3 keeps ``padding=(0, 1)``); otherwise a :class:`CroppedConv2d`, which pads
  asymmetrically and crops. Dead stripes inside the rectangle are baked in as zeros.
* :class:`StripeConv2d`: the position-grouped stripe conv. For each live position ``(i, j)``
  (row-major), one ``conv1x1`` of the strided, shifted input computed at the OUTPUT resolution,
  accumulated into the output with ``index_add_`` over the filters that own a stripe there.
  It costs ``N' * C * Ho * Wo`` MACs for ``N'`` live stripes (SWP's FLOPs convention, §6.3).

Both are plain modules (ints, tuples and tensors), so :func:`fxprune.save` stores them.
"""

from __future__ import annotations

__all__ = ["StripeConv2d", "CroppedConv2d", "dense_form", "stripe_form", "live_rectangle",
           "stripe_macs"]

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def _out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class StripeConv2d(nn.Module):
    """Position-grouped stripe convolution at the output resolution (exact, §6.3 [INF]).

    ``weight`` is ``[N', C, 1, 1]``: the live stripes grouped by kernel position (row-major
    order of ``positions``) and by output filter inside a group; ``index`` (``[N']``) names the
    output filter of each stripe; ``counts[g]`` stripes belong to ``positions[g]``. Computes
    ``conv2d(x, W_dense, bias, stride, padding=K//2)`` for the original ``K x K`` kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 weight: Tensor, index: Tensor, positions: tuple[tuple[int, int], ...],
                 counts: tuple[int, ...], bias: Tensor | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2
        self.positions = tuple((int(i), int(j)) for i, j in positions)
        self.counts = tuple(int(c) for c in counts)
        # a position whose stripes cover every filter in order: plain add, no index_add
        self.full = tuple(c == out_channels for c in self.counts)
        self.weight = nn.Parameter(weight.detach().clone().reshape(-1, in_channels, 1, 1))
        self.register_buffer("index", index.detach().clone().to(torch.long))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def extra_repr(self) -> str:
        k = self.kernel_size
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={self.stride}"
                f", stripes={sum(self.counts)}/{self.out_channels * k * k}"
                f", positions={len(self.positions)}")

    def forward(self, x: Tensor) -> Tensor:
        s, p, k = self.stride, self.padding, self.kernel_size
        b, _, h, w = x.shape
        ho, wo = _out_size(h, k, s, p), _out_size(w, k, s, p)
        out: Tensor | None = None
        fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        if self.positions:
            xp = F.pad(x, (p, p, p, p)) if p else x
            weights = self.weight.split(self.counts)
            indices = self.index.split(self.counts)
            for (i, j), wg, ig, full in zip(self.positions, weights, indices, self.full):
                # a dense copy of the shifted, strided input (in the input's memory format):
                # a strided view would take PyTorch's slow im2col conv path
                xs = xp[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s].contiguous(
                    memory_format=fmt)
                y = F.conv2d(xs, wg)
                if out is None and full:
                    out = y
                elif out is None:
                    out = y.new_zeros(b, self.out_channels, ho, wo).contiguous(
                        memory_format=fmt).index_add_(1, ig, y)
                elif full:
                    out = out + y
                else:
                    out = out.index_add_(1, ig, y)
        if out is None:
            out = x.new_zeros(b, self.out_channels, ho, wo)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out


class CroppedConv2d(nn.Conv2d):
    """A conv over a sub-rectangle of a ``K x K`` kernel that is not centred (exact).

    ``F.pad(x, pads)`` (negative values crop), then an unpadded conv, then the output is cut to
    the original layer's size ``(H + 2p - K) // s + 1`` (the pads are chosen so that it has at
    least that many rows and columns for every input size).
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        k, p, s = self.orig_kernel, self.orig_padding, self.stride[0]
        ho, wo = _out_size(x.shape[-2], k, s, p), _out_size(x.shape[-1], k, s, p)
        y = self._conv_forward(F.pad(x, self.pads), self.weight, self.bias)
        return y[:, :, :ho, :wo]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pads={self.pads}, of kernel {self.orig_kernel}"


def live_rectangle(live: Tensor) -> tuple[int, int, int, int] | None:
    """``(i0, i1, j0, j1)`` (inclusive) bounding the live positions of a ``[K, K]`` bool, or
    None when no position is live."""
    rows = torch.nonzero(live.any(1)).flatten()
    cols = torch.nonzero(live.any(0)).flatten()
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def dense_form(conv: nn.Conv2d, live: Tensor, full: bool = False) -> nn.Conv2d:
    """The smallest dense conv covering the live positions of ``live`` (``[O, K, K]`` bool).

    ``conv`` is an eligible conv (groups 1, dilation 1, odd square kernel, padding K//2) whose
    weight already has the dead stripes zeroed. With no live stripe at all, a 1x1 conv of zeros
    (strided like the original) keeps the output shape. ``full``: keep the whole ``K x K``
    kernel (the dead stripes baked in as zeros).
    """
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    w = conv.weight.detach() * live.unsqueeze(1).to(conv.weight.dtype)
    rect = (0, k - 1, 0, k - 1) if full else live_rectangle(live.any(0))
    if rect is None:
        rect = (p, p, p, p)  # the centre: a 1x1 conv of zeros
    i0, i1, j0, j1 = rect
    kh, kw = i1 - i0 + 1, j1 - j0 + 1
    sub = w[:, :, i0:i1 + 1, j0:j1 + 1]
    centred = i0 + i1 == 2 * p and j0 + j1 == 2 * p
    cls = nn.Conv2d if centred else CroppedConv2d
    new = cls(conv.in_channels, conv.out_channels, (kh, kw), stride=s,
              padding=(p - i0, p - j0) if centred else 0, bias=conv.bias is not None,
              device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(sub)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach())
    if not centred:
        new.orig_kernel, new.orig_padding = k, p
        new.pads = (p - j0, j1 - p, p - i0, i1 - p)  # (left, right, top, bottom)
    return new


def stripe_form(conv: nn.Conv2d, live: Tensor) -> StripeConv2d:
    """The position-grouped :class:`StripeConv2d` of an eligible conv and its live stripes."""
    k = conv.kernel_size[0]
    w = conv.weight.detach()
    pos, counts, rows, idx = [], [], [], []
    for i in range(k):
        for j in range(k):
            filt = torch.nonzero(live[:, i, j]).flatten()
            if filt.numel() == 0:
                continue
            pos.append((i, j))
            counts.append(int(filt.numel()))
            rows.append(w[filt, :, i, j])
            idx.append(filt)
    weight = torch.cat(rows) if rows else w.new_zeros(0, conv.in_channels)
    index = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long, device=w.device)
    return StripeConv2d(conv.in_channels, conv.out_channels, k, conv.stride[0], weight,
                        index.to(w.device), tuple(pos), tuple(counts),
                        None if conv.bias is None else conv.bias.detach())


def stripe_macs(live: Tensor, in_channels: int, out_hw: tuple[int, int]) -> int:
    """SWP's stripe count convention as MACs: ``N' * C * Ho * Wo`` (§6.3; FLOPs = 2x)."""
    return int(live.sum()) * in_channels * out_hw[0] * out_hw[1]
