"""FPGM: Filter Pruning via Geometric Median (He et al., CVPR 2019), data-free.

A filter close to the geometric median of its layer is "replaceable" by the others. Following
the authors' code (not the relaxed argmin of the paper), each filter's score is the sum of its
distances to the other filters of the same layer: ``s_j = sum_i d(F_j, F_i)``; the filters with
the *smallest* sums are pruned, so ``importance = s`` (higher = kept).

- ``distance``: ``"l2"`` (Euclidean, the default and what the authors' code always uses because
  of its ``--dist_type`` bug), ``"l1"`` or ``"cosine"`` (``1 - cos``).
- ``mix``: the two-stage "FPGM-mix" mode, in the authors' terms ``rate_norm = 1 - mix`` (the
  fraction the norm stage keeps). The norm stage marks the ``int(N * (1 - rate_norm))``
  smallest-L2-norm filters of the layer; distances are then summed among the survivors only.
  As a pure score, every norm-stage filter ranks below every survivor (norm-stage filters are
  ordered by their norm, survivors by their distance sum).
- Counts: under a uniform rate ``P`` (``allocation="uniform"``), FPGM-mix removes what the
  authors' ``get_filter_similar`` removes, ``int(N * (1 - rate_norm)) + int(N * rate_dist)``
  with ``rate_dist = P - mix`` (the criterion's ``count_rule``), not ``floor(N * P)``: the
  paper's "FPGM-mix 40%" (``--rate_norm 0.9 --rate_dist 0.3``) is ``make(mix=0.1)`` at ratio
  0.4, and prunes 3/5/7/12/25 filters of layers of 10/16/20/32/64 (``int(10 * (1 - 0.9))`` is
  0 in floating point, as in their code). ``P <= mix`` removes ``floor(N * P)``, norm stage
  only. Other allocations set the counts themselves.
- ``cosine``: an all-zero filter has no direction; it counts as distance 0 to every filter
  (replaceable by any) and scores below every non-zero filter, so it is pruned first.

The "layer" is one producer member of the group (all filters of that parameter, including
entries that belong to other groups, form the reference set). Groups with several producers
(residual adds) are scored like :func:`fxprune.criteria.producer_scores`: each member's
per-unit scores are divided by their mean, then averaged over the producers feeding each unit.
This joint scoring of a residual group is a deviation from the paper, whose residual convs keep
their own filter sets; ``residual="scatter"`` gives the paper's structure (one set per conv).

Registered names: ``fpgm`` (l2), ``fpgm_l1``, ``fpgm_cosine``, ``fpgm_mix`` (l2, ``mix=0.1``).
Other settings: ``compress(model, 0.4, criterion=fxprune.passes.fpgm.make("l1", mix=0.2))``.
"""

from __future__ import annotations

__all__ = ["make", "fpgm", "fpgm_l1", "fpgm_cosine", "fpgm_mix", "distance_sums", "DISTANCES",
           "mix_count", "norm_stage_count"]

import math

import torch
from torch import Tensor

from fxprune.criteria import (
    CountRule,
    CriterionCtx,
    CriterionFn,
    producer_scores,
    register_criterion,
)
from fxprune.errors import InputError
from fxprune.ir.meta import Group

DISTANCES = ("l2", "l1", "cosine")


def _sums(w: Tensor, distance: str) -> Tensor:
    """Each row's sum of distances to the rows of ``w``; cosine: zero rows score -1."""
    if distance == "l2":
        return torch.cdist(w, w, p=2.0).sum(dim=1)
    if distance == "l1":
        return torch.cdist(w, w, p=1.0).sum(dim=1)
    norm = w.norm(dim=1, keepdim=True)
    zero = norm.squeeze(1) == 0
    unit = w / norm.clamp_min(1e-300)
    d = (1.0 - unit @ unit.T).clamp_min(0.0)
    d[zero, :] = 0.0  # a zero filter has no direction: replaceable by any filter
    d[:, zero] = 0.0
    s = d.sum(dim=1)
    s[zero] = -1.0  # below every real sum (>= 0): pruned first
    return s


