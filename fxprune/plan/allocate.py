"""The one allocation plan: how much each group of channels loses.

:class:`AllocationPlan` holds the options (a ratio or a target, the policy, explicit ratios,
``max_ratio``, CLR's cost, ``round_to``) and :meth:`AllocationPlan.apply` turns them into
per-group ratios and selected keep-sets. :func:`fxprune.compress`, :class:`fxprune.SoftPruner`
(and through them the CLI) and the latency target all go through it, so a policy added here
is available to all of them.

Reads:  the analysis, per-group scores
Writes: the chosen keep-sets, selected on ``analysis.gm`` (:func:`fxprune.select`)

Where the parts live: the policies (``"uniform"``, ``"global"``, ``"clr"``, explicit
``ratios``) in :mod:`fxprune.plan.policies`, the MACs/params target search in
:mod:`fxprune.plan.target_search`, the measured latency target in
:mod:`fxprune.plan.latency_target`, the checks of the options in :mod:`fxprune.plan.checks`.
"""

from __future__ import annotations

__all__ = ["AllocationPlan", "Allotment", "allocate", "ALLOCATIONS", "ALLOCATION",
           "explicit_ratios", "layer_costs", "Allocator", "Fit", "fit_target",
           "DEFAULT_MAX_RATIO"]

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

from fxprune.core.analyze import Analysis, Progress
from fxprune.core.clr import layer_costs  # re-exported: CLR's cost factors
from fxprune.core.select import select
from fxprune.costs.latency import resolve_round_to
from fxprune.criteria import CountRule
from fxprune.ir import meta
from fxprune.plan.checks import Amount, check_amount, check_prunable
from fxprune.plan.latency_target import LatencyFit, fit_latency
from fxprune.plan.policies import (
    ALLOCATIONS,
    DEFAULT_MAX_RATIO,
    Allocator,
    explicit_ratios,
)
from fxprune.plan.target_search import Fit, fit_target

ALLOCATION = meta.ALLOCATION
# The warnings of a target that is not met name the user's line: plan.apply is called from
# prune_graph (from compress) or from SoftPruner's constructor, four frames below the user.
_USER_FRAME = 5


