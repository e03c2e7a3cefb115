"""Allocation: how much each group loses (per-group ratios), independent of the criterion.

Reads:  ``analysis.groups`` (members, frozen units), per-group scores, the example-input shapes
        in ``node.meta`` (CLR layer costs)
Writes: nothing; returns ``{group id: ratio}`` for :func:`fxprune.select`. :func:`fit_target`
        also runs select/rewrite per step and leaves the chosen keep-sets selected.

Policies map one amount ``a`` in [0, 1) to per-group ratios, monotonically:

- ``"uniform"``: every group loses the fraction ``a`` of its units (the papers' default).
- ``"global"``: one ranking across groups; ``a`` is the fraction of all prunable units (of the
  groups without an explicit ratio) removed.
  Scores are made comparable by dividing each group's scores (over its prunable units) by their
  mean, after shifting them so their minimum is 0 when a criterion returns negative values.
  The lowest normalized units go first, but no group loses more than ``max_ratio`` of its units.
- ``"clr"``: cross-layer ranking (CLR-RNF §8.1, :mod:`fxprune.core.clr`): every weight of the
  ranked layers scores ``|w| / c_l^lambda``; ``a`` is the fraction of all these weights below
  one global threshold, and a layer's ratio is the fraction of its own weights below it.
  ``clr_cost="authors"`` (default) is the authors' method: inner convs only, their cost
  factors and their ``int(N (1 - r))`` rounding; ``clr_cost="macs"`` is fxprune's (MACs per
  filter, every group, residual streams pooled). No cap unless ``max_ratio`` is given.
- explicit ``ratios={"layer4.*": 0.7}``: a group whose producer modules (the owners of its
  ``"out"`` members) *all* match a name or glob takes that ratio (the smallest one if several
  match; an exact name wins over globs, otherwise the first matching glob in order). Such groups
  are fixed; the policy allocates the others. A coupled group that also has unmatched producers
  (e.g. a residual stream shared with the stem) keeps the policy's ratio.

``max_ratio`` (default 0.9 for ``"global"`` and target searches, none for ``"clr"``) is applied
before ``round_to`` rounding; select keeps frozen units and >= 1 unit. Under ``"uniform"``, a
criterion with a ``count_rule`` (FPGM-mix) sets how many units a group of ``n`` loses.
"""

from __future__ import annotations

__all__ = ["ALLOCATIONS", "ALLOCATION", "allocate", "explicit_ratios", "layer_costs",
           "Allocator", "Fit", "fit_target", "DEFAULT_MAX_RATIO"]

import fnmatch
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from fxprune.core.analyze import Analysis, Progress
from fxprune.core.clr import ClrPool, layer_costs
from fxprune.core.rewrite import rewrite
from fxprune.core.select import keep_count, select
from fxprune.core.trace import EXAMPLE_INPUTS
from fxprune.costs.count import count
from fxprune.criteria import CountRule
from fxprune.errors import InputError
from fxprune.ir import meta

logger = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "global", "clr")
DEFAULT_MAX_RATIO = 0.9  # "global" and target searches; "clr" has no cap unless given
ALLOCATION = meta.ALLOCATION


def _scored(analysis: Analysis) -> list[meta.Group]:
    return [g for g in analysis.groups if g.prunable > 0 and g.size > 1]


def _producers(g: meta.Group) -> list[str]:
    return sorted({m.target for m in g.members if m.role == "out"})


def explicit_ratios(analysis: Analysis, ratios: Mapping[str, float]) -> dict[int, float]:
    """Per-group ratios from ``{module name or glob: ratio}`` (rules in the module docstring)."""
    for pat, r in ratios.items():
        if not isinstance(pat, str) or isinstance(r, bool) or not isinstance(r, (int, float)) \
                or not 0.0 <= float(r) < 1.0:
            raise InputError(f"ratios must map module names/globs to a ratio in [0, 1), got "
                             f"{pat!r}: {r!r}")
    used: set[str] = set()

    def lookup(name: str) -> float | None:
        if name in ratios:
            used.add(name)
            return float(ratios[name])
        for pat, r in ratios.items():
            if fnmatch.fnmatchcase(name, pat):
                used.add(pat)
                return float(r)
        return None

    out: dict[int, float] = {}
    for g in analysis.groups:
        found = [lookup(p) for p in _producers(g)]
        if found and all(r is not None for r in found):
            out[g.id] = min(r for r in found if r is not None)
        elif any(r is not None for r in found):
            logger.info("group %d has producers outside the ratios patterns (%s); it keeps the "
                        "allocation's ratio", g.id, ", ".join(_producers(g)[:4]))
    unused = [p for p in ratios if p not in used]
    if unused:
        names = sorted({p for g in _scored(analysis) for p in _producers(g)})
        raise InputError(
            f"ratios: {', '.join(map(repr, unused))} match no producer module. Producers of "
            f"prunable groups: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}. Hint: "
            "use qualified module names (model.named_modules()) or globs such as 'layer4.*'.")
    return out


def _normalized(g: meta.Group, s: Tensor) -> Tensor:
    """Scores of the prunable units of ``g``, divided by their mean (shifted to min 0 if < 0)."""
    keep = torch.ones(g.size, dtype=torch.bool)
    keep[list(g.frozen_units)] = False
    s = torch.nan_to_num(s.double()[keep], nan=-math.inf, posinf=math.inf)
    finite = s[torch.isfinite(s)]
    if finite.numel() == 0:
        return torch.zeros_like(s)
    low = float(finite.min())
    if low < 0:
        s = s - low
    mean = float(s[torch.isfinite(s)].mean())
    return s / mean if mean > 0 else torch.zeros_like(s)


