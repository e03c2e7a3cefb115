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
"""

from __future__ import annotations

__all__ = ["EpochRecord", "History", "fit", "evaluate", "recalibrate_bn"]

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from fxprune.errors import FxPruneError, InputError
from fxprune.train import distributed as D
from fxprune.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

logger = logging.getLogger("fxprune.train")


@dataclass
class EpochRecord:
    """One epoch: train loss/accuracy (over the epoch), val loss/accuracy (after epoch_end),
    kept MACs (``pruner.kept_macs``, None without a pruner), the lr used, time and
    throughput (global training samples per second)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    kept_macs: float | None
    lr: float
    seconds: float
    samples_per_s: float

    def line(self, epochs: int | None = None) -> str:
        """``epoch 3/10  loss 0.412  acc 88.1%  val 0.398 / 89.0%  kept MACs 0.521 ...``."""
        head = f"epoch {self.epoch}" + (f"/{epochs}" if epochs else "")
        val = (f"  val loss {self.val_loss:.4f}  val acc {100 * self.val_acc:.2f}%"
               if self.val_acc is not None else "")
        kept = f"  kept MACs {self.kept_macs:.3f}" if self.kept_macs is not None else ""
        return (f"{head}  loss {self.train_loss:.4f}  acc {100 * self.train_acc:.2f}%{val}"
                f"{kept}  lr {self.lr:.4g}  {self.seconds:.1f} s ({self.samples_per_s:.0f}/s)")


