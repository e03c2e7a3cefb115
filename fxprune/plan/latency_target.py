"""``target_latency``: keep a fraction of the measured latency, not of the MACs.

1. **Table.** :func:`fxprune.costs.latency.table.build_table` times every layer block on a grid of
   widths (cached) and measures the width step the device runs fastest (``round_to``).
2. **Budget.** The original graph is timed as a whole; what the layer blocks do not explain
   (pooling, adds, the stem's max-pool...) is the *rest*, spread over the channel groups in
   proportion to the activation elements of the other ops in each group, and scaled with the
   group's kept fraction [INF: a memory-bound cost per activation element].
3. **Allocation** (as HALP's latency-constrained knapsack, solved greedily): start from the full
   model; repeatedly remove, from the group where it costs the least importance per saved
   millisecond, the next 1 to 4 steps of ``step`` channels (lowest-scored units first, scores
   normalized per group as in ``allocation="global"``), until the predicted time meets the
   budget. The saved time of a group is exact under the table: every layer it touches is
   re-evaluated at its new in/out widths, so coupled layers (a residual stream) count once
   each. No group loses more than ``max_ratio``; frozen units stay
   (:mod:`fxprune.plan.latency_greedy`).
   A group that sets a grouped conv's width loses ``step`` units (``step`` channels per conv
   group) at a time, the grid quantum of such a layer (:mod:`fxprune.costs.latency.table`).
4. **Refinement.** The rewritten model is timed against the original in ``rounds`` separate
   interleaved measurements (each with its own warm-up); its measured ratio is the median of
   the rounds' ratios. Two measurements of one pair of models can differ by more than the
   rounds inside one (efficientnet_b0, batch 8: 0.509 in the search, 0.474 when re-measured in
   the same process), so a candidate within ``tol`` of the target is measured again (another
   ``rounds``) and accepted only if that set agrees too; otherwise all its rounds are pooled
   and the search goes on. A miss corrects the budget (interpolated between the tries on both
   sides of the target, else scaled by ``target / measured``) and re-runs the allocation, at
   most ``iterations`` times; the model whose pooled ratio is closest to the target is kept.
   Its ratio, the half-range of its round ratios (``spread``) and the rounds themselves are
   reported.
"""

from __future__ import annotations

__all__ = ["fit_latency", "LatencyFit", "allocate_latency", "measure_pair"]

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fxprune.core.analyze import Analysis, Progress
from fxprune.core.rewrite import rewrite
from fxprune.core.select import select
from fxprune.core.trace import EXAMPLE_INPUTS
from fxprune.costs.latency.layers import grouped_conv_groups
from fxprune.costs.latency.measure import measure_latency
from fxprune.costs.latency.table import LatencyTable, build_table
from fxprune.errors import InputError
from fxprune.plan.latency_greedy import UnitSteps, allocate_latency


@dataclass
class LatencyFit:
    """The result of :func:`fit_latency` (also in ``pruned.meta["fxprune.allocation"]``)."""

    ratios: dict[int, float]
    target: float
    achieved: float  # measured latency ratio pruned / original: the median over its rounds
    predicted: float  # the table's predicted ratio for the chosen model
    original_ms: float  # medians over the rounds
    pruned_ms: float
    step: int
    iterations: list[dict[str, Any]] = field(default_factory=list)
    layer_ms: dict[str, float] = field(default_factory=dict)  # predicted, pruned widths
    table: LatencyTable | None = None
    spread: float = 0.0  # half the range of the chosen model's round ratios
    rounds: list[float] = field(default_factory=list)  # its ratio in every round


def measure_pair(original: torch.nn.Module, pruned: torch.nn.Module | None, inputs: tuple, *,
                 threads: int | None, device: str | torch.device | None, repeat: int,
                 warmup: int) -> tuple[float, float | None]:
    """Median ms of the original and (interleaved with it) of the pruned model."""
    r = measure_latency(original, pruned, inputs, warmup=warmup, repeat=repeat,
                        threads=threads, device=device)
    return r.median_a_ms, r.median_b_ms


@dataclass
class _Try:
    """One allocation of the search and every measurement of it."""

    budget: float  # the table's ms (before the scale to the measured original)
    ratios: dict[int, float]
    predicted: float
    layer_ms: dict[str, float]
    a_ms: list[float] = field(default_factory=list)
    b_ms: list[float] = field(default_factory=list)
    sets: list[float] = field(default_factory=list)  # the median ratio of each set of rounds

    def measure(self, run: Callable[[], tuple[float, float | None]], rounds: int) -> None:
        """One set of ``rounds`` separate measurements."""
        start = len(self.a_ms)
        for _ in range(rounds):
            a, b = run()
            if b is None:
                raise TypeError("fit_latency's measure(original, pruned, inputs, ...) returned "
                                "no time for the pruned model: it must return (original_ms, "
                                "pruned_ms), as measure_pair does")
            self.a_ms.append(a)
            self.b_ms.append(b)
        self.sets.append(statistics.median(self.per_round[start:]))

    @property
    def per_round(self) -> list[float]:
        return [b / a if a > 0 else 1.0 for a, b in zip(self.a_ms, self.b_ms)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.per_round)

    @property
    def spread(self) -> float:
        r = self.per_round
        return (max(r) - min(r)) / 2

    def on_target(self, target: float, tol: float) -> bool:
        """Every set of rounds (and the pooled median) within ``tol`` of the target."""
        return all(abs(m - target) <= tol * target for m in (*self.sets, self.ratio))