class Allocator:
    """Maps an amount in [0, 1) to per-group ratios, monotonically, for one policy."""

    def __init__(self, analysis: Analysis, scores: Mapping[int, Tensor],
                 allocation: str = "uniform", *, max_ratio: float | None = None,
                 fixed: Mapping[int, float] | None = None, clr_lambda: float = 1.0,
                 clr_cost: Any = "authors", count_rule: CountRule | None = None):
        if allocation not in ALLOCATIONS:
            raise InputError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got "
                             f"{allocation!r}")
        if max_ratio is not None and (isinstance(max_ratio, bool) or not isinstance(
                max_ratio, (int, float)) or not 0.0 < float(max_ratio) < 1.0):
            raise InputError(f"max_ratio must be in (0, 1), got {max_ratio!r}")
        self.capped = max_ratio is not None or allocation != "clr"
        if max_ratio is None:
            max_ratio = DEFAULT_MAX_RATIO if allocation != "clr" else 1.0 - 1e-9
        if isinstance(clr_lambda, bool) or not isinstance(clr_lambda, (int, float)) or \
                not math.isfinite(clr_lambda):
            raise InputError(f"clr_lambda must be a finite number, got {clr_lambda!r}")
        self.allocation = allocation
        self.count_rule = count_rule
        self.max_ratio = float(max_ratio)
        self.fixed = dict(fixed or {})
        self.free = [g for g in _scored(analysis) if g.id not in self.fixed]
        self.size = {g.id: g.size for g in self.free}
        self.caps = {g.id: (min(g.prunable, math.floor(g.size * self.max_ratio + 1e-9))
                            if self.capped else min(g.prunable, g.size - 1)) for g in self.free}
        self.upper, self.resolution = self.max_ratio, 1e-6
        if allocation == "global":
            self._init_global(scores)
        elif allocation == "clr":
            self._init_clr(analysis, float(clr_lambda), clr_cost)

    def _init_global(self, scores: Mapping[int, Tensor]) -> None:
        parts = [(_normalized(g, scores[g.id]) if g.id in scores else
                  torch.zeros(g.prunable, dtype=torch.float64), g) for g in self.free]
        vals = torch.cat([p for p, _ in parts]) if parts else torch.zeros(0)
        gids = torch.cat([torch.full((p.numel(),), i) for i, (p, _) in enumerate(parts)]) \
            if parts else torch.zeros(0, dtype=torch.long)
        order = torch.argsort(vals, stable=True)
        gids = gids[order]
        # rank of each sorted entry inside its own group; eligible while under the group's cap
        rank = torch.zeros_like(gids)
        for i in range(len(parts)):
            where = gids == i
            rank[where] = torch.arange(int(where.sum()))
        cap = torch.tensor([self.caps[g.id] for _, g in parts], dtype=torch.long)
        eligible = rank < cap[gids] if parts else torch.zeros(0, dtype=torch.bool)
        self._order_gids = gids[eligible]
        self._total = max(1, sum(g.prunable for g in self.free))
        self.upper = min(self.max_ratio, self._order_gids.numel() / self._total)
        self.resolution = 0.5 / self._total

    def _init_clr(self, analysis: Analysis, lam: float, cost: Any) -> None:
        self._clr = ClrPool(analysis, self.free, lam, cost)
        self.upper = 1.0 - 1e-9
        self.resolution = 0.5 / max(1, self._clr.size)

    def ratios(self, amount: float) -> dict[int, float]:
        """Per-group ratios (fixed groups included) for ``amount`` of the policy."""
        out = dict(self.fixed)
        if self.allocation == "uniform" and self.count_rule is not None:
            rule = self.count_rule
            out.update({g.id: min(g.size - 1, max(0, rule(g.size, amount))) / g.size
                        for g in self.free})
        elif self.allocation == "uniform":
            out.update({g.id: amount for g in self.free})
        elif self.allocation == "global":
            k = min(self._order_gids.numel(), math.floor(amount * self._total + 1e-9))
            removed = torch.bincount(self._order_gids[:k], minlength=len(self.free))
            out.update({g.id: int(r) / g.size for g, r in zip(self.free, removed)})
        else:
            out.update({g.id: 0.0 for g in self.free})
            for gid, removed in self._clr.removed(amount).items():
                out[gid] = min(self.caps[gid], removed) / self.size[gid]
        return out


def allocate(analysis: Analysis, scores: Mapping[int, Tensor], amount: float = 0.0, *,
             allocation: str = "uniform", max_ratio: float | None = None,
             ratios: Mapping[str, float] | None = None, clr_lambda: float = 1.0,
             clr_cost: Any = "authors", count_rule: CountRule | None = None
             ) -> dict[int, float]:
    """Per-group ratios for :func:`fxprune.select` (see the module docstring for the policies).

    Example::

        >>> a = fxprune.analyze(fxprune.trace(model))
        >>> s = fxprune.score(a, "l1")
        >>> fxprune.select(a, s, fxprune.allocate(a, s, 0.5, allocation="global"))
    """
    fixed = explicit_ratios(analysis, ratios) if ratios else {}
    alloc = Allocator(analysis, scores, allocation, max_ratio=max_ratio, fixed=fixed,
                      clr_lambda=clr_lambda, clr_cost=clr_cost, count_rule=count_rule)
    return alloc.ratios(amount)


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
               max_steps: int = 40, progress: Progress | None = None) -> Fit:
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
    selected on ``analysis.gm``.
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
                      f"allocation keeps {achieved:.4f} ({why})", stacklevel=3)
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
