"""``fit()``: a plain supervised training loop for users without their own, with soft pruning.

SGD (Nesterov momentum by default), a cosine, step or constant learning-rate schedule stepped
once per epoch (optionally after a linear warm-up), weight decay, cross-entropy with optional
label smoothing. A :class:`~fxprune.train.SoftPruner` (or anything with its interface) is
attached to the optimizer and told when an epoch ends. Every epoch can be checkpointed and a
run resumed exactly (same weights bit for bit as an uninterrupted run).

Under ``torchrun`` the same call trains with DistributedDataParallel (gloo on CPU, nccl on
CUDA): the train loader's batch size is the *global* batch B, each rank gets B/world from a
seeded DistributedSampler, the pruner's masks are broadcast from rank 0 after every
``epoch_end``, and only rank 0 writes checkpoints and calls ``callback``. One process uses the
same sampler, so 1 x B and N x B/N see the same global batches and, for models whose forward
does not depend on the batch split (no BatchNorm in train mode, no dropout), reach the same
weights up to float reduction order. With BatchNorm, each rank normalizes its own B/N samples
(PyTorch's DDP behaviour), so the runs differ slightly.

Library code does not print: progress is a tqdm bar per epoch (stderr, rank 0, ``progress``),
the per-epoch record goes to ``callback`` and to the ``fxprune.train`` logger.

The options are grouped (:mod:`fxprune.train.fit_options`: :class:`Optim`,
:class:`Schedule`, :class:`Checkpointing`); the records are in :mod:`fxprune.train.history`,
evaluation and BatchNorm recalibration in :mod:`fxprune.train.evaluation`.
"""

from __future__ import annotations

__all__ = ["EpochRecord", "History", "fit", "evaluate", "recalibrate_bn", "Optim", "Schedule",
           "Checkpointing"]

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from fxprune.errors import FxPruneError, InputError
from fxprune.train import distributed as D
from fxprune.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from fxprune.train.distill import Distiller
from fxprune.train.evaluation import evaluate, recalibrate_bn
from fxprune.train.fit_options import (
    AMP_DTYPES,
    Checkpointing,
    Optim,
    Schedule,
    check_fit,
    fit_options,
    make_scheduler,
    warn_emulated_bf16,
)
from fxprune.train.history import EpochRecord, History

logger = logging.getLogger("fxprune.train")


def _set_run_length(pruner: Any, epochs: int) -> None:
    """Tell a SoftPruner the run's length (its last ``settle`` epochs train the final
    selection), unless the user set it."""
    if getattr(pruner, "epochs", 0) is None:
        pruner.epochs = epochs


def _tqdm(loader: Iterable, enabled: bool, desc: str) -> Any:
    if not enabled:
        return loader
    try:
        from tqdm import tqdm
    except ImportError:
        return loader
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def _autocast(amp: str | None, device: torch.device) -> Any:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def _train_epoch(net: nn.Module, batches: Any, opt: torch.optim.Optimizer, loss_fn: nn.Module,
                 device: torch.device, amp: str | None = None,
                 distiller: Distiller | None = None) -> torch.Tensor:
    """One pass over ``batches``; returns [loss sum, correct, count] (this rank's). With a
    ``distiller`` the loss mixes in the teacher's softened outputs (the reported loss too)."""
    net.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(amp, device):
            out = net(x)
            loss = loss_fn(out.float(), y)
            if distiller is not None:
                loss = distiller.loss(out, x, loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()  # the pruner's step hooks keep the masks here
        with torch.no_grad():
            sums[0] += loss.detach().double() * y.numel()
            sums[1] += (out.argmax(1) == y).sum()
            sums[2] += y.numel()
        if hasattr(batches, "set_postfix") and step % 10 == 0:
            batches.set_postfix(loss=f"{float(sums[0] / sums[2]):.4f}", refresh=False)
    return sums


def _resume(checkpoint: str | Path | None, settings: dict[str, Any], module: nn.Module,
            opt: Any, sched: Any, pruner: Any, info: D.DistInfo, device: torch.device
            ) -> tuple[int, History] | None:
    """Restore everything from ``checkpoint``; None when it does not exist yet."""
    if checkpoint is None:
        raise InputError("resume=True needs checkpoint=PATH")
    path = Path(checkpoint)
    if not path.is_file():
        logger.info("no checkpoint at %s yet: starting from epoch 0", path)
        return None
    ckpt = load_checkpoint(path, map_location=device)
    saved = ckpt.get("settings", {})
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in settings.items()
            if k in saved and saved[k] != v]
    if diff:
        raise InputError(f"cannot resume from {path}: the run's settings differ ("
                         + "; ".join(diff) + "). Use the same settings or a new checkpoint.")
    if (ckpt["pruner"] is None) != (pruner is None):
        raise InputError(f"cannot resume from {path}: it was written "
                         f"{'without' if ckpt['pruner'] is None else 'with'} a pruner")
    module.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    if pruner is not None:
        pruner.load_state_dict(ckpt["pruner"])
        pruner.apply_masks()
    states = ckpt["rng"]
    set_rng_state(states[info.rank % len(states)])
    history = History.from_dict(ckpt["history"])
    history.resumed_at, history.world_size = int(ckpt["epoch"]), info.world_size
    logger.info("resumed from %s at epoch %d", path, ckpt["epoch"])
    return int(ckpt["epoch"]), history