@dataclass
class History:
    """What :func:`fit` returns: one :class:`EpochRecord` per epoch (resumed ones included)."""

    epochs: list[EpochRecord] = field(default_factory=list)
    world_size: int = 1
    resumed_at: int = 0

    @property
    def last(self) -> EpochRecord | None:
        return self.epochs[-1] if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [asdict(r) for r in self.epochs], "world_size": self.world_size,
                "resumed_at": self.resumed_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls([EpochRecord(**r) for r in d["epochs"]], d.get("world_size", 1),
                   d.get("resumed_at", 0))


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
    """Recompute BatchNorm running statistics as the plain average over ``n`` batches
    (train mode, no gradients; "precise BN"). Returns the number of batches used.

    After a soft-pruning step zeroes filters, the running statistics of the following
    BatchNorms still describe the unmasked network, so eval-mode accuracy right after the
    mask can collapse (measured with ``fxprune train``: SFP on digits, 12.5% validation
    accuracy after the first epoch's mask, 78.5% with 20 batches of recalibration). The
    weights are untouched, so ``finalize()`` stays exact.
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or n <= 0:
        return 0
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    flags = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    used = 0
    try:
        for x, _ in batches:
            if used >= n:
                break
            model(x.to(device, non_blocking=True))
            used += 1
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        for m, t in flags.items():
            m.training = t
    return used


def _scheduler(opt: torch.optim.Optimizer, schedule: str, epochs: int, milestones: Any,
               gamma: float, warmup: int) -> torch.optim.lr_scheduler.LRScheduler:
    from torch.optim import lr_scheduler as L

    main_epochs = max(epochs - warmup, 1)
    if schedule == "cosine":
        main: L.LRScheduler = L.CosineAnnealingLR(opt, T_max=main_epochs)
    elif schedule == "step":
        ms = milestones or [round(main_epochs * f) for f in (0.3, 0.6, 0.8)]
        main = L.MultiStepLR(opt, milestones=sorted(int(m) for m in ms), gamma=gamma)
    elif schedule == "constant":
        main = L.ConstantLR(opt, factor=1.0, total_iters=0)
    else:
        raise InputError(f"schedule must be 'cosine', 'step' or 'constant', got {schedule!r}")
    if warmup <= 0:
        return main
    warm = L.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=warmup)
    return L.SequentialLR(opt, [warm, main], milestones=[warmup])


def _set_run_length(pruner: Any, epochs: int) -> None:
    """Tell a SoftPruner the run's length (its last ``settle`` epochs train the final
    selection), unless the user set it."""
    if getattr(pruner, "epochs", 0) is None:
        pruner.epochs = epochs


def _check_args(model: Any, epochs: int, lr: float, momentum: float, nesterov: bool,
                label_smoothing: float, pruner: Any, bn_recalibration: int,
                amp: str | None = None) -> None:
    if amp is not None and amp not in AMP_DTYPES:
        raise InputError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if not isinstance(model, nn.Module):
        raise InputError(f"fit() needs an nn.Module, got {type(model).__name__}")
    if isinstance(model, DistributedDataParallel):
        raise InputError("pass the unwrapped model: fit() wraps it in DDP itself under torchrun")
    if not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs must be a positive int, got {epochs!r}")
    if not lr > 0 or not math.isfinite(lr):
        raise InputError(f"lr must be > 0, got {lr}")
    if nesterov and momentum <= 0:
        raise InputError("Nesterov needs momentum > 0: pass momentum=0.9 or nesterov=False")
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if bn_recalibration < 0:
        raise InputError(f"bn_recalibration must be >= 0 batches, got {bn_recalibration}")
    if pruner is not None and getattr(pruner, "model", model) is not model:
        raise InputError("the pruner was built on another module: pass fit() the same model "
                         "as SoftPruner(model, ...)")


def _tqdm(loader: Iterable, enabled: bool, desc: str) -> Any:
    if not enabled:
        return loader
    try:
        from tqdm import tqdm
    except ImportError:
        return loader
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(amp: str | None, device: torch.device) -> Any:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def _train_epoch(net: nn.Module, batches: Any, opt: torch.optim.Optimizer, loss_fn: nn.Module,
                 device: torch.device, amp: str | None = None) -> torch.Tensor:
    """One pass over ``batches``; returns [loss sum, correct, count] (this rank's)."""
    net.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(amp, device):
            out = net(x)
            loss = loss_fn(out.float(), y)
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


def fit(  # noqa: PLR0915 - one linear training loop reads best in one place
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    epochs: int = 1,
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    milestones: list[int] | None = None,
    gamma: float = 0.2,
    warmup_epochs: int = 0,
    label_smoothing: float = 0.0,
    pruner: Any = None,
    bn_recalibration: int = 0,
    amp: str | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    progress: bool = True,
    callback: Callable[[EpochRecord], None] | None = None,
) -> History:
    """Train ``model`` in place for ``epochs`` epochs; return the :class:`History`.

    Args:
        model: the module to train (unwrapped; the pruner's ``model`` if a pruner is given).
        train_loader: a DataLoader whose ``batch_size`` is the global batch B (fit re-shards
            it with a seeded DistributedSampler, dropping the last incomplete batch); any
            other iterable of ``(x, y)`` works in one process.
        val_loader: evaluated after every epoch (after ``pruner.epoch_end()``), or None.
        lr, momentum, nesterov, weight_decay: ``torch.optim.SGD`` settings.
        schedule: ``"cosine"`` (to 0 over the epochs after warm-up), ``"step"`` (``gamma`` at
            ``milestones``, default 30/60/80% of the epochs: SFP's x0.2 at 60/120/160 of 200)
            or ``"constant"``; ``warmup_epochs`` of linear warm-up from lr/10 first.
        label_smoothing: ``CrossEntropyLoss(label_smoothing=...)``.
        pruner: a :class:`fxprune.SoftPruner` (``attach``, ``epoch_end``, ``broadcast``,
            ``apply_masks``, ``state_dict``/``load_state_dict``, ``kept_macs``), built on
            ``model`` after it was moved to ``device``.
        amp: ``"bf16"`` (CPUs with AVX512-BF16/AMX, recent GPUs) or ``"fp16"`` (CUDA): the
            forward pass and loss run under ``torch.autocast``; weights, gradients, the
            optimizer, pruning and evaluation stay float32. Measured on this project's 2-core
            CPU (``benchmarks/cpu_train_speed.py``): ResNet-20 on Fashion-MNIST trains 1.9x
            faster in bf16 on one thread. None (default): float32.
        bn_recalibration: after every ``pruner.epoch_end()``, recompute the BatchNorm
            running statistics on this many training batches (:func:`recalibrate_bn`; 0, the
            default, leaves them as the SFP/FPGM authors do). Under DDP, rank 0's are kept.
        checkpoint: a path written after every epoch (rank 0), atomically.
        resume: continue from ``checkpoint`` when it exists (a fresh run otherwise); the
            settings must match. A finished run returns its history without training.
        device: default: where the model's parameters are.
        seed: seeds torch (``seed + rank``) and the sampler (``seed``); None leaves the global
            RNG alone (sampler seed 0).
        progress: a tqdm bar per epoch on stderr (rank 0; needs tqdm).
        callback: called with each :class:`EpochRecord` (rank 0 only).

    Raises:
        InputError: bad arguments, an unshardable loader under torchrun, a mismatched resume.
        FxPruneError: the training loss became NaN or infinite.
    """
    _check_args(model, epochs, lr, momentum, nesterov, label_smoothing, pruner, bn_recalibration,
                amp)
    _set_run_length(pruner, epochs)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    info = D.init_distributed(device)
    try:
        model.to(device)
        if seed is not None:
            torch.manual_seed(seed + info.rank)
        loader, sampler = D.shard_train_loader(train_loader, info, 0 if seed is None else seed)
        val = D.shard_eval_loader(val_loader, info)
        batch = getattr(train_loader, "batch_size", None)
        settings = {"epochs": epochs, "lr": lr, "momentum": momentum, "nesterov": nesterov,
                    "weight_decay": weight_decay, "schedule": schedule,
                    "milestones": milestones, "gamma": gamma, "warmup_epochs": warmup_epochs,
                    "label_smoothing": label_smoothing, "global_batch": batch,
                    "bn_recalibration": bn_recalibration, "amp": amp}
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
        sched = _scheduler(opt, schedule, epochs, milestones, gamma, warmup_epochs)
        handle = pruner.attach(opt) if pruner is not None else None
        start, history = 0, History(world_size=info.world_size)
        if resume:
            start, history = _resume(checkpoint, settings, model, opt, sched, pruner, info,
                                     device) or (start, history)
        if pruner is not None and info.enabled:
            pruner.broadcast(src=0)
            pruner.apply_masks()
        net: nn.Module = model
        if info.enabled:
            net = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        for epoch in range(start, epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            cur_lr = opt.param_groups[0]["lr"]
            t0 = time.perf_counter()
            bar = _tqdm(loader, progress and info.is_main, f"epoch {epoch + 1}/{epochs}")
            sums = D.all_reduce_sum(_train_epoch(net, bar, opt, loss_fn, device, amp), info)
            seconds = time.perf_counter() - t0
            if sums[2] == 0:
                raise InputError("the training loader yielded no batch: lower the batch size")
            train_loss = float(sums[0] / sums[2])
            if not math.isfinite(train_loss):
                raise FxPruneError(f"the training loss became {train_loss} in epoch "
                                   f"{epoch + 1}: lower the learning rate (lr={cur_lr:g})")
            sched.step()
            if pruner is not None:
                pruner.epoch_end()
                if info.enabled:
                    pruner.broadcast(src=0)
                recalibrate_bn(model, loader, bn_recalibration, device)
            D.broadcast_buffers(model, info)
            val_loss, val_acc = evaluate(model, val, device, info) if val is not None else (
                None, None)
            rec = EpochRecord(epoch + 1, train_loss, float(sums[1] / sums[2]), val_loss, val_acc,
                              float(pruner.kept_macs) if pruner is not None else None, cur_lr,
                              seconds, float(sums[2]) / max(seconds, 1e-9))
            history.epochs.append(rec)
            if checkpoint is not None:
                rngs = D.gather_objects(rng_state(), info)  # every rank's, for an exact resume
                if info.is_main:
                    save_checkpoint(checkpoint, {
                        "epoch": epoch + 1, "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "pruner": pruner.state_dict() if pruner is not None else None,
                        "rng": rngs, "history": history.to_dict(), "settings": settings,
                        "world_size": info.world_size})
            if info.is_main:
                logger.info("%s", rec.line(epochs))
                if callback is not None:
                    callback(rec)
        if handle is not None:
            handle.remove()
        return history
    finally:
        if info.created:
            import torch.distributed as dist

            dist.destroy_process_group()
