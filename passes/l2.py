"""L2-norm filter criterion (the norm-based baseline of SFP and FPGM)."""

from __future__ import annotations

__all__ = ["l2"]

import torch
from torch import Tensor

from fxprune.criteria import CriterionCtx, producer_scores, register_criterion
from fxprune.ir.meta import Group


@register_criterion("l2")
def l2(group: Group, ctx: CriterionCtx) -> Tensor:
    """L2 norm of each output filter (SFP, He et al. 2018); data-free. Higher = kept."""
    return producer_scores(
        group, ctx, lambda w: torch.linalg.vector_norm(w, ord=2, dim=1, dtype=torch.float64))
