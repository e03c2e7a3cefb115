"""The options of :func:`fxprune.train.fit`, grouped: :class:`Optim` (the training step),
:class:`Schedule` (the learning rate over the epochs), :class:`Checkpointing` (where a run is
saved and whether it resumes). Each field is also a keyword of ``fit`` of the same name, the
spelling of earlier releases: ``fit(model, train, lr=0.1, momentum=0.8, schedule="step",
gamma=0.1)`` is ``fit(model, train, optim=Optim(lr=0.1, momentum=0.8),
schedule=Schedule("step", gamma=0.1))``.
"""

from __future__ import annotations

__all__ = ["Optim", "Schedule", "Checkpointing", "AMP_DTYPES", "fit_options", "make_scheduler",
           "check_fit", "cpu_has_native_bf16", "warn_emulated_bf16"]

import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from fxprune.errors import InputError
from fxprune.plan.options import route_keywords, with_keywords

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), read from
    ``/proc/cpuinfo``; None where that cannot be read (not Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def warn_emulated_bf16(amp: str | None, device: torch.device) -> None:
    """One warning when ``amp="bf16"`` runs on a CPU without native bf16: autocast then
    emulates it, and a training step is slower than in float32, not faster."""
    if amp == "bf16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        warnings.warn(
            "amp='bf16' on a CPU without AVX512-BF16/AMX: bf16 is emulated there, and a "
            "ResNet-20 training step measured 10x slower than float32 (AMD EPYC, AVX2). "
            "Hint: amp=None (float32) on this machine.", stacklevel=3)


@dataclass(frozen=True)
class Optim:
    """The training step: ``torch.optim.SGD`` settings, the loss's label smoothing and the
    precision of the forward pass.

    Attributes:
        lr: the learning rate (required: ``fit(..., lr=0.1)`` or ``Optim(lr=0.1)``).
        momentum, nesterov, weight_decay: ``torch.optim.SGD`` settings.
        label_smoothing: ``CrossEntropyLoss(label_smoothing=...)``.
        amp: ``"bf16"`` (CPUs with AVX512-BF16/AMX, recent GPUs) or ``"fp16"`` (CUDA): the
            forward pass and loss run under ``torch.autocast``; weights, gradients, the
            optimizer, pruning and evaluation stay float32. Measured on this project's 2-core
            CPU (``benchmarks/cpu_train_speed.py``): ResNet-20 on Fashion-MNIST trains 1.9x
            faster in bf16 on one thread. On a CPU without native bf16 (AVX2 only, e.g. an
            AMD EPYC of the same cloud) it is emulated and ~10x *slower*; ``fit`` warns
            there. None (default): float32.
    """

    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    amp: str | None = None


@dataclass(frozen=True)
class Schedule:
    """The learning rate over the epochs, stepped once per epoch.

    Attributes:
        kind: ``"cosine"`` (to 0 over the epochs after warm-up), ``"step"`` (``gamma`` at
            ``milestones``, default 30/60/80% of the epochs: SFP's x0.2 at 60/120/160 of 200)
            or ``"constant"``. ``fit(..., schedule="step")`` is the short spelling.
        milestones: the epochs of ``"step"``'s decays.
        gamma: ``"step"``'s factor.
        warmup_epochs: epochs of linear warm-up from lr/10 first.
    """

    kind: str = "cosine"
    milestones: list[int] | None = None
    gamma: float = 0.2
    warmup_epochs: int = 0


@dataclass(frozen=True)
class Checkpointing:
    """Where a run is saved, and whether it continues from there.

    Attributes:
        path: a file written after every epoch (rank 0), atomically; None: no checkpoint.
            ``fit(..., checkpoint=PATH)`` is the short spelling.
        resume: continue from ``path`` when it exists (a fresh run otherwise); the settings
            must match. A finished run returns its history without training.
    """

    path: str | Path | None = None
    resume: bool = False


def fit_options(lr: Any, optim: Optim | None, schedule: str | Schedule,
                checkpoint: str | Path | Checkpointing | None, keywords: Mapping[str, Any]
                ) -> tuple[Optim, Schedule, Checkpointing]:
    """fit's option objects from its arguments: objects, short spellings and keywords."""
    given = route_keywords("fit", keywords, {"optim": Optim, "schedule": Schedule,
                                             "checkpoint": Checkpointing},
                           skip=("lr", "kind", "path"))
    if lr is not None:
        given["optim"]["lr"] = lr
    if optim is not None and not isinstance(optim, Optim):
        raise InputError(f"fit: optim= must be an Optim, got {type(optim).__name__}")
    opt = with_keywords(optim or Optim(), given["optim"], "fit")
    if opt.lr is None:
        raise TypeError("fit() missing the learning rate: pass lr=... (or optim=Optim(lr=...))")
    sched = schedule if isinstance(schedule, Schedule) else Schedule(kind=schedule)
    ckpt = checkpoint if isinstance(checkpoint, Checkpointing) else Checkpointing(checkpoint)
    return (opt, with_keywords(sched, given["schedule"], "fit"),
            with_keywords(ckpt, given["checkpoint"], "fit"))


def check_fit(model: Any, epochs: int, optim: Optim, pruner: Any, bn_recalibration: int
              ) -> None:
    """fit's arguments (each raises :class:`~fxprune.errors.InputError`)."""
    if optim.amp is not None and optim.amp not in AMP_DTYPES:
        raise InputError(f"amp must be None, 'bf16' or 'fp16', got {optim.amp!r}")
    if not isinstance(model, nn.Module):
        raise InputError(f"fit() needs an nn.Module, got {type(model).__name__}")
    if isinstance(model, DistributedDataParallel):
        raise InputError("pass the unwrapped model: fit() wraps it in DDP itself under torchrun")
    if not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs must be a positive int, got {epochs!r}")
    if not optim.lr > 0 or not math.isfinite(optim.lr):  # type: ignore[operator,arg-type]
        raise InputError(f"lr must be > 0, got {optim.lr}")
    if optim.nesterov and optim.momentum <= 0:
        raise InputError("Nesterov needs momentum > 0: pass momentum=0.9 or nesterov=False")
    if not 0.0 <= optim.label_smoothing < 1.0:
        raise InputError(f"label_smoothing must be in [0, 1), got {optim.label_smoothing}")
    if bn_recalibration < 0:
        raise InputError(f"bn_recalibration must be >= 0 batches, got {bn_recalibration}")
    if pruner is not None and getattr(pruner, "model", model) is not model:
        raise InputError("the pruner was built on another module: pass fit() the same model "
                         "as SoftPruner(model, ...)")


def make_scheduler(opt: torch.optim.Optimizer, schedule: Schedule, epochs: int
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate scheduler of ``schedule`` over ``epochs``."""
    from torch.optim import lr_scheduler as L

    warmup = schedule.warmup_epochs
    main_epochs = max(epochs - warmup, 1)
    if schedule.kind == "cosine":
        main: L.LRScheduler = L.CosineAnnealingLR(opt, T_max=main_epochs)
    elif schedule.kind == "step":
        ms = schedule.milestones or [round(main_epochs * f) for f in (0.3, 0.6, 0.8)]
        main = L.MultiStepLR(opt, milestones=sorted(int(m) for m in ms), gamma=schedule.gamma)
    elif schedule.kind == "constant":
        main = L.ConstantLR(opt, factor=1.0, total_iters=0)
    else:
        raise InputError(f"schedule must be 'cosine', 'step' or 'constant', got "
                         f"{schedule.kind!r}")
    if warmup <= 0:
        return main
    warm = L.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=warmup)
    return L.SequentialLR(opt, [warm, main], milestones=[warmup])
