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
- ``"clr"``: cross-layer ranking (CLR-RNF §8.1): every weight of the producer filters scores
  ``|w| / c_l^lambda``, where ``c_l`` is the layer's MACs per output filter divided by that of
  the first layer; ``a`` is the fraction of all these weights below the global threshold, and a
  group's ratio is the fraction of its own weights below it (a residual group pools the weights
  of all its producers: one ratio per coupled stage, like the paper's concatenated conv3s),
  capped at ``max_ratio``. ``c_l`` is derived from shapes [INF]: weights per filter times the
  output's elements per channel (batch included; the normalization cancels it). Only filters
  (``"out"`` members of >= 2 dims) enter the pool; biases do not.
- explicit ``ratios={"layer4.*": 0.7}``: a group whose producer modules (the owners of its
  ``"out"`` members) *all* match a name or glob takes that ratio (the smallest one if several
  match; an exact name wins over globs, otherwise the first matching glob in order). Such groups
  are fixed; the policy allocates the others. A coupled group that also has unmatched producers
  (e.g. a residual stream shared with the stem) keeps the policy's ratio.

``max_ratio`` is applied before ``round_to`` rounding; select keeps frozen units and >= 1 unit.
"""

from __future__ import annotations

__all__ = ["ALLOCATIONS", "ALLOCATION", "allocate", "explicit_ratios", "layer_costs",
           "Allocator", "Fit", "fit_target"]

import fnmatch
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor

from . import meta
from .analyze import Analysis, Progress
from .count import count
from .errors import InputError
from .rewrite import rewrite
from .select import keep_count, select
from .trace import EXAMPLE_INPUTS

logger = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "global", "clr")
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


def layer_costs(analysis: Analysis) -> dict[tuple[str, str], float]:
    """CLR's ``c_l`` per producer parameter: MACs per output filter / those of the first layer."""
    nodes = {n.name: (i, n) for i, n in enumerate(analysis.gm.graph.nodes)}
    raw: dict[tuple[str, str], tuple[int, float]] = {}
    for g in analysis.groups:
        for m in g.members:
            if m.role != "out" or (m.target, m.param) in raw:
                continue
            w = _tensor(analysis.gm, m)
            if w is None or w.dim() < 2 or w.shape[0] == 0:  # biases are not filters
                continue
            idx, node = nodes.get(m.node, (len(nodes), None))
            shape = node.meta.get(meta.SHAPE) if node is not None else None
            spatial = (math.prod(shape) / w.shape[0] if isinstance(shape, (tuple, list))
                       and all(isinstance(d, int) for d in shape) else 1.0)
            raw[(m.target, m.param)] = (idx, w[0].numel() * max(spatial, 1.0))
    if not raw:
        return {}
    first = min(raw.values())[1]
    return {k: c / first for k, (_, c) in raw.items()}


def _tensor(root: torch.nn.Module, m: meta.ParamSlice) -> Tensor | None:
    try:
        return m.tensor(root)
    except AttributeError:
        return None


class Allocator:
    """Maps an amount in [0, 1) to per-group ratios, monotonically, for one policy."""

    def __init__(self, analysis: Analysis, scores: Mapping[int, Tensor],
                 allocation: str = "uniform", *, max_ratio: float = 0.9,
                 fixed: Mapping[int, float] | None = None, clr_lambda: float = 1.0):
        if allocation not in ALLOCATIONS:
            raise InputError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got "
                             f"{allocation!r}")
        if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or \
                not 0.0 < float(max_ratio) < 1.0:
            raise InputError(f"max_ratio must be in (0, 1), got {max_ratio!r}")
        if isinstance(clr_lambda, bool) or not isinstance(clr_lambda, (int, float)) or \
                not math.isfinite(clr_lambda):
            raise InputError(f"clr_lambda must be a finite number, got {clr_lambda!r}")
        self.allocation = allocation
        self.max_ratio = float(max_ratio)
        self.fixed = dict(fixed or {})
        self.free = [g for g in _scored(analysis) if g.id not in self.fixed]
        self.caps = {g.id: min(g.prunable, math.floor(g.size * self.max_ratio + 1e-9))
                     for g in self.free}
        self.upper, self.resolution = self.max_ratio, 1e-6
        if allocation == "global":
            self._init_global(scores)
        elif allocation == "clr":
            self._init_clr(analysis, float(clr_lambda))

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

    def _init_clr(self, analysis: Analysis, lam: float) -> None:
        costs = layer_costs(analysis)
        self._clr: list[tuple[meta.Group, Tensor]] = []
        for g in self.free:
            frozen = torch.zeros(g.size + 1, dtype=torch.bool)
            frozen[list(g.frozen_units)] = True
            vals = []
            for m in g.members:
                w = _tensor(analysis.gm, m) if m.role == "out" else None
                c = costs.get((m.target, m.param))
                if w is None or c is None:
                    continue
                ok = (m.units >= 0) & ~frozen[m.units]
                vals.append(w[ok].abs().reshape(-1).double() / c ** lam)
            if vals:
                self._clr.append((g, torch.sort(torch.cat(vals)).values))
        self._n_pool = sum(v.numel() for _, v in self._clr)
        self.upper = 1.0 - 1e-9
        self.resolution = 0.5 / max(1, self._n_pool)

    def _clr_threshold(self, n: int) -> Tensor:
        """The n-th smallest pooled CLR score (1-based), without sorting the whole pool.

        Bisection over the bit patterns of float64, which order non-negative floats.
        """
        lo, hi = 0, int(torch.stack([v[-1] for _, v in self._clr]).max().view(torch.int64))
        while lo < hi:
            mid = (lo + hi) // 2
            x = torch.tensor(mid, dtype=torch.int64).view(torch.float64)
            if sum(int(torch.searchsorted(v, x, right=True)) for _, v in self._clr) >= n:
                hi = mid
            else:
                lo = mid + 1
        return torch.tensor(lo, dtype=torch.int64).view(torch.float64)

    def ratios(self, amount: float) -> dict[int, float]:
        """Per-group ratios (fixed groups included) for ``amount`` of the policy."""
        out = dict(self.fixed)
        if self.allocation == "uniform":
            out.update({g.id: amount for g in self.free})
        elif self.allocation == "global":
            k = min(self._order_gids.numel(), math.floor(amount * self._total + 1e-9))
            removed = torch.bincount(self._order_gids[:k], minlength=len(self.free))
            out.update({g.id: int(r) / g.size for g, r in zip(self.free, removed)})
        else:
            out.update({g.id: 0.0 for g in self.free})
            n = min(self._n_pool, math.floor(amount * self._n_pool + 1e-9))
            if n > 0:
                tau = self._clr_threshold(n)
                for g, vals in self._clr:
                    below = int(torch.searchsorted(vals, tau, right=True)) / vals.numel()
                    removed = min(self.caps[g.id], math.floor(g.prunable * below + 1e-9))
                    out[g.id] = removed / g.size
        return out


