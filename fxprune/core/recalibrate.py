"""BatchNorm recalibration: recompute the running statistics of a pruned model on real batches.

Removing channels changes what every later BatchNorm sees, so its running mean and variance,
measured on the original network, describe a network that no longer exists: eval-mode
accuracy right after a cut can drop to chance although the weights are fine. Re-estimating the
statistics on a few hundred training images ("precise BN") restores it without training.
"""

from __future__ import annotations

__all__ = ["recalibrate_bn"]

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from fxprune.errors import InputError


def _inputs(batch: Any) -> tuple[Any, ...]:
    """The model inputs of one batch: a tensor, an (inputs, target) pair, or a dict of inputs."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)  # (x, y): the DataLoader convention
    if isinstance(batch, dict):
        return (batch,)
    raise InputError(f"recalibrate_bn: a batch must be a tensor, an (inputs, target) pair or a "
                     f"dict, got {type(batch).__name__}. Hint: pass the training DataLoader.")


def _move(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _move(v, device) for k, v in x.items()}
    return x


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Iterable, batches: int = 50,
                   device: torch.device | str | None = None) -> int:
    """Recompute every BatchNorm's running statistics as the plain average over ``batches``
    batches of ``data`` (train mode, no gradients; the weights are not touched). Returns the
    number of batches used.

    Args:
        model: changed in place (its BatchNorm buffers); each module's training flag and each
            BatchNorm's ``momentum`` are restored afterwards.
        data: an iterable of batches: tensors, ``(inputs, target)`` pairs (a DataLoader) or dicts
            of keyword inputs. Use training data, never the test split.
        batches: how many batches to average (``>= 1``); fewer if ``data`` runs out.
        device: where to run (default: the model's parameters' device).
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"recalibrate_bn: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise InputError(f"recalibrate_bn: batches must be an int >= 1, got {batches!r}")
    if data is None or not hasattr(data, "__iter__"):
        raise InputError("recalibrate_bn: data must be an iterable of batches (e.g. the training "
                         f"DataLoader), got {type(data).__name__}")
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    flags = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    used = 0
    try:
        for batch in data:
            if used >= batches:
                break
            args = _move(_inputs(batch), device)
            if isinstance(args[0], dict):
                model(**args[0])
            else:
                model(*args)
            used += 1
    except BaseException:
        used = 0
        raise
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        for m, t in flags.items():
            m.training = t
        if used == 0:  # nothing ran (or it failed): the old statistics, not reset ones
            for m, (mean, var, n) in saved.items():
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(n)
    if used == 0:
        raise InputError("recalibrate_bn: data yielded no batches; the statistics are unchanged")
    return used
