"""RNF: k-reciprocal nearest filters (Lin et al., CLR-RNF, TNNLS 2023), data-free.

The authors' selector (``graph_weight``) keeps ``I_k``, the intersection of every filter's
k-nearest-neighbour list (self first), growing ``k`` from the number of filters to keep until
the intersection is large enough. This file uses the closed form (§8.2 of the algorithms notes,
[INF], checked against the iterative procedure in ``tests/test_criteria.py``):
``I_k = {j : max_i rank_i(j) < k}``, where ``rank_i(j)`` is j's position in i's neighbour list.
So RNF keeps the filters with the smallest *worst-case* neighbour rank, i.e. the most central
ones (FPGM prunes those: the two criteria point in opposite directions).

Details:
- Neighbour lists sort by Euclidean distance (the same order as the code's ``exp(-D)``
  similarity without its float32 underflow), self first, ties by filter index (stable sort);
  keeping the lowest-index filters at the cut is what selection does with tied scores, so the
  kept set equals the iterative procedure's with "fill from ``I_k \\ I_{k-1}`` by index".
- Score ``N - max_i rank_i(j)`` (an order-preserving shift of ``-max_i rank_i(j)`` that keeps
  scores positive), higher = kept.
- The "layer" is one producer member of the group (all filters of that parameter). Groups with
  several producers (residual adds) combine members like
  :func:`fxprune.criteria.producer_scores` (per-member mean-normalized, averaged over the
  producers feeding each unit): one keep-set per residual group, the deviation from the
  authors' per-block sets that §8.3 recommends [INF]. CLR-RNF's CIFAR code never prunes the
  residual stream: with ``allocation="clr"`` (``clr_cost="authors"``) it is not ranked either.
- Deliberate deviation: the authors rank by the similarity ``exp(-D)`` of squared distances
  ``D``, which underflows to 0 in float32 once ``D`` exceeds ~100 (unit-scale filters of wide
  layers), leaving arbitrary ties; ranking by ``D`` itself gives their order without it.
"""

from __future__ import annotations

__all__ = ["rnf", "worst_ranks"]

import torch
from torch import Tensor

from fxprune.criteria import CriterionCtx, producer_scores, register_criterion
from fxprune.ir.meta import Group


def worst_ranks(w: Tensor) -> Tensor:
    """``max_i rank_i(j)`` for every row ``j`` of ``w`` (``[N, d]``): j's worst neighbour rank."""
    w = w.detach().reshape(w.shape[0], -1).double()
    n = w.shape[0]
    d = torch.cdist(w, w)
    d.fill_diagonal_(-1.0)  # self first, even among duplicates
    order = torch.argsort(d, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n).expand(n, n).contiguous())
    return rank.max(dim=0).values


@register_criterion("rnf")
def rnf(group: Group, ctx: CriterionCtx) -> Tensor:
    """k-reciprocal nearest filters (Lin et al. 2023): keep the most central filters; data-free."""
    return producer_scores(group, ctx,
                           lambda w: (w.shape[0] - worst_ranks(w)).to(torch.float64))
