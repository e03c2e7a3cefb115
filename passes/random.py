"""Random criterion: a seeded baseline that every real criterion should beat."""

from __future__ import annotations

__all__ = ["random_scores"]

import torch
from torch import Tensor

from fxprune.criteria import CriterionCtx, register_criterion
from fxprune.ir.meta import Group


@register_criterion("random")
def random_scores(group: Group, ctx: CriterionCtx) -> Tensor:
    """Uniform random scores, seeded by (ctx.seed, group id); data-free baseline."""
    gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + group.id)
    return torch.rand(group.size, generator=gen, dtype=torch.float64)
