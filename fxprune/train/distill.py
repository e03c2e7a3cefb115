"""Knowledge distillation from the original (dense) model while a pruned model trains.

The loss is Hinton et al.'s: ``(1 - alpha) * task_loss + alpha * T^2 * KL(softmax(t/T) ||
softmax(s/T))`` with ``s`` the student's and ``t`` the teacher's logits. The teacher runs in
eval mode under ``torch.no_grad`` (no gradient, no optimizer state, BatchNorm statistics
untouched); under DDP every rank holds its own copy and runs it on its own shard, so nothing
about the teacher is communicated. Under autocast the logits are compared in float32.
"""

from __future__ import annotations

__all__ = ["Distiller", "distill_loss"]

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fxprune.errors import InputError


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


class Distiller:
    """The teacher side of distillation: ``loss(student_out, x, task_loss)``.

    Args:
        teacher: the dense model. A private copy is made (the user's model is never changed,
            and training the student in place cannot change the teacher), put in eval mode,
            its parameters frozen, on ``device``.
        alpha: the weight of the distillation term, in ``[0, 1]`` (0: no distillation).
        temperature: ``T > 0``, the softening of both distributions.
    """

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float = 4.0,
                 device: torch.device | str | None = None):
        if not isinstance(teacher, nn.Module):
            raise InputError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        for name, v, lo, hi, want in (("distill", alpha, 0.0, 1.0, "in [0, 1]"),
                                      ("temperature", temperature, 1e-12, float("inf"), "> 0")):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise InputError(f"{name} must be a number {want}, got {v!r}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if device is not None:
            self.teacher.to(device)

    @torch.no_grad()
    def teacher_logits(self, x: Any) -> Tensor:
        return _logits(self.teacher(x))

    def loss(self, student_out: Any, x: Any, task_loss: Tensor) -> Tensor:
        if self.alpha == 0.0:
            return task_loss
        return distill_loss(_logits(student_out), self.teacher_logits(x), task_loss,
                            self.alpha, self.temperature)