@dataclass
class _Run:
    """One call of :func:`fit`: what every epoch uses."""

    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper under torchrun
    opt: torch.optim.Optimizer
    sched: Any
    loader: Any
    sampler: Any
    val: Any
    pruner: Any
    info: D.DistInfo
    device: torch.device
    optim: Optim
    epochs: int
    bn_recalibration: int
    distiller: Distiller | None = None

    def epoch(self, epoch: int, progress: bool) -> EpochRecord:
        """Train one epoch, tell the pruner, evaluate; the epoch's record."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        cur_lr = self.opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        bar = _tqdm(self.loader, progress and self.info.is_main,
                    f"epoch {epoch + 1}/{self.epochs}")
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.optim.label_smoothing)
        sums = D.all_reduce_sum(_train_epoch(self.net, bar, self.opt, loss_fn, self.device,
                                             self.optim.amp, self.distiller), self.info)
        seconds = time.perf_counter() - t0
        if sums[2] == 0:
            raise InputError("the training loader yielded no batch: lower the batch size")
        train_loss = float(sums[0] / sums[2])
        if not math.isfinite(train_loss):
            raise FxPruneError(f"the training loss became {train_loss} in epoch "
                               f"{epoch + 1}: lower the learning rate (lr={cur_lr:g})")
        self.sched.step()
        if self.pruner is not None:
            self.pruner.epoch_end()
            if self.info.enabled:
                self.pruner.broadcast(src=0)
            recalibrate_bn(self.model, self.loader, self.bn_recalibration, self.device)
        D.broadcast_buffers(self.model, self.info)
        val_loss, val_acc = evaluate(self.model, self.val, self.device, self.info) \
            if self.val is not None else (None, None)
        return EpochRecord(epoch + 1, train_loss, float(sums[1] / sums[2]), val_loss, val_acc,
                           float(self.pruner.kept_macs) if self.pruner is not None else None,
                           cur_lr, seconds, float(sums[2]) / max(seconds, 1e-9))

    def save(self, path: str | Path, epoch: int, history: History,
             settings: dict[str, Any]) -> None:
        rngs = D.gather_objects(rng_state(), self.info)  # every rank's, for an exact resume
        if self.info.is_main:
            save_checkpoint(path, {
                "epoch": epoch + 1, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "pruner": self.pruner.state_dict() if self.pruner is not None else None,
                "rng": rngs, "history": history.to_dict(), "settings": settings,
                "world_size": self.info.world_size})


def _settings(epochs: int, optim: Optim, schedule: Schedule, batch: Any,
              bn_recalibration: int) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint (the keys of earlier releases)."""
    return {"epochs": epochs, "lr": optim.lr, "momentum": optim.momentum,
            "nesterov": optim.nesterov, "weight_decay": optim.weight_decay,
            "schedule": schedule.kind, "milestones": schedule.milestones,
            "gamma": schedule.gamma, "warmup_epochs": schedule.warmup_epochs,
            "label_smoothing": optim.label_smoothing, "global_batch": batch,
            "bn_recalibration": bn_recalibration, "amp": optim.amp}


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    epochs: int = 1,
    *,
    lr: float | None = None,
    optim: Optim | None = None,
    schedule: str | Schedule = "cosine",
    checkpoint: str | Path | Checkpointing | None = None,
    pruner: Any = None,
    bn_recalibration: int = 0,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    progress: bool = True,
    callback: Callable[[EpochRecord], None] | None = None,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    temperature: float = 4.0,
    feature_distill: float = 0.0,
    feature_layers: Sequence[str] | None = None,
    **keywords: Any,
) -> History:
    """Train ``model`` in place for ``epochs`` epochs; return the :class:`History`.

    ``fit(model, train, val, 30, lr=0.1, momentum=0.9, schedule="step", gamma=0.1,
    checkpoint="run.ckpt", resume=True)`` and ``fit(model, train, val, 30,
    optim=Optim(lr=0.1, momentum=0.9), schedule=Schedule("step", gamma=0.1),
    checkpoint=Checkpointing("run.ckpt", resume=True))`` are the same call; an option given
    both ways with two values raises :class:`InputError`.

    Args:
        model: the module to train (unwrapped; the pruner's ``model`` if a pruner is given).
        train_loader: a DataLoader whose ``batch_size`` is the global batch B (fit re-shards
            it with a seeded DistributedSampler, dropping the last incomplete batch); any
            other iterable of ``(x, y)`` works in one process.
        val_loader: evaluated after every epoch (after ``pruner.epoch_end()``), or None.
        lr: the learning rate (``Optim.lr``; required, here or in ``optim``).
        optim: the training step, an :class:`~fxprune.Optim`: ``lr``, ``momentum``,
            ``nesterov``, ``weight_decay`` (``torch.optim.SGD``), ``label_smoothing``,
            ``amp`` (``"bf16"``/``"fp16"`` autocast of the forward pass and loss).
        schedule: the learning rate over the epochs: ``"cosine"`` (default), ``"step"`` or
            ``"constant"``, or a :class:`~fxprune.Schedule` (``kind``, ``milestones``,
            ``gamma``, ``warmup_epochs``).
        checkpoint: a path written after every epoch (rank 0), atomically, or a
            :class:`~fxprune.Checkpointing` (``path``, ``resume``: continue from it when it
            exists; the settings must match; a finished run returns its history without
            training).
        pruner: a :class:`fxprune.SoftPruner` (``attach``, ``epoch_end``, ``broadcast``,
            ``apply_masks``, ``state_dict``/``load_state_dict``, ``kept_macs``), built on
            ``model`` after it was moved to ``device``.
        bn_recalibration: after every ``pruner.epoch_end()``, recompute the BatchNorm
            running statistics on this many training batches (:func:`recalibrate_bn`; 0, the
            default, leaves them as the SFP/FPGM authors do). Under DDP, rank 0's are kept.
        device: default: where the model's parameters are.
        seed: seeds torch (``seed + rank``) and the sampler (``seed``); None leaves the global
            RNG alone (sampler seed 0).
        progress: a tqdm bar per epoch on stderr (rank 0; needs tqdm).
        callback: called with each :class:`EpochRecord` (rank 0 only).
        teacher: distil from this model (typically the dense original) with weight
            ``distill`` in ``[0, 1]`` and ``temperature`` T: the loss is ``(1 - distill) *
            cross-entropy + distill * T^2 * KL`` (:mod:`fxprune.train.distill`). The teacher
            is copied (the given model is not changed) and runs in eval mode without gradients
            on every rank (under DDP nothing of it is communicated).
        feature_distill: with ``teacher``, add this weight times the mean relative squared
            error between the student's and the teacher's outputs of the same layers, at the
            channels the student kept (read from the manifest :func:`fxprune.compress`
            records; :mod:`fxprune.train.distill`). 0 (default): off.
        feature_layers: the module names feature distillation compares (default: every
            BatchNorm layer present in both models).
        **keywords: any field of ``optim``, ``schedule`` or ``checkpoint`` by name (the
            spelling of earlier releases: ``momentum=``, ``milestones=``, ``resume=``...).

    Raises:
        InputError: bad arguments, an unshardable loader under torchrun, a mismatched resume.
        FxPruneError: the training loss became NaN or infinite.
    """
    optim, sched, ckpt = fit_options(lr, optim, schedule, checkpoint, keywords)
    check_fit(model, epochs, optim, pruner, bn_recalibration)
    if teacher is None and (distill or feature_distill):
        raise InputError("distill > 0 and feature_distill > 0 need teacher= (the dense model "
                         "to distil from)")
    _set_run_length(pruner, epochs)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    warn_emulated_bf16(optim.amp, device)
    # built (and its layers matched) before the process group, so that a refusal leaves none
    distiller = Distiller(teacher, distill, temperature, device, features=feature_distill,
                          student=model, layers=feature_layers) \
        if teacher is not None and (distill or feature_distill) else None
    try:
        info = D.init_distributed(device)
    except BaseException:
        if distiller is not None:
            distiller.close()
        raise
    try:
        return _fit(model, train_loader, val_loader, epochs, optim, sched, ckpt, pruner,
                    bn_recalibration, device, info, seed, progress, callback, distiller)
    finally:
        if distiller is not None:
            distiller.close()
        if info.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _fit(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None, epochs: int,
         optim: Optim, schedule: Schedule, ckpt: Checkpointing, pruner: Any,
         bn_recalibration: int, device: torch.device, info: D.DistInfo, seed: int | None,
         progress: bool, callback: Callable[[EpochRecord], None] | None,
         distiller: Distiller | None = None) -> History:
    """:func:`fit` once its options are checked and the process group is up."""
    model.to(device)
    if seed is not None:
        torch.manual_seed(seed + info.rank)
    loader, sampler = D.shard_train_loader(train_loader, info, 0 if seed is None else seed)
    val = D.shard_eval_loader(val_loader, info)
    settings = _settings(epochs, optim, schedule, getattr(train_loader, "batch_size", None),
                         bn_recalibration)
    if distiller is not None:  # (absent otherwise: checkpoints of earlier releases resume)
        settings.update(distill=distiller.alpha, temperature=distiller.temperature)
        if distiller.features:
            settings.update(feature_distill=distiller.features, feature_layers=distiller.layers)
    opt = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                          nesterov=optim.nesterov, weight_decay=optim.weight_decay)
    sched = make_scheduler(opt, schedule, epochs)
    handle = pruner.attach(opt) if pruner is not None else None
    if getattr(pruner, "score_recalibration", 0) and pruner.calibration_data is None:
        pruner.calibration_data = loader  # the candidates' BatchNorm statistics (training data)
    start, history = 0, History(world_size=info.world_size)
    if ckpt.resume:
        start, history = _resume(ckpt.path, settings, model, opt, sched, pruner, info,
                                 device) or (start, history)
    if pruner is not None and info.enabled:
        pruner.broadcast(src=0)
        pruner.apply_masks()
    net: nn.Module = model
    if info.enabled:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(model, net, opt, sched, loader, sampler, val, pruner, info, device, optim,
               epochs, bn_recalibration, distiller)
    for epoch in range(start, epochs):
        rec = run.epoch(epoch, progress)
        history.epochs.append(rec)
        if ckpt.path is not None:
            run.save(ckpt.path, epoch, history, settings)
        if info.is_main:
            logger.info("%s", rec.line(epochs))
            if callback is not None:
                callback(rec)
    if handle is not None:
        handle.remove()
    return history
