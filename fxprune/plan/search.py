"""Allocation search: which per-group ratios to use for a MACs target, chosen on data.

Uniform allocation gives every coupled group the same ratio; ``"global"`` and ``"clr"`` rank
channels across groups by weight magnitude. :func:`search_allocation` instead *measures*
candidates, as EagleEye (Li et al., ECCV 2020) does: it samples per-group ratio profiles (the
uniform one first), fits each to the target with the target search of
:mod:`fxprune.plan.target_search`, rewrites the model, recalibrates its BatchNorm statistics on
a few training batches ("adaptive BN": without it every candidate is near chance and the
ranking is noise) and keeps the candidate with the lowest loss on held-out batches.

The result is a plain ``{module: ratio}`` mapping: ``compress(model, ratios=found.ratios,
criterion=...)`` reproduces the chosen candidate, verified by the oracle like any other cut.

Reads:  the model, a criterion's scores, training batches (recalibration), held-out batches
Writes: nothing on the model; returns :class:`AllocationSearch`
"""

from __future__ import annotations

__all__ = ["AllocationSearch", "search_allocation"]

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from fxprune.core.analyze import Analysis, Progress, analyze
from fxprune.core.recalibrate import recalibrate_bn
from fxprune.core.rewrite import rewrite
from fxprune.core.trace import trace
from fxprune.errors import InputError
from fxprune.ir.inputs import check_seed
from fxprune.ir.state import untouched
from fxprune.plan.checks import check_prunable
from fxprune.plan.compress import score
from fxprune.plan.policies import Allocator, producers, scored_groups
from fxprune.plan.target_search import fit_target


@dataclass(frozen=True)
class AllocationSearch:
    """What :func:`search_allocation` found.

    Attributes:
        ratios: ``{producer module: ratio}`` of the chosen candidate, for
            ``compress(model, ratios=...)`` (or ``AllocationPlan(ratios=...)``).
        loss: the chosen candidate's held-out loss after recalibration.
        uniform_loss: the uniform candidate's (candidate 0), for comparison.
        chosen: the index of the chosen candidate (0: uniform).
        candidates: one dict per candidate: ``loss``, ``achieved`` (kept fraction of the
            MACs), ``ratios`` (``{group id: ratio}``).
        seconds: wall time of the search.
    """

    ratios: dict[str, float]
    loss: float
    uniform_loss: float
    chosen: int
    candidates: list[dict[str, Any]] = field(repr=False)
    seconds: float = 0.0


class _Profile(Allocator):
    """Uniform allocation scaled per group: group ``g`` loses ``amount * weight[g]`` (capped at
    ``max_ratio``), so one amount still maps monotonically to all ratios."""

    def __init__(self, analysis: Analysis, scores: Any, weights: dict[int, float],
                 max_ratio: float | None):
        super().__init__(analysis, scores, "uniform", max_ratio=max_ratio)
        self.weights = weights
        self.upper = self.max_ratio / min(weights.values())

    def ratios(self, amount: float) -> dict[int, float]:
        return {g.id: min(self.max_ratio, amount * self.weights[g.id]) for g in self.free}


def _cross_entropy(model: nn.Module, batches: list) -> float:
    """Mean cross-entropy of ``model`` (eval mode) over ``(inputs, labels)`` batches."""
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
                raise InputError("search_allocation: eval_data must yield (inputs, labels) "
                                 f"batches, got {type(batch).__name__}. Hint: pass loss_fn= "
                                 "for other models.")
            x, y = batch[0], batch[1]
            total += float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
            n += int(y.numel())
    return total / max(n, 1)


def _batches(data: Iterable, n: int, what: str) -> list:
    if data is None or not hasattr(data, "__iter__"):
        raise InputError(f"search_allocation: {what} must be an iterable of batches (e.g. a "
                         f"DataLoader), got {type(data).__name__}")
    out = list(itertools.islice(iter(data), n))
    if not out:
        raise InputError(f"search_allocation: {what} yielded no batches")
    return out


def _check(target_flops: Any, candidates: Any, spread: Any) -> None:
    if isinstance(target_flops, bool) or not isinstance(target_flops, (int, float)) \
            or not 0.0 < float(target_flops) < 1.0:
        raise InputError(f"search_allocation: target_flops must be a fraction of the MACs to "
                         f"keep in (0, 1), got {target_flops!r}")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise InputError(f"search_allocation: candidates must be an int >= 1, got "
                         f"{candidates!r}")
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) \
            or not 0.0 <= float(spread) < 1.0:
        raise InputError(f"search_allocation: spread must be in [0, 1), got {spread!r}")


