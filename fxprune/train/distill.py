"""Knowledge distillation from the original (dense) model while a pruned model trains.

The loss is Hinton et al.'s: ``(1 - alpha) * task_loss + alpha * T^2 * KL(softmax(t/T) ||
softmax(s/T))`` with ``s`` the student's and ``t`` the teacher's logits. The teacher runs in
eval mode under ``torch.no_grad`` (no gradient, no optimizer state, BatchNorm statistics
untouched); under DDP every rank holds its own copy and runs it on its own shard, so nothing
about the teacher is communicated. Under autocast the logits are compared in float32.

**Feature distillation** (``features=beta``) adds ``beta`` times the mean, over matched layers
and samples, of the relative squared error ``|s_l - t_l[kept]|^2 / |t_l[kept]|^2`` between the
student's and the teacher's outputs of the same layer for one sample, at the channels the
student kept. The kept channels
come from the manifest :func:`fxprune.compress` records on the pruned model
(``meta["fxprune.manifest"]``), so a pruned layer is compared channel for channel with its own
channels in the dense model (FitNets-style hints without a learned adapter: the rewrite knows
where each channel came from). Matched by default: every BatchNorm layer present in both under
the same name; a module the rewrite did not cut is compared whole when its output has the same
shape. A student without a manifest (a model pruned by another tool) is matched only where no
channel was cut.
"""

from __future__ import annotations

__all__ = ["Distiller", "distill_loss", "feature_pairs"]

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fxprune.errors import InputError
from fxprune.ir import meta
from fxprune.ir.hooks import Handles


def _logits(out: Any) -> Tensor:
    """The logits of a model's output: a tensor, the first tensor of a tuple, or ``.logits``."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise InputError(f"distillation needs the model's logits; its output is a "
                     f"{type(out).__name__}. Hint: return a tensor (or an object with .logits).")


def distill_loss(student: Tensor, teacher: Tensor, task_loss: Tensor, alpha: float,
                 temperature: float) -> Tensor:
    """``(1 - alpha) * task_loss + alpha * T^2 * KL(teacher_T || student_T)`` (batch mean)."""
    t = temperature
    kd = F.kl_div(F.log_softmax(student.float() / t, dim=1),
                  F.log_softmax(teacher.float() / t, dim=1), reduction="batchmean",
                  log_target=True) * (t * t)
    return (1.0 - alpha) * task_loss + alpha * kd


def _channel_dim(m: nn.Module) -> int:
    """Where a layer's output keeps its channels: 1 for convolutions and BatchNorm, last for
    Linear and LayerNorm (tokens or features last)."""
    return -1 if isinstance(m, (nn.Linear, nn.LayerNorm)) else 1


def feature_pairs(student: nn.Module, teacher: nn.Module,
                  layers: Sequence[str] | None = None) -> dict[str, Tensor | None]:
    """The layers feature distillation compares: ``{name: kept output channels (None: all)}``.

    ``layers``: module names (default: every BatchNorm layer of ``student``). A name is
    matched when ``teacher`` has a module of the same type there and the student's channels
    are the teacher's kept ones (the manifest's dim 0 of ``<name>.weight``) or, uncut, as many.

    Raises:
        InputError: a name in ``layers`` that is not in both models or cannot be matched.
    """
    smods, tmods = dict(student.named_modules()), dict(teacher.named_modules())
    record = meta.record_of(student)
    manifest = record.get(meta.MANIFEST) or {}
    widths = record.get(meta.MANIFEST_WIDTHS) or {}
    names = list(layers) if layers is not None else [
        n for n, m in smods.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    out: dict[str, Tensor | None] = {}
    for name in names:
        s, t = smods.get(name), tmods.get(name)
        why = _unmatched(name, s, t, manifest, widths)
        if why is None:
            cut = manifest.get(f"{name}.weight", {}).get(0)
            out[name] = None if cut is None else torch.as_tensor(cut)
        elif layers is not None:
            raise InputError(f"feature distillation: layer {name!r} {why}. Hint: name modules "
                             "present in both models whose outputs the pruning kept "
                             "channel by channel (e.g. the BatchNorm layers).")
    return out


def _unmatched(name: str, s: Any, t: Any, manifest: dict, widths: dict) -> str | None:
    """Why ``name`` cannot be compared (None: it can)."""
    if s is None or t is None:
        return f"is not in the {'student' if s is None else 'teacher'}"
    if type(s) is not type(t):
        return f"is a {type(s).__name__} in the student and a {type(t).__name__} in the teacher"
    ws, wt = getattr(s, "weight", None), getattr(t, "weight", None)
    if not isinstance(ws, Tensor) or not isinstance(wt, Tensor) or ws.dim() == 0:
        return "has no weight to read its channels from"
    cut = manifest.get(f"{name}.weight", {}).get(0)
    if cut is None:
        if ws.shape[0] != wt.shape[0]:
            return (f"has {ws.shape[0]} channels and the teacher {wt.shape[0]}, with no record "
                    "of which were kept")
        return None
    was = widths.get(f"{name}.weight", {}).get(0, wt.shape[0])
    if len(cut) != ws.shape[0] or was != wt.shape[0]:
        return (f"was cut from {was} channels but the teacher has {wt.shape[0]}: the teacher "
                "must be the model the student was pruned from (after a second cut, the "
                "manifest refers to the first cut's model)")
    return None


class _Features:
    """Forward hooks that keep the matched layers' outputs of one training step."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: dict[str, Tensor | None]):
        self.pairs, self.seen_s, self.seen_t = pairs, {}, {}
        smods, tmods = dict(student.named_modules()), dict(teacher.named_modules())
        self.dims = {n: _channel_dim(smods[n]) for n in pairs}
        self.handles = Handles(
            [smods[n].register_forward_hook(self._keep(self.seen_s, n, train_only=True))
             for n in pairs]
            + [tmods[n].register_forward_hook(self._keep(self.seen_t, n, train_only=False))
               for n in pairs])

    @staticmethod
    def _keep(into: dict[str, Tensor], name: str, train_only: bool) -> Any:
        def hook(m: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, Tensor) and (m.training or not train_only):
                into[name] = out
        return hook

    def loss(self) -> Tensor:
        """The relative squared error ``|s - t|^2 / |t|^2`` of each sample, averaged over the
        samples and the layers both forwards produced (per sample, so that the mean over DDP
        ranks' shards is the mean over the global batch)."""
        terms = []
        for name, keep in self.pairs.items():
            s, t = self.seen_s.pop(name, None), self.seen_t.pop(name, None)
            if s is None or t is None:
                continue
            t = t.float()
            if keep is not None:
                t = t.index_select(self.dims[name] % t.dim(), keep.to(t.device))
            if t.shape != s.shape:
                raise InputError(f"feature distillation: layer {name!r} gave "
                                 f"{tuple(s.shape)} in the student and {tuple(t.shape)} "
                                 "(kept channels) in the teacher")
            err = (s.float() - t).pow(2).flatten(1).sum(1)
            terms.append((err / t.pow(2).flatten(1).sum(1).clamp_min(1e-12)).mean())
        if not terms:
            raise InputError("feature distillation: no matched layer ran in this step")
        return torch.stack(terms).mean()


