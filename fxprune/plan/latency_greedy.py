"""The latency target's allocation (step 3 of :mod:`fxprune.plan.latency_target`): as HALP's
latency-constrained knapsack, solved greedily. Start from the full model; repeatedly remove,
from the group where it costs the least importance per saved millisecond, the next 1 to 4
steps of ``step`` channels (lowest-scored units first, scores normalized per group as in
``allocation="global"``), until the time the latency table predicts meets the budget; then give
back single steps while the budget allows.
"""

from __future__ import annotations

__all__ = ["UnitSteps", "allocate_latency"]

import heapq
import math
from collections.abc import Mapping

import torch
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.core.groups import node_group
from fxprune.costs.latency.layers import LayerSpec, grouped_conv_groups
from fxprune.costs.latency.table import LatencyTable
from fxprune.ir import meta
from fxprune.plan.policies import normalized_scores, scored_groups

_LOOKAHEAD = 4  # steps considered at once per group (a padded step may save nothing alone)


class UnitSteps:
    """Per-group removal order, normalized importance and valid kept counts."""

    def __init__(self, analysis: Analysis, scores: Mapping[int, Tensor], step: int,
                 max_ratio: float, per_conv_group: frozenset[int] = frozenset()):
        self.order: dict[int, Tensor] = {}
        self.imp: dict[int, Tensor] = {}
        self.valid: dict[int, list[int]] = {}
        self.size: dict[int, int] = {}
        for g in scored_groups(analysis):
            n = g.size
            s = scores[g.id].double().clone() if g.id in scores else \
                torch.zeros(n, dtype=torch.float64)
            s = torch.nan_to_num(s, nan=-math.inf)
            frozen = list(g.frozen_units)
            if frozen:
                s[frozen] = math.inf
            self.order[g.id] = torch.argsort(-s, stable=True)  # select's order: keep first k
            imp = torch.full((n,), math.inf, dtype=torch.float64)
            free = torch.ones(n, dtype=torch.bool)
            free[frozen] = False
            imp[free] = normalized_scores(g, scores[g.id]) if g.id in scores else 0.0
            self.imp[g.id] = imp
            # ``step`` channels; ``step`` channels per conv group where a grouped conv's
            # width follows the group (its grid quantum)
            us = step if g.id in per_conv_group else step // math.gcd(step, g.divisor)
            low = max(len(frozen), n - math.floor(n * max_ratio + 1e-9), 1)
            ks = [k for k in range(us, n, us) if k >= low]
            self.valid[g.id] = [*ks, n] if ks else [n]
            self.size[g.id] = n

    def mask(self, gid: int, k: int) -> Tensor:
        """Kept units when the group keeps ``k``: the first ``k`` in select's order."""
        m = torch.zeros(self.size[gid], dtype=torch.bool)
        m[self.order[gid][:k]] = True
        return m


def _rest_weights(analysis: Analysis, layers: list[LayerSpec], free: set[int]
                  ) -> tuple[dict[int, float], float]:
    """Activation elements of the ops outside layer blocks, per group and in total."""
    covered = {n for s in layers for n in s.nodes}
    per: dict[int, float] = {}
    total = 0.0
    for n in analysis.gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr") or n.name in covered:
            continue
        shape = n.meta.get(meta.SHAPE)
        if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) for d in shape):
            continue
        numel = float(math.prod(shape))
        total += numel
        g = node_group(analysis, n)
        if g is not None and g in free:
            per[g] = per.get(g, 0.0) + numel
    return per, total


