"""Evaluation during training: loss and accuracy over a loader (:func:`evaluate`), and the
BatchNorm statistics recomputed after a mask (:func:`recalibrate_bn`)."""

from __future__ import annotations

__all__ = ["evaluate", "recalibrate_bn"]

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from fxprune.core.recalibrate import recalibrate_bn as core_recalibrate_bn
from fxprune.train import distributed as D


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None,
             info: D.DistInfo | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) over ``loader``.

    With ``info`` of a distributed run, ``loader`` is this rank's shard and the sums are
    reduced over ranks. Training flags are restored afterwards.
    """
    info = info or D.DistInfo()
    model = _unwrap(model)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    flags = {m: m.training for m in model.modules()}
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            sums[0] += nn.functional.cross_entropy(out, y, reduction="sum").double()
            sums[1] += (out.argmax(1) == y).sum()
            sums[2] += y.numel()
    finally:
        for m, t in flags.items():
            m.training = t
    D.all_reduce_sum(sums, info)
    n = max(float(sums[2]), 1.0)
    return float(sums[0]) / n, float(sums[1]) / n


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, n: int,
                   device: torch.device | str | None = None) -> int:
    """:func:`fxprune.recalibrate_bn` over ``n`` batches (0: nothing); returns the batches used.

    After a soft-pruning step zeroes filters, the running statistics of the following
    BatchNorms still describe the unmasked network, so eval-mode accuracy right after the
    mask can collapse (measured with ``fxprune train``: SFP on digits, 12.5% validation
    accuracy after the first epoch's mask, 78.5% with 20 batches of recalibration). The
    weights are untouched, so ``finalize()`` stays exact.
    """
    if n <= 0:
        return 0
    return core_recalibrate_bn(model, batches, n, device)