def allocate(analysis: Analysis, scores: Mapping[int, Tensor], amount: float = 0.0, *,
             allocation: str = "uniform", max_ratio: float = 0.9,
             ratios: Mapping[str, float] | None = None, clr_lambda: float = 1.0
             ) -> dict[int, float]:
    """Per-group ratios for :func:`fxprune.select` (see the module docstring for the policies).

    Example::

        >>> a = fxprune.analyze(fxprune.trace(model))
        >>> s = fxprune.score(a, "l1")
        >>> fxprune.select(a, s, fxprune.allocate(a, s, 0.5, allocation="global"))
    """
    fixed = explicit_ratios(analysis, ratios) if ratios else {}
    alloc = Allocator(analysis, scores, allocation, max_ratio=max_ratio, fixed=fixed,
                      clr_lambda=clr_lambda)
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
    many): the result is uniform up to one unit (or one ``round_to`` step) per group. The best
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
    last = 0
    while flo > target and len(f.evals) < max_steps and hi - lo > alloc.resolution and \
            f.error(target) > tol / 2:
        a, b, y = math.sqrt(flo), math.sqrt(fhi), math.sqrt(target)
        t = lo + (hi - lo) * (a - y) / (a - b) if a > b else (lo + hi) / 2
        width = hi - lo
        t = min(max(t, lo + 0.02 * width), hi - 0.02 * width)
        if abs(last) >= 2:  # the same end moved twice: bisect to guarantee progress
            t = (lo + hi) / 2
        ft = f(t, alloc.ratios(t))
        if ft > target:
            lo, flo, last = t, ft, (last + 1 if last > 0 else 1)
        else:
            hi, fhi, last = t, ft, (last - 1 if last < 0 else -1)
    if flo > target and f.error(target) > tol / 2:
        _refine(f, analysis, alloc.ratios(lo), alloc.ratios(hi), lo, target, tol)
    t, achieved, ratios = min(f.evals, key=lambda e: (abs(e[1] - target), e[0]))
    if abs(achieved - target) > tol * target:
        why = "channel granularity" + (" and round_to" if round_to else "")
        warnings.warn(f"target {target:g} of the {metric} not met within {tol:.0%}: the closest "
                      f"allocation keeps {achieved:.4f} ({why})", stacklevel=3)
    select(analysis, scores, ratios, round_to=round_to)
    return Fit(ratios, t, achieved, target, len(f.seen))


def _refine(f: _Search, analysis: Analysis, r_lo: dict[int, float], r_hi: dict[int, float],
            amount: float, target: float, tol: float) -> None:
    """Bisect over how many of the groups that differ take their ``r_hi`` ratio."""
    k_lo, k_hi = f.key(r_lo), f.key(r_hi)
    moved = [g.id for g, a, b in zip(analysis.groups, k_lo, k_hi) if a != b]
    lo, hi = 0, len(moved)
    while hi - lo > 1 and f.error(target) > tol / 2:
        mid = (lo + hi) // 2
        ratios = {**r_lo, **{gid: r_hi[gid] for gid in moved[:mid]}}
        if f(amount, ratios) > target:
            lo = mid
        else:
            hi = mid
