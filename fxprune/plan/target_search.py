"""The MACs/params target search: the amount of a policy whose rewritten model keeps a given
fraction of the original's MACs (``target_flops``) or parameters (``target_params``).

Reads:  the analysis, per-group scores, an :class:`~fxprune.plan.policies.Allocator`
Writes: the chosen keep-sets, selected on ``analysis.gm`` (each step runs select + rewrite)
"""

from __future__ import annotations

__all__ = ["Fit", "fit_target"]

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch.fx as fx
from torch import Tensor

from fxprune.core.analyze import Analysis, Progress
from fxprune.core.rewrite import rewrite
from fxprune.core.select import keep_count, select
from fxprune.core.trace import EXAMPLE_INPUTS
from fxprune.costs.count import count
from fxprune.errors import InputError
from fxprune.plan.policies import Allocator


@dataclass(frozen=True)
class Fit:
    """The result of :func:`fit_target`: the chosen ratios and what they achieve."""

    ratios: dict[int, float]
    amount: float
    achieved: float  # kept fraction of the metric (MACs or params), measured on the rewrite
    target: float
    steps: int


def _measure(gm: fx.GraphModule, metric: str) -> int:
    if metric == "params":  # the same number count() reports, without a forward pass
        return sum(p.numel() for p in gm.parameters())
    return count(gm, gm.meta.get(EXAMPLE_INPUTS)).macs


class _Search:
    """The state of a target search: every evaluation measures a rewritten model."""

    def __init__(self, analysis: Analysis, scores: Mapping[int, Tensor], metric: str,
                 round_to: int | None, progress: Progress | None, max_steps: int):
        self.analysis, self.scores, self.metric = analysis, scores, metric
        self.round_to, self.progress, self.max_steps = round_to, progress, max_steps
        self.base = max(1, _measure(analysis.gm, metric))
        self.seen: dict[tuple[int, ...], float] = {}
        self.evals: list[tuple[float, float, dict[int, float]]] = []  # (amount, kept, ratios)

    def key(self, ratios: Mapping[int, float]) -> tuple[int, ...]:
        return tuple(keep_count(g, ratios.get(g.id, 0.0), self.round_to)
                     for g in self.analysis.groups)

    def __call__(self, amount: float, ratios: dict[int, float]) -> float:
        key = self.key(ratios)
        if key not in self.seen:
            select(self.analysis, self.scores, ratios, round_to=self.round_to)
            pruned = rewrite(self.analysis.gm, check=False)
            self.seen[key] = _measure(pruned, self.metric) / self.base
            if self.progress is not None:
                self.progress("allocate", len(self.seen), self.max_steps)
        self.evals.append((amount, self.seen[key], ratios))
        return self.seen[key]

    def error(self, target: float) -> float:
        return min(abs(v - target) for _, v, _ in self.evals) / target


def fit_target(analysis: Analysis, scores: Mapping[int, Tensor], alloc: Allocator, target: float,
               *, metric: str = "macs", round_to: int | None = None, tol: float = 0.01,
               max_steps: int = 40, progress: Progress | None = None, stacklevel: int = 3
               ) -> Fit:
    """Find the amount whose rewritten model keeps ``target`` of the MACs (or params).

    The analysis is reused: each step is select + rewrite (without the shape check) + count.
    The amount is bracketed (the kept fraction is a monotone step function of it) and narrowed
    by safeguarded interpolation on ``sqrt`` of the kept fraction until a step lands within
    ``tol / 2`` (relative). Where one step of the policy is too coarse (uniform pruning of
    many same-size groups changes them all at once), the groups that differ between the two
    bracketing allocations are then moved one at a time, in graph order (bisection over how
    many): the result is uniform up to one unit (or one ``round_to`` step) per group. If one
    group's own step is still too coarse (an option-A ResNet's stream, whose channels run
    through every stage), it is fixed at either side of its step and the others are searched
    again. The best
    step is returned, with a warning if it is not within ``tol``; its keep-sets are left
    selected on ``analysis.gm``. ``stacklevel``: the warning's, as in :func:`warnings.warn`.
    """
    f = _Search(analysis, scores, metric, round_to, progress, max_steps)
    lo, hi = 0.0, alloc.upper
    flo = f(lo, alloc.ratios(lo))
    fhi = f(hi, alloc.ratios(hi)) if flo > target else flo
    if fhi > target * (1 + tol):
        raise InputError(
            f"target_{'flops' if metric == 'macs' else metric}={target:g} is out of reach: the "
            f"most this allocation removes (max_ratio={alloc.max_ratio:g}) keeps {fhi:.4f} of "
            f"the {metric}. Hint: raise max_ratio, or free frozen/ignored layers.")
    lo, hi, flo = _narrow(f, alloc, target, tol, max_steps, {}, lo, hi, flo, fhi)
    if flo > target and f.error(target) > tol / 2:
        _refine(f, analysis, alloc.ratios(lo), alloc.ratios(hi), lo, target, tol)
    if f.error(target) > tol / 2:
        _coarse_group(f, analysis, alloc, target, tol, max_steps, lo, hi)
    t, achieved, ratios = min(f.evals, key=lambda e: (abs(e[1] - target), e[0]))
    if abs(achieved - target) > tol * target:
        why = "channel granularity" + (" and round_to" if round_to else "")
        warnings.warn(f"target {target:g} of the {metric} not met within {tol:.0%}: the closest "
                      f"allocation keeps {achieved:.4f} ({why})", stacklevel=stacklevel)
    select(analysis, scores, ratios, round_to=round_to)
    return Fit(ratios, t, achieved, target, len(f.seen))