def search_allocation(model: nn.Module, target_flops: float, *, data: Iterable,
                      eval_data: Iterable, criterion: Any = "l1", example_inputs: Any = None,
                      candidates: int = 16, spread: float = 0.5, recal_batches: int = 20,
                      eval_batches: int | None = None, max_ratio: float | None = None,
                      scoring: Any = None, seed: int = 0,
                      loss_fn: Callable[[nn.Module, list], float] | None = None,
                      progress: Progress | None = None) -> AllocationSearch:
    """Choose per-group ratios for ``target_flops`` by measuring candidates (EagleEye).

    Candidate 0 is uniform; candidate ``i > 0`` scales every group's share by a weight drawn
    uniformly from ``[1 - spread, 1 + spread]`` (seeded). Each candidate is fitted to
    ``target_flops`` (within 1%), rewritten, its BatchNorm recalibrated on the same
    ``recal_batches`` batches of ``data``, and scored by ``loss_fn`` (default: cross-entropy)
    on ``eval_batches`` batches of ``eval_data``; the lowest loss wins (uniform on a tie).

    Args:
        model: the dense model; never modified.
        target_flops: fraction of the MACs to keep, in (0, 1).
        data: training batches for the recalibration (never the test split).
        eval_data: held-out ``(inputs, labels)`` batches that rank the candidates: a validation
            split carved from the training data, never the test split.
        criterion, scoring, seed: which channels each group loses (as :func:`fxprune.compress`).
        candidates: how many profiles to measure, the uniform one included.
        spread: how far a group's share may move from uniform (0: uniform only).
        recal_batches: batches of ``data`` per recalibration.
        eval_batches: batches of ``eval_data`` (default: all).
        max_ratio: no group loses more than this fraction (default 0.9).
        loss_fn: ``(model, batches) -> float``, lower is better.
        progress: optional callback ``(stage, done, total)``.

    Example::

        >>> found = fxprune.search_allocation(model, 0.25, data=train_loader,
        ...                                   eval_data=val_loader, criterion="l2")
        >>> small = fxprune.compress(model, ratios=found.ratios, criterion="l2")
    """
    _check(target_flops, candidates, spread)
    check_seed(seed)
    if not isinstance(model, nn.Module):
        raise InputError(f"search_allocation: model must be an nn.Module, got "
                         f"{type(model).__name__}")
    t0 = time.perf_counter()
    recal = _batches(data, recal_batches, "data")
    held = _batches(eval_data, eval_batches if eval_batches is not None else 1 << 30,
                    "eval_data")
    loss_fn = loss_fn or _cross_entropy
    with untouched(model):  # a copy: the candidates' recalibration must not reach the model
        gm = trace(copy.deepcopy(model), example_inputs)
    analysis = analyze(gm)
    check_prunable(analysis)
    scores = score(analysis, criterion, data=held, seed=seed, scoring=scoring)
    groups = scored_groups(analysis)
    gen = torch.Generator().manual_seed(seed)
    found: list[dict[str, Any]] = []
    for i in range(candidates):
        if i == 0:
            weights = {g.id: 1.0 for g in groups}
        else:
            u = torch.rand(len(groups), generator=gen, dtype=torch.float64) * 2 - 1
            weights = {g.id: 1.0 + float(spread) * float(v) for g, v in zip(groups, u)}
        fit = fit_target(analysis, scores, _Profile(analysis, scores, weights, max_ratio),
                         float(target_flops), stacklevel=2)
        pruned = rewrite(analysis.gm, check=False)
        recalibrate_bn(pruned, recal, batches=len(recal))
        loss = float(loss_fn(pruned, held))
        found.append({"loss": loss if math.isfinite(loss) else math.inf,
                      "achieved": fit.achieved, "ratios": dict(fit.ratios)})
        if progress is not None:
            progress("search", i + 1, candidates)
    best = min(range(len(found)), key=lambda k: (found[k]["loss"], k))
    chosen = found[best]["ratios"]
    ratios: dict[str, float] = {}
    for g in groups:
        for name in producers(g):
            ratios[name] = min(ratios.get(name, 1.0), float(chosen.get(g.id, 0.0)))
    return AllocationSearch(ratios=ratios, loss=found[best]["loss"],
                            uniform_loss=found[0]["loss"], chosen=best, candidates=found,
                            seconds=time.perf_counter() - t0)
