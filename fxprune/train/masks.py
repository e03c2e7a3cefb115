"""Per-parameter masks from keep-sets: what soft pruning zeroes in the user's model.

Reads:  ``analysis.bindings`` (which parameter axis belongs to which channel ids) and a
        ``{group id: KeepSet}`` selection
Writes: the user's parameters and buffers, in place (``apply``), and their gradients
        (``mask_grads``)

A binding's role says what an entry is (see :class:`fxprune.ParamSlice`): ``"out"`` is a
producer's filter (conv/linear weight rows and their bias), ``"channel"`` a per-channel tensor
(norm affine and statistics, depthwise filters, layer scales), ``"in"`` a consumer's input slice.
Soft pruning never touches ``"in"`` entries (SFP and FPGM zero filters, i.e. dim 0 only).

``bn="keep"`` (default; the authors' code): only ``"out"`` entries are zeroed. A pruned
channel then emits the constant ``BN(0) = beta - gamma * mean / sqrt(var + eps)`` (``relu`` of
it after the activation); :mod:`fxprune.train.fold` folds it into the compact model. Its
gradient is that of ``relu(beta)``: where ``beta > 0`` the zeroed filter receives gradients and
can come back (SFP).
``bn="zero"``: the additive per-channel entries of pruned channels are zeroed too (``bias`` and
``running_mean`` of ``"channel"`` members: BatchNorm's beta and mean, a depthwise conv's bias),
so a pruned conv -> BN -> activation channel is exactly 0 in train and eval mode and nothing
needs folding. Multiplicative entries (``gamma``, ``running_var``, depthwise filters) are left
alone. A channel that is exactly 0 before a ReLU gets no gradient (``relu'(0) = 0``), so under
``"zero"`` such a filter cannot come back; filters feeding a residual add directly still can.
"""

from __future__ import annotations

__all__ = ["Masks", "BN_MODES"]

from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.core.select import kept_mask
from fxprune.errors import InputError
from fxprune.ir import meta

BN_MODES = ("zero", "keep")
_ADDITIVE = ("bias", "running_mean")


def _resolve(root: nn.Module, path: str) -> Any:
    return reduce(getattr, path.split("."), root)


def _masked_binding(role: str, param: str, bn: str) -> bool:
    if role == "out":
        return True
    return bn == "zero" and role == "channel" and param.rsplit(".", 1)[-1] in _ADDITIVE


@dataclass
class _Entry:
    path: str
    tensor: Tensor
    dim: int
    keep: Tensor  # bool [tensor.shape[dim]] on the CPU
    view: Tensor | None = None  # ~keep, shaped to broadcast over ``tensor``, on its device

    def pruned_view(self) -> Tensor:
        t = self.tensor
        if self.view is None or self.view.device != t.device:
            shape = [1] * t.dim()
            shape[self.dim] = t.shape[self.dim]
            self.view = (~self.keep).reshape(shape).to(t.device)
        return self.view


class Masks:
    """The zeroing masks of one selection, bound to the user's parameters and buffers."""

    def __init__(self, model: nn.Module, analysis: Analysis,
                 keep: dict[int, meta.KeepSet], bn: str):
        if bn not in BN_MODES:
            raise InputError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
        kept = kept_mask(analysis, keep)
        self.entries: list[_Entry] = []
        for b in analysis.bindings:
            if not _masked_binding(b.role, b.param, bn):
                continue
            k = kept[b.ids]
            path = f"{b.target}.{b.param}" if b.param else b.target
            t = _resolve(model, path)
            if not isinstance(t, Tensor) or not t.is_floating_point():
                continue
            if k.numel() != t.shape[b.dim]:
                raise InputError(f"{path} has {t.shape[b.dim]} entries along dim {b.dim}, the "
                                 f"analysis bound {k.numel()}: was the model changed after the "
                                 "SoftPruner was created?")
            self.entries.append(_Entry(path, t, b.dim, k.clone()))
        self.active = [e for e in self.entries if not bool(e.keep.all())]  # something pruned
        self.params = [e for e in self.active if isinstance(e.tensor, nn.Parameter)]
        self.pruned_entries = sum(int((~e.keep).sum()) for e in self.entries)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned entries of every masked parameter and buffer (in place)."""
        for e in self.active:
            e.tensor.masked_fill_(e.pruned_view(), 0.0)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of the pruned entries (FPGM's ``do_grad_mask``)."""
        for e in self.params:
            g = e.tensor.grad
            if g is not None:
                g.masked_fill_(e.pruned_view(), 0.0)

    def holds(self) -> bool:
        """True when every pruned entry is exactly zero."""
        return all(not bool(e.tensor.detach()[_index(e)].any()) for e in self.active)

    def tensors(self) -> list[Tensor]:
        """Every tensor a selection of this kind may zero (for snapshots and broadcasts)."""
        return [e.tensor for e in self.entries]


def _index(e: _Entry) -> tuple[Any, ...]:
    idx: list[Any] = [slice(None)] * e.tensor.dim()
    idx[e.dim] = torch.nonzero(~e.keep).flatten().to(e.tensor.device)
    return tuple(idx)


class Snapshot:
    """Copies of tensors, restored on exit: evaluate a neighbour mask without losing weights."""

    def __init__(self, tensors: list[Tensor]):
        self.tensors = tensors
        self.saved: list[Tensor] = []

    def __enter__(self) -> Snapshot:
        self.saved = [t.detach().clone() for t in self.tensors]
        return self

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for t, s in zip(self.tensors, self.saved):
                t.copy_(s)
        self.saved = []