@dataclass(frozen=True)
class AllocationPlan:
    """How much each group of channels loses: the amount (a ratio or one target) and how it
    is spread over the groups.

    :func:`fxprune.compress` and :class:`fxprune.SoftPruner` take one as ``plan=``, and each
    field is also a keyword of theirs: ``compress(model, 0.5, allocation="global")`` is
    ``compress(model, plan=AllocationPlan(0.5, allocation="global"))``.

    Attributes:
        ratio: the amount to prune, in [0, 1): with ``allocation="uniform"`` the fraction of
            the channels of every coupled group, with ``"global"`` the fraction of all
            prunable channels (ranked across groups), with ``"clr"`` the fraction of the
            ranked layers' weights below CLR's global threshold (the authors' ``pr_target``).
            A criterion with its own rounding (``fpgm_mix``) sets the per-layer counts under
            ``"uniform"``. Leave it out with a target.
        allocation: ``"uniform"`` (default), ``"global"`` or ``"clr"``; see
            :mod:`fxprune.plan.policies`.
        ratios: explicit ratios ``{module name or glob: ratio}``; a group takes the ratio when
            all of its producer modules match; the other groups follow ``allocation``.
        max_ratio: no group loses more than this fraction of its units. Default: 0.9 under
            ``"global"`` and during a target search, no cap under ``"clr"`` (as the authors).
        target_flops: fraction of the original MACs to KEEP (e.g. 0.5); the amount is searched
            so that the MACs of the rewritten model land within 1% of it.
        target_params: the same for the parameter count.
        target_latency: fraction of the original's *measured* latency to keep (e.g. 0.5),
            timed as :class:`~fxprune.plan.options.LatencyOptions` says (see
            :mod:`fxprune.plan.latency_target`): a per-layer latency table of the device
            (measured once, cached as JSON), a greedy allocation of importance per
            millisecond, and a few measured refinements. ``round_to`` then defaults to the
            width step the table measures (an int overrides it); ``allocation`` does not
            apply. The measured ratio (``achieved``: the median over separate measurement
            rounds; ``achieved_spread``: half their range; ``achieved_rounds``) and the
            iterations are in ``pruned.meta["fxprune.allocation"]``, the predicted per-layer
            times in ``pruned.meta["fxprune.latency"]``. :func:`fxprune.compress` only.
        clr_lambda: CLR's exponent on the per-layer cost (``|w| / c_l**clr_lambda``); the
            authors used 0.5 (VGG-16), 10 (ResNet-56), 5 (ResNet-110), 0.4 (ResNet-50).
        clr_cost: ``"authors"`` (default: CLR-RNF's code — inner convs only, their cost
            factors, ``int(N(1-r))`` rounding), ``"macs"`` (fxprune's: MACs per filter, every
            group), or the authors' table itself: a sequence of costs in the ranked convs'
            graph order, or ``{module name or glob: cost}``. See :mod:`fxprune.core.clr`.
        round_to: make every pruned group's kept width a multiple of this; ``"auto"``: the
            multiple the model's device runs fastest (16 on AVX-512 CPUs, else 8; see
            :func:`fxprune.costs.latency.auto_round_to`). Recommended when latency matters:
            on an AVX-512 CPU, resnet50 at 50% MACs ran 1.57-1.59x faster without it,
            1.76-1.83x with 16 and 1.85-1.89x with 16 and ``allocation="global"`` (README,
            "Is the pruned model faster?").
    """

    ratio: float | None = None
    allocation: str = "uniform"
    ratios: Mapping[str, float] | None = None
    max_ratio: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    target_latency: float | None = None
    clr_lambda: float = 1.0
    clr_cost: Any = "authors"
    round_to: int | str | None = None

    @property
    def empty(self) -> bool:
        """Nothing was asked: no ratio, no explicit ratios, no target."""
        return (self.ratio is None and not self.ratios and self.target_flops is None
                and self.target_params is None and self.target_latency is None)

    def amount(self) -> Amount:
        """The checked amount (raises :class:`~fxprune.errors.InputError` on a ratio or target
        out of range, or two that contradict)."""
        return check_amount(self.ratio, ratios=self.ratios, target_flops=self.target_flops,
                            target_params=self.target_params,
                            target_latency=self.target_latency)

    def prunes(self) -> bool:
        """The plan removes something (a ratio > 0, explicit ratios, or a target < 1)."""
        a = self.amount()
        return a.amount > 0 or bool(self.ratios) or (a.target is not None and a.target < 1.0) \
            or (a.latency is not None and a.latency < 1.0)

    def resolved(self, model: Any = None) -> AllocationPlan:
        """This plan with ``round_to`` checked and ``"auto"`` resolved for ``model``'s device
        (with a latency target, ``"auto"`` leaves the step to the latency table)."""
        round_to = self.round_to
        if self.target_latency is not None and round_to == "auto":
            round_to = None  # the latency table measures the step
        return replace(self, round_to=resolve_round_to(round_to, model))

    def allocator(self, analysis: Analysis, scores: Mapping[int, Tensor],
                  count_rule: CountRule | None = None) -> Allocator:
        """The policy's :class:`~fxprune.plan.policies.Allocator` (explicit ``ratios`` fixed)."""
        fixed = explicit_ratios(analysis, self.ratios) if self.ratios else {}
        return Allocator(analysis, scores, self.allocation, max_ratio=self.max_ratio,
                         fixed=fixed, clr_lambda=self.clr_lambda, clr_cost=self.clr_cost,
                         count_rule=count_rule)

    def apply(self, analysis: Analysis, scores: Mapping[int, Tensor], *,
              count_rule: CountRule | None = None, progress: Progress | None = None,
              latency: Mapping[str, Any] | None = None) -> Allotment:
        """Choose every group's ratio and select its keep-set on ``analysis.gm``.

        ``scores``: :func:`fxprune.score`'s; ``count_rule``: the criterion's own rounding
        under ``"uniform"`` (``get_criterion(c).count_rule``); ``latency``: the keyword
        arguments of :func:`fxprune.plan.latency_target.fit_latency` (batch, threads,
        device...) for a ``target_latency``. Raises :class:`~fxprune.errors.InputError` on
        bad options, or when the plan prunes but every channel is frozen.
        """
        amount = self.amount()
        if self.prunes():
            check_prunable(analysis)
        round_to = resolve_round_to(self.round_to, analysis.gm)
        info: dict[str, Any] = {"allocation": self.allocation}
        if self.allocation == "clr":
            info["clr_cost"] = self.clr_cost if isinstance(self.clr_cost, str) else "given"
        alloc = self.allocator(analysis, scores, count_rule)  # checks the policy's options
        if amount.latency is not None:
            return self._latency(analysis, scores, amount.latency, round_to, info, progress,
                                 latency)
        if amount.target is not None:
            fit = fit_target(analysis, scores, alloc, amount.target, metric=amount.metric,
                             round_to=round_to, progress=progress, stacklevel=_USER_FRAME)
            info.update(amount=fit.amount, metric=amount.metric, target=amount.target,
                        achieved=fit.achieved, steps=fit.steps)
            return Allotment(fit.ratios, info)
        ratios = alloc.ratios(amount.amount)
        info.update(amount=amount.amount)
        if progress is not None:
            progress("select", 1, 1)
        select(analysis, scores, ratios, round_to=round_to)
        return Allotment(ratios, info)

    def _latency(self, analysis: Analysis, scores: Mapping[int, Tensor], target: float,
                 round_to: int | None, info: dict[str, Any], progress: Progress | None,
                 latency: Mapping[str, Any] | None) -> Allotment:
        lat: LatencyFit = fit_latency(
            analysis, scores, target, round_to=round_to,
            max_ratio=DEFAULT_MAX_RATIO if self.max_ratio is None else self.max_ratio,
            progress=progress, **dict(latency or {}))
        info.update(allocation="latency", metric="latency", target=target, achieved=lat.achieved,
                    achieved_spread=lat.spread, achieved_rounds=list(lat.rounds),
                    predicted=lat.predicted, original_ms=lat.original_ms,
                    pruned_ms=lat.pruned_ms, round_to=lat.step, iterations=lat.iterations,
                    steps=len(lat.iterations), table_s=lat.table.measured_s if lat.table
                    else 0.0, table_key=lat.table.key if lat.table else {})
        if abs(lat.achieved - target) > 0.05 * target:
            warnings.warn(
                f"target_latency={target:g} not reached: the closest model measured "
                f"{lat.achieved:.3f} of the original's time (±{lat.spread:.3f} between "
                f"measurement rounds) after {len(lat.iterations)} tries. Either the model "
                "cannot get faster at this batch on this device (fixed per-layer costs: the "
                "narrowest widths max_ratio allows set a floor), or its timing varies more than "
                "5% here. Hint: a larger batch, or more threads-to-work, makes time follow "
                "widths; the tries are in pruned.meta['fxprune.allocation']['iterations'].",
                stacklevel=_USER_FRAME + 1)
        return Allotment(dict(lat.ratios), info, dict(lat.layer_ms))