class Distiller:
    """The teacher side of distillation: ``loss(student_out, x, task_loss)``.

    Args:
        teacher: the dense model. A private copy is made (the user's model is never changed,
            and training the student in place cannot change the teacher), put in eval mode,
            its parameters frozen, on ``device``.
        alpha: the weight of the distillation term, in ``[0, 1]`` (0: no distillation).
        temperature: ``T > 0``, the softening of both distributions.
        features: ``beta >= 0``, the weight of feature distillation (0: off); needs
            ``student``.
        student: the model being trained (hooks on its matched layers are removed by
            :meth:`close`).
        layers: the module names compared (default: every BatchNorm layer; see
            :func:`feature_pairs`).
    """

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float = 4.0,
                 device: torch.device | str | None = None, *, features: float = 0.0,
                 student: nn.Module | None = None, layers: Sequence[str] | None = None):
        if not isinstance(teacher, nn.Module):
            raise InputError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        for name, v, lo, hi, want in (("distill", alpha, 0.0, 1.0, "in [0, 1]"),
                                      ("temperature", temperature, 1e-12, float("inf"), "> 0"),
                                      ("feature_distill", features, 0.0, float("inf"), ">= 0")):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise InputError(f"{name} must be a number {want}, got {v!r}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if device is not None:
            self.teacher.to(device)
        self.features, self._hooks = float(features), None
        if self.features:
            if student is None:
                raise InputError("feature distillation needs the student model (student=)")
            pairs = feature_pairs(student, self.teacher, layers)
            if not pairs:
                raise InputError(
                    "feature distillation: no layer of the student matches the teacher's "
                    "(default: the BatchNorm layers present in both, channel for channel). "
                    "Hint: prune with fxprune.compress, whose result records the kept "
                    "channels, or name the layers (feature_layers=[...]).")
            self._hooks = _Features(student, self.teacher, pairs)

    @property
    def layers(self) -> list[str]:
        """The layers feature distillation compares (empty when it is off)."""
        return list(self._hooks.pairs) if self._hooks is not None else []

    def close(self) -> None:
        """Remove the hooks on the student (fit calls it when training ends)."""
        if self._hooks is not None:
            self._hooks.handles.remove()
            self._hooks = None

    @torch.no_grad()
    def teacher_logits(self, x: Any) -> Tensor:
        return _logits(self.teacher(x))

    def loss(self, student_out: Any, x: Any, task_loss: Tensor) -> Tensor:
        if self.alpha == 0.0 and self._hooks is None:
            return task_loss
        teacher = self.teacher_logits(x)
        loss = task_loss if self.alpha == 0.0 else distill_loss(
            _logits(student_out), teacher, task_loss, self.alpha, self.temperature)
        if self._hooks is not None:
            loss = loss + self.features * self._hooks.loss()
        return loss
