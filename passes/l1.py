"""L1-norm filter criterion (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017)."""

from __future__ import annotations

__all__ = ["l1"]

import torch
from torch import Tensor

from fxprune.criteria import CriterionCtx, producer_scores, register_criterion
from fxprune.ir.meta import Group


@register_criterion("l1")
def l1(group: Group, ctx: CriterionCtx) -> Tensor:
    """Sum of |w| of each output filter (Li et al. 2017); data-free. Higher = kept."""
    return producer_scores(
        group, ctx, lambda w: torch.linalg.vector_norm(w, ord=1, dim=1, dtype=torch.float64))