def fit_latency(analysis: Analysis, scores: Mapping[int, Tensor], target: float, *,
                batch: int | None = None, threads: int | None = None,
                device: str | torch.device | None = None, round_to: int | None = None,
                max_ratio: float = 0.9, tol: float = 0.03, iterations: int = 4,
                repeat: int = 6, rounds: int = 3, warmup: int = 2, cache: Any = True,
                progress: Progress | None = None,
                measure: Callable[..., tuple[float, float | None]] | None = None,
                original: torch.nn.Module | None = None) -> LatencyFit:
    """Allocate, rewrite, time and refine until the measured latency ratio is within ``tol``
    of ``target`` (module docstring). Leaves the chosen keep-sets selected on ``analysis.gm``.

    ``repeat``: timed calls per model in one round; ``rounds``: separate measurements per set
    (a candidate on target is measured twice as many times); ``measure``: replaces
    :func:`measure_pair` (same signature), e.g. for tests. ``original``: the model whose
    time the target is a fraction of (:func:`fxprune.compress` passes the user's eager model,
    which can differ from its traced graph by a few percent); default the traced graph.
    """
    gm = analysis.gm
    ref = gm if original is None else original
    inputs = tuple(gm.meta[EXAMPLE_INPUTS])
    if batch is None:
        batch = int(inputs[0].shape[0]) if isinstance(inputs[0], Tensor) and \
            inputs[0].dim() > 0 else 1
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be an int >= 1, got {batch!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"rounds must be an int >= 1, got {rounds!r}")
    timed = tuple(_rebatch(x, batch) for x in inputs)
    table = build_table(analysis, batch=batch, threads=threads, device=device, step=round_to,
                        cache=cache, progress=progress)
    step = table.step
    measure = measure or measure_pair
    orig_ms = statistics.median(  # for the time outside the table's blocks
        measure(ref, None, timed, threads=threads, device=device, repeat=max(3, repeat // 2),
                warmup=warmup)[0] for _ in range(rounds))
    gs = UnitSteps(analysis, scores, step, max_ratio, grouped_conv_groups(table.layers))
    full_pred = sum(table.predict().values())
    rest = max(0.0, orig_ms - full_pred)
    scale = orig_ms / (full_pred + rest) if full_pred + rest > 0 else 1.0
    budget = target * (full_pred + rest)
    tries: list[_Try] = []
    log: list[dict[str, Any]] = []
    for it in range(iterations):
        kept, pred = allocate_latency(analysis, scores, table, budget, rest, step=step,
                                      max_ratio=max_ratio, groups=gs)
        ratios = {gid: (n_full - kk) / n_full for gid, kk in kept.items()
                  for n_full in (analysis.groups[gid].size,)}
        select(analysis, scores, ratios)
        pruned = rewrite(gm, check=False)
        masks = {gid: gs.mask(gid, kept[gid]) for gid in kept}
        t = _Try(budget, ratios, pred / (full_pred + rest) if full_pred + rest else 1.0,
                 {s.name: table.layer_ms(s, s.width_in(masks), s.width_out(masks))
                  for s in table.layers})

        def run(pruned: torch.nn.Module = pruned) -> tuple[float, float | None]:
            return measure(ref, pruned, timed, threads=threads, device=device, repeat=repeat,
                           warmup=warmup)

        t.measure(run, rounds)
        if t.on_target(target, tol):
            t.measure(run, rounds)  # a second, separate set must agree before we stop
        tries.append(t)
        log.append({"budget_ms": budget * scale, "predicted": t.predicted, "measured": t.ratio,
                    "spread": t.spread, "sets": list(t.sets), "rounds": len(t.a_ms),
                    "original_ms": statistics.median(t.a_ms),
                    "pruned_ms": statistics.median(t.b_ms)})
        if progress is not None:
            progress("latency search", it + 1, iterations)
        if t.on_target(target, tol):
            break
        budget = _next_budget([(x.budget, x.ratio) for x in tries], target)
    best = min(tries, key=lambda x: (abs(x.ratio - target), -len(x.a_ms)))
    select(analysis, scores, best.ratios)
    return LatencyFit(ratios=best.ratios, target=target, achieved=best.ratio,
                      predicted=best.predicted, original_ms=statistics.median(best.a_ms),
                      pruned_ms=statistics.median(best.b_ms), step=step, iterations=log,
                      layer_ms=best.layer_ms, table=table, spread=best.spread,
                      rounds=best.per_round)


def _next_budget(history: list[tuple[float, float]], target: float) -> float:
    """The next budget: interpolate between the closest tries on both sides of the target,
    else scale the last one by ``target / measured`` (damped to [0.67, 1.5])."""
    below = [h for h in history if h[1] < target]
    above = [h for h in history if h[1] > target]
    if below and above:
        (b0, r0), (b1, r1) = max(below, key=lambda h: h[1]), min(above, key=lambda h: h[1])
        return b0 + (b1 - b0) * (target - r0) / (r1 - r0)
    b, r = history[-1]
    return b * min(1.5, max(0.67, target / r)) if r > 0 else b


def _rebatch(x: Any, batch: int) -> Any:
    if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == batch:
        return x
    g = torch.Generator().manual_seed(0)
    return torch.randn((batch, *x.shape[1:]), generator=g).to(x)