class _Greedy:
    """The state of one allocation: kept units per group and predicted time per layer."""

    def __init__(self, analysis: Analysis, gs: UnitSteps, table: LatencyTable, rest_ms: float):
        self.gs, self.table, self.layers = gs, table, table.layers
        self.k = {gid: gs.size[gid] for gid in gs.size}
        self.masks = {gid: gs.mask(gid, self.k[gid]) for gid in self.k}
        self.touch: dict[int, list[int]] = {gid: [] for gid in self.k}
        for i, s in enumerate(self.layers):
            for gid in {*s.in_counts, *s.out_counts}:
                if gid in self.touch:
                    self.touch[gid].append(i)
        per, total = _rest_weights(analysis, self.layers, set(self.k))
        self.rest_g = {gid: rest_ms * per.get(gid, 0.0) / total if total else 0.0
                       for gid in self.k}
        self.rest_fixed = rest_ms - sum(self.rest_g.values())
        self.cur = [table.layer_ms(s, s.width_in(self.masks), s.width_out(self.masks))
                    for s in self.layers]

    def total(self) -> float:
        return sum(self.cur) + self.rest_fixed + sum(
            self.rest_g[g] * self.k[g] / self.gs.size[g] for g in self.k)

    def trial(self, gid: int, k2: int) -> tuple[dict[int, float], float, float]:
        """Layer times if ``gid`` kept ``k2``; the time change; the importance change."""
        masks = {**self.masks, gid: self.gs.mask(gid, k2)}
        new = {i: self.table.layer_ms(self.layers[i], self.layers[i].width_in(masks),
                                      self.layers[i].width_out(masks)) for i in self.touch[gid]}
        delta = sum(new[i] - self.cur[i] for i in new) + \
            self.rest_g[gid] * (k2 - self.k[gid]) / self.gs.size[gid]
        lo, hi = sorted((k2, self.k[gid]))
        imp = float(self.gs.imp[gid][self.gs.order[gid][lo:hi]].sum())
        return new, delta, imp if k2 > self.k[gid] else -imp

    def apply(self, gid: int, k2: int, new: dict[int, float]) -> None:
        self.k[gid] = k2
        self.masks[gid] = self.gs.mask(gid, k2)
        for i, v in new.items():
            self.cur[i] = v

    def candidate(self, gid: int, need: float) -> tuple[float, int, float] | None:
        """The 1..4-step removal with the least importance lost per ms saved, stopping at the
        first that covers ``need``: ``(loss / saved, kept, saved)``."""
        best = None
        for k2 in [v for v in self.gs.valid[gid] if v < self.k[gid]][-_LOOKAHEAD:][::-1]:
            if best is not None and best[2] >= need:
                break  # one more step would only overshoot the budget further
            _, delta, imp = self.trial(gid, k2)
            if delta >= 0 or not math.isfinite(imp):
                continue
            if best is None or -imp / -delta < best[0]:
                best = (-imp / -delta, k2, -delta)
        return best

    def shrink(self, budget: float) -> None:
        heap: list[tuple[float, int, int, int, float]] = []  # (ratio, version, gid, k2, saved)
        version = dict.fromkeys(self.k, 0)

        def push(gid: int, c: tuple[float, int, float] | None) -> None:
            version[gid] += 1
            if c is not None:
                heapq.heappush(heap, (c[0], version[gid], gid, c[1], c[2]))

        now = self.total()
        for gid in self.k:
            push(gid, self.candidate(gid, now - budget))
        while now > budget and heap:
            _, ver, gid, k2, saved = heapq.heappop(heap)
            if ver != version[gid]:
                continue
            if saved > now - budget:  # planned for a larger need: re-plan for this one
                c = self.candidate(gid, now - budget)
                if c is not None and c[1] != k2:
                    push(gid, c)
                    continue
            new, _, _ = self.trial(gid, k2)
            self.apply(gid, k2, new)
            now = self.total()
            for g in {g for i in self.touch[gid]
                      for g in (*self.layers[i].in_counts, *self.layers[i].out_counts)} | {gid}:
                if g in version:
                    push(g, self.candidate(g, now - budget))

    def fill(self, budget: float) -> None:
        """Give back single steps while the budget allows, most importance per ms first (the
        last removal can overshoot by a whole coarse step)."""
        while True:
            now, best = self.total(), None
            for gid in self.k:
                up = [v for v in self.gs.valid[gid] if v > self.k[gid]]
                if not up:
                    continue
                new, cost, gain = self.trial(gid, up[0])
                if now + cost > budget:
                    continue
                score = math.inf if cost <= 0 else gain / cost
                if best is None or score > best[0]:
                    best = (score, gid, up[0], new)
            if best is None:
                return
            self.apply(best[1], best[2], best[3])


def allocate_latency(analysis: Analysis, scores: Mapping[int, Tensor], table: LatencyTable,
                     budget_ms: float, rest_ms: float, *, step: int, max_ratio: float = 0.9,
                     groups: UnitSteps | None = None) -> tuple[dict[int, int], float]:
    """Kept units per group whose predicted time meets ``budget_ms`` (greedy; module docs).

    ``rest_ms``: the time outside layer blocks at full width. Returns
    ``({group id: kept units}, predicted ms)``.
    """
    gs = groups or UnitSteps(analysis, scores, step, max_ratio, grouped_conv_groups(table.layers))
    g = _Greedy(analysis, gs, table, rest_ms)
    g.shrink(budget_ms)
    g.fill(budget_ms)
    return dict(g.k), g.total()