def norm_stage_count(n: int, mix: float | None) -> int:
    """Filters the FPGM-mix norm stage removes from a layer of ``n``: the authors'
    ``int(n * (1 - rate_norm))`` with ``rate_norm = 1 - mix`` (same floating-point value)."""
    return int(n * (1.0 - (1.0 - mix))) if mix else 0


def mix_count(mix: float) -> CountRule:
    """The authors' number of filters FPGM-mix removes from ``n`` at a uniform rate ``ratio``."""

    def count(n: int, ratio: float) -> int:
        if ratio <= mix + 1e-12:
            return math.floor(n * ratio + 1e-9)
        rate_dist = round(ratio - mix, 12)  # 0.4 - 0.1 is 0.30000000000000004
        return min(n, norm_stage_count(n, mix) + int(n * rate_dist))

    return count


def distance_sums(w: Tensor, distance: str = "l2", mix: float | None = None) -> Tensor:
    """FPGM importance of each row of ``w`` (``[N, d]``, one filter per row); higher = kept."""
    w = w.detach().reshape(w.shape[0], -1).double()
    n = w.shape[0]
    n_norm = norm_stage_count(n, mix)
    if n_norm == 0:
        return _sums(w, distance)
    norms = w.norm(dim=1)
    order = torch.argsort(norms, stable=True)
    stage1, survivors = order[:n_norm], order[n_norm:]
    out = torch.empty(n, dtype=torch.float64)
    d = _sums(w[survivors], distance)
    lo, top = (float(d.min()), float(d.max())) if d.numel() else (0.0, 0.0)
    # survivors in [2, 3], norm-stage filters in [1, 2): every survivor outranks the norm stage
    out[survivors] = 2.0 + ((d - lo) / (top - lo) if top > lo else torch.zeros_like(d))
    out[stage1] = 1.0 + 0.99 * norms[stage1] / norms.max().clamp_min(1e-300)
    return out


def make(distance: str = "l2", mix: float | None = None) -> CriterionFn:
    """Build an FPGM criterion ``(group, ctx) -> scores`` with the given distance and mix stage.

    Args:
        distance: ``"l2"`` (default), ``"l1"`` or ``"cosine"``.
        mix: fraction of each layer's filters pruned first by smallest L2 norm (FPGM-mix);
            ``None``/0 is FPGM-only.
    """
    if distance not in DISTANCES:
        raise InputError(f"fpgm distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    if mix is not None and (isinstance(mix, bool) or not 0.0 <= float(mix) < 1.0):
        raise InputError(f"fpgm mix must be a fraction in [0, 1), got {mix!r}")

    def fpgm_score(group: Group, ctx: CriterionCtx) -> Tensor:
        return producer_scores(group, ctx, lambda w: distance_sums(w, distance, mix))

    if mix:
        fpgm_score.count_rule = mix_count(float(mix))  # type: ignore[attr-defined]

    suffix = "" if distance == "l2" else f"_{distance}"
    fpgm_score.__name__ = f"fpgm{suffix}" + (f"_mix{mix:g}" if mix else "")
    fpgm_score.__doc__ = (f"FPGM sum of {distance} distances to the layer's other filters"
                          + (f" after a {mix:g} L2-norm stage" if mix else "") + ".")
    return fpgm_score


_l2, _l1, _cos, _mix = make("l2"), make("l1"), make("cosine"), make("l2", mix=0.1)


@register_criterion("fpgm")
def fpgm(group: Group, ctx: CriterionCtx) -> Tensor:
    """Geometric median (He et al. 2019): sum of L2 distances to the layer's filters; data-free."""
    return _l2(group, ctx)


@register_criterion("fpgm_l1")
def fpgm_l1(group: Group, ctx: CriterionCtx) -> Tensor:
    """FPGM with L1 (Manhattan) distances between filters; data-free."""
    return _l1(group, ctx)


@register_criterion("fpgm_cosine")
def fpgm_cosine(group: Group, ctx: CriterionCtx) -> Tensor:
    """FPGM with cosine distances (1 - cos) between filters; data-free."""
    return _cos(group, ctx)


@register_criterion("fpgm_mix", count_rule=mix_count(0.1))
def fpgm_mix(group: Group, ctx: CriterionCtx) -> Tensor:
    """FPGM-mix: 10% of each layer by smallest L2 norm first, the rest by L2 distance sums."""
    return _mix(group, ctx)
