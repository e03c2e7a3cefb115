"""Allocation policies: how much each group loses (per-group ratios), independent of the
criterion. :class:`~fxprune.plan.allocate.AllocationPlan` chooses the policy and applies it.

Reads:  ``analysis.groups`` (members, frozen units), per-group scores, the example-input shapes
        in ``node.meta`` (CLR layer costs)
Writes: nothing; returns ``{group id: ratio}`` for :func:`fxprune.select`.

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

__all__ = ["ALLOCATIONS", "DEFAULT_MAX_RATIO", "Allocator", "explicit_ratios",
           "normalized_scores", "producers", "scored_groups"]

import fnmatch
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.core.clr import ClrPool
from fxprune.criteria import CountRule
from fxprune.errors import InputError
from fxprune.ir import meta
from fxprune.plan.checks import check_clr_lambda, check_max_ratio

logger = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "global", "clr")
DEFAULT_MAX_RATIO = 0.9  # "global" and target searches; "clr" has no cap unless given


def scored_groups(analysis: Analysis) -> list[meta.Group]:
    """The groups that have units to prune (those :func:`fxprune.score` scores)."""
    return [g for g in analysis.groups if g.prunable > 0 and g.size > 1]


def producers(g: meta.Group) -> list[str]:
    """The modules that produce a group's channels (the owners of its ``"out"`` members)."""
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
        found = [lookup(p) for p in producers(g)]
        if found and all(r is not None for r in found):
            out[g.id] = min(r for r in found if r is not None)
        elif any(r is not None for r in found):
            logger.info("group %d has producers outside the ratios patterns (%s); it keeps the "
                        "allocation's ratio", g.id, ", ".join(producers(g)[:4]))
    unused = [p for p in ratios if p not in used]
    if unused:
        names = sorted({p for g in scored_groups(analysis) for p in producers(g)})
        raise InputError(
            f"ratios: {', '.join(map(repr, unused))} match no producer module. Producers of "
            f"prunable groups: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}. Hint: "
            "use qualified module names (model.named_modules()) or globs such as 'layer4.*'.")
    return out


def normalized_scores(g: meta.Group, s: Tensor) -> Tensor:
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
        max_ratio = check_max_ratio(max_ratio)
        self.capped = max_ratio is not None or allocation != "clr"
        if max_ratio is None:
            max_ratio = DEFAULT_MAX_RATIO if allocation != "clr" else 1.0 - 1e-9
        clr_lambda = check_clr_lambda(clr_lambda)
        self.allocation = allocation
        self.count_rule = count_rule
        self.max_ratio = float(max_ratio)
        self.fixed = dict(fixed or {})
        self.free = [g for g in scored_groups(analysis) if g.id not in self.fixed]
        self.size = {g.id: g.size for g in self.free}
        self.caps = {g.id: (min(g.prunable, math.floor(g.size * self.max_ratio + 1e-9))
                            if self.capped else min(g.prunable, g.size - 1)) for g in self.free}
        self.upper, self.resolution = self.max_ratio, 1e-6
        if allocation == "global":
            self._init_global(scores)
        elif allocation == "clr":
            self._init_clr(analysis, float(clr_lambda), clr_cost)

    def _init_global(self, scores: Mapping[int, Tensor]) -> None:
        parts = [(normalized_scores(g, scores[g.id]) if g.id in scores else
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