def _narrow(f: _Search, alloc: Allocator, target: float, tol: float, max_steps: int,
            override: dict[int, float], lo: float, hi: float, flo: float, fhi: float
            ) -> tuple[float, float, float]:
    """Safeguarded interpolation on ``sqrt`` of the kept fraction; returns (lo, hi, f(lo))."""
    last, start = 0, len(f.evals)
    while flo > target and len(f.evals) < start + max_steps and \
            hi - lo > alloc.resolution and f.error(target) > tol / 2:
        a, b, y = math.sqrt(flo), math.sqrt(fhi), math.sqrt(target)
        t = lo + (hi - lo) * (a - y) / (a - b) if a > b else (lo + hi) / 2
        width = hi - lo
        t = min(max(t, lo + 0.02 * width), hi - 0.02 * width)
        if abs(last) >= 2:  # the same end moved twice: bisect to guarantee progress
            t = (lo + hi) / 2
        ft = f(t, {**alloc.ratios(t), **override})
        if ft > target:
            lo, flo, last = t, ft, (last + 1 if last > 0 else 1)
        else:
            hi, fhi, last = t, ft, (last - 1 if last < 0 else -1)
    return lo, hi, flo


def _coarse_group(f: _Search, analysis: Analysis, alloc: Allocator, target: float, tol: float,
                  max_steps: int, lo: float, hi: float) -> None:
    """One group's step is larger than the tolerance (a residual stream whose channels run
    through every stage): fix it at either side of its step and search the others again."""
    r_lo, r_hi = alloc.ratios(lo), alloc.ratios(hi)
    k_lo, k_hi = f.key(r_lo), f.key(r_hi)
    moved = [g for g, a, b in zip(analysis.groups, k_lo, k_hi) if a != b]
    if not moved:
        return
    coarse = max(moved, key=lambda g: (len(g.producers), g.size)).id
    for r in (r_hi[coarse], r_lo[coarse]):
        if f.error(target) <= tol / 2:
            return
        ov = {coarse: r}
        a, b = 0.0, alloc.upper
        fa, fb = f(a, {**alloc.ratios(a), **ov}), f(b, {**alloc.ratios(b), **ov})
        if not fa > target > fb:
            continue
        a, b, fa = _narrow(f, alloc, target, tol, max_steps, ov, a, b, fa, fb)
        if fa > target and f.error(target) > tol / 2:
            _refine(f, analysis, {**alloc.ratios(a), **ov}, {**alloc.ratios(b), **ov}, a,
                    target, tol)


def _refine(f: _Search, analysis: Analysis, r_lo: dict[int, float], r_hi: dict[int, float],
            amount: float, target: float, tol: float) -> None:
    """Bisect over how many of the groups that differ take their ``r_hi`` ratio: in graph order,
    then, if that misses, in reverse order (a coarse group, e.g. a residual stream whose channels
    run through every stage, decides the first step of one order and the last of the other)."""
    k_lo, k_hi = f.key(r_lo), f.key(r_hi)
    moved = [g.id for g, a, b in zip(analysis.groups, k_lo, k_hi) if a != b]
    for order in (moved, moved[::-1]):
        lo, hi = 0, len(order)
        while hi - lo > 1 and f.error(target) > tol / 2:
            mid = (lo + hi) // 2
            ratios = {**r_lo, **{gid: r_hi[gid] for gid in order[:mid]}}
            if f(amount, ratios) > target:
                lo = mid
            else:
                hi = mid