@dataclass
class Allotment:
    """What :meth:`AllocationPlan.apply` chose (its keep-sets are selected on the graph)."""

    ratios: dict[int, float]  # {group id: ratio}
    info: dict[str, Any]  # the policy, amount, target and what it achieved
    layer_ms: dict[str, float] | None = field(default=None)  # a latency target's predictions

    def record(self) -> dict[str, Any]:
        """``gm.meta["fxprune.allocation"]``: ``info`` and the per-group ratios."""
        return {**self.info, "ratios": dict(self.ratios)}


def allocate(analysis: Analysis, scores: Mapping[int, Tensor], amount: float = 0.0, *,
             allocation: str = "uniform", max_ratio: float | None = None,
             ratios: Mapping[str, float] | None = None, clr_lambda: float = 1.0,
             clr_cost: Any = "authors", count_rule: CountRule | None = None
             ) -> dict[int, float]:
    """Per-group ratios for :func:`fxprune.select` (see :mod:`fxprune.plan.policies`).

    Example::

        >>> a = fxprune.analyze(fxprune.trace(model))
        >>> s = fxprune.score(a, "l1")
        >>> fxprune.select(a, s, fxprune.allocate(a, s, 0.5, allocation="global"))
    """
    plan = AllocationPlan(allocation=allocation, max_ratio=max_ratio, ratios=ratios,
                          clr_lambda=clr_lambda, clr_cost=clr_cost)
    return plan.allocator(analysis, scores, count_rule).ratios(amount)
