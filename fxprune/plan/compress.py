"""The one-call entry point, :func:`compress`, and the steps it shares with the CLI.

:func:`prune_graph` runs analyze → score → allocate (:mod:`fxprune.plan.allocate`) → select →
rewrite on a traced graph; :func:`compress` traces first and optionally verifies.
"""

from __future__ import annotations

__all__ = ["compress", "score", "prune_graph"]

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis, Progress, analyze
from fxprune.core.rewrite import rewrite
from fxprune.core.select import kept_mask, select
from fxprune.core.trace import EXAMPLE_INPUTS, trace
from fxprune.core.verify import _check_inputs, verify_analyzed
from fxprune.costs.latency import resolve_round_to
from fxprune.criteria import CriterionCtx, get_criterion
from fxprune.criteria.scoring import GroupScoring
from fxprune.errors import InputError, VerificationError
from fxprune.ir import meta
from fxprune.ir.inputs import check_flags, check_not_scripted, check_seed
from fxprune.ir.state import untouched
from fxprune.plan.allocate import ALLOCATION, Allocator, explicit_ratios, fit_target


def score(analysis: Analysis, criterion: Any = "l1", *, data: Any = None, seed: int = 0,
          scoring: Any = None) -> dict[int, Tensor]:
    """Score every group that has prunable units: ``{group id: Tensor[group.size]}``.

    ``scoring``: which slices magnitude criteria read and how they combine, a
    :class:`~fxprune.criteria.scoring.GroupScoring` or ``"members[/normalize[/reduction]]"``
    (default: the producers' filters, mean-normalized, averaged)."""
    crit = get_criterion(criterion)
    ctx = CriterionCtx(root=analysis.gm, data=data, seed=check_seed(seed),
                       scoring=GroupScoring.parse(scoring))
    return {g.id: crit(g, ctx) for g in analysis.groups if g.prunable > 0 and g.size > 1}


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio):
        raise InputError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if not 0.0 <= float(ratio) < 1.0:
        raise InputError(
            f"ratio must be in [0, 1) (the fraction of channels to remove), got {ratio}. "
            "Hint: 0.5 removes half of the channels of every group; 1.0 would remove all.")
    return float(ratio)


def _check_target(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or not 0.0 < float(value) <= 1.0:
        raise InputError(
            f"{name} must be the fraction of the original to KEEP, in (0, 1], got {value!r}. "
            f"Hint: {name}=0.5 keeps half.")
    return float(value)


def prune_graph(gm: fx.GraphModule, ratio: float | None = None, *, criterion: Any = "l1",
                ignore: Any = None, round_to: int | None = None, strict: bool = False,
                data: Any = None, seed: int = 0, progress: Progress | None = None,
                allocation: str = "uniform", max_ratio: float | None = None,
                ratios: Mapping[str, float] | None = None, target_flops: float | None = None,
                target_params: float | None = None, clr_lambda: float = 1.0,
                residual: str = "coupled", check: bool | str = True, clr_cost: Any = "authors",
                target_latency: float | None = None, latency: Mapping[str, Any] | None = None,
                attention: str = "dims") -> tuple[fx.GraphModule, Analysis]:
    """Analyze, score, allocate, select and rewrite a traced graph; returns (pruned, analysis).

    The arguments are those of :func:`compress` (``latency``: the keyword arguments of
    :func:`fxprune.plan.latency_target.fit_latency`: batch, threads, device...). The graph is
    analyzed and scored once; a ``target_flops``/``target_params``/``target_latency`` search
    then only re-runs select + rewrite (and, for latency, a timing) per step.
    """
    t_lat = _check_target("target_latency", target_latency)
    if t_lat is not None and (target_flops is not None or target_params is not None
                              or ratio is not None or ratios):
        raise InputError("target_latency chooses every group's width from measured time: give "
                         "it alone, without ratio, ratios, target_flops or target_params")
    target = _check_target("target_flops", target_flops)
    t_params = _check_target("target_params", target_params)
    if target is not None and t_params is not None:
        raise InputError("give target_flops or target_params, not both")
    metric = "macs" if target is not None else "params"
    target = target if target is not None else t_params
    if target is not None and ratio is not None:
        raise InputError(f"give ratio or target_{'flops' if metric == 'macs' else 'params'}, "
                         "not both: the target search chooses the ratio")
    if ratio is None and target is None and not ratios and t_lat is None:
        raise InputError("nothing to do: give ratio=, ratios={...}, target_flops= or "
                         "target_params=. Hint: compress(model, 0.5) removes half of the "
                         "channels of every group.")
    amount = 0.0 if ratio is None else _check_ratio(ratio)
    analysis = analyze(gm, ignore=ignore, strict=strict, residual=residual, attention=attention,
                       progress=progress)
    wants = amount > 0 or bool(ratios) or (target is not None and target < 1.0) or \
        (t_lat is not None and t_lat < 1.0)
    if wants and not any(g.prunable > 0 and g.size > 1 for g in analysis.groups):
        reasons = sorted({g.frozen_reason for g in analysis.groups if g.frozen_reason})[:5]
        raise InputError(
            "nothing to prune: every channel of this model is frozen"
            + (f" ({'; '.join(reasons)})" if reasons else "")
            + ". Hint: fxprune prunes the channels between layers (conv/linear outputs that feed"
            " other layers); a model whose every channel reaches the output or an unsupported "
            "op has none.")
    scores = score(analysis, criterion, data=data, seed=seed)
    fixed = explicit_ratios(analysis, ratios) if ratios else {}
    alloc = Allocator(analysis, scores, allocation, max_ratio=max_ratio, fixed=fixed,
                      clr_lambda=clr_lambda, clr_cost=clr_cost,
                      count_rule=get_criterion(criterion).count_rule)
    info: dict[str, Any] = {"allocation": allocation}
    layer_ms = None
    if allocation == "clr":
        info["clr_cost"] = clr_cost if isinstance(clr_cost, str) else "given"
    if t_lat is not None:
        from fxprune.plan.latency_target import fit_latency

        lat = fit_latency(analysis, scores, t_lat, round_to=round_to,
                          max_ratio=0.9 if max_ratio is None else max_ratio,
                          progress=progress, **dict(latency or {}))
        per_group = lat.ratios
        layer_ms = lat.layer_ms
        info.update(allocation="latency", metric="latency", target=t_lat, achieved=lat.achieved,
                    achieved_spread=lat.spread, achieved_rounds=list(lat.rounds),
                    predicted=lat.predicted, original_ms=lat.original_ms,
                    pruned_ms=lat.pruned_ms, round_to=lat.step, iterations=lat.iterations,
                    steps=len(lat.iterations), table_s=lat.table.measured_s if lat.table
                    else 0.0, table_key=lat.table.key if lat.table else {})
        if abs(lat.achieved - t_lat) > 0.05 * t_lat:
            warnings.warn(
                f"target_latency={t_lat:g} not reached: the closest model measured "
                f"{lat.achieved:.3f} of the original's time (±{lat.spread:.3f} between "
                f"measurement rounds) after {len(lat.iterations)} tries. Either the model "
                "cannot get faster at this batch on this device (fixed per-layer costs: the "
                "narrowest widths max_ratio allows set a floor), or its timing varies more than "
                "5% here. Hint: a larger batch, or more threads-to-work, makes time follow "
                "widths; the tries are in pruned.meta['fxprune.allocation']['iterations'].",
                stacklevel=3)
    elif target is not None:
        fit = fit_target(analysis, scores, alloc, target, metric=metric, round_to=round_to,
                         progress=progress)
        per_group = fit.ratios
        info.update(amount=fit.amount, metric=metric, target=target, achieved=fit.achieved,
                    steps=fit.steps)
    else:
        per_group = alloc.ratios(amount)
        info.update(amount=amount)
        if progress is not None:
            progress("select", 1, 1)
        select(analysis, scores, per_group, round_to=round_to)
    pruned = rewrite(gm, check=check)
    pruned.meta[ALLOCATION] = {**info, "ratios": dict(per_group)}
    if layer_ms is not None:
        pruned.meta[meta.LATENCY] = dict(layer_ms)
    return pruned, analysis


def compress(
    model: nn.Module,
    ratio: float | None = None,
    *,
    criterion: Any = "l1",
    example_inputs: Any = None,
    ignore: Any = None,
    round_to: int | str | None = None,
    strict: bool = False,
    verify: bool = True,
    data: Any = None,
    seed: int = 0,
    progress: Progress | None = None,
    allocation: str = "uniform",
    max_ratio: float | None = None,
    ratios: Mapping[str, float] | None = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    clr_lambda: float = 1.0,
    residual: str = "coupled",
    check: bool | str = True,
    clr_cost: Any = "authors",
    target_latency: float | None = None,
    batch: int | None = None,
    threads: int | None = None,
    device: Any = None,
    attention: str = "dims",
) -> fx.GraphModule:
    """Prune ``model`` and return a new, smaller, dense GraphModule.

    Args:
        model: any ``nn.Module`` (timm, torchvision, your own); it is never modified.
        ratio: the amount to prune, in [0, 1): with ``allocation="uniform"`` the fraction of
            the channels of every coupled group, with ``"global"`` the fraction of all
            prunable channels (ranked across groups), with ``"clr"`` the fraction of the
            ranked layers' weights below CLR's global threshold (the authors' ``pr_target``).
            A criterion with its own rounding (``fpgm_mix``) sets the per-layer counts under
            ``"uniform"``. Leave it out with a target.
        criterion: a registered criterion name (``fxprune.list_criteria()``) or a function
            ``(group, ctx) -> scores``.
        example_inputs: inputs for tracing and checking: a tensor, a tuple of ``forward``'s
            positional arguments, or a dict of its keyword arguments (``model(**inputs)``)
            (default: timm's input size, else ``(1, 3, 224, 224)``, on the model's device and
            dtype).
        ignore: modules whose output channels are kept: instances, qualified names (globs
            allowed) or types. Channels reaching the graph output are always kept.
        round_to: make every pruned group's kept width a multiple of this; ``"auto"``: the
            multiple the model's device runs fastest (16 on AVX-512 CPUs, else 8; see
            :func:`fxprune.costs.latency.auto_round_to`). Recommended when latency matters: on an
            AVX-512 CPU, resnet50 at 50% MACs ran 1.57-1.59x faster without it, 1.76-1.83x
            with 16 and 1.85-1.89x with 16 and ``allocation="global"`` (README, "Is the
            pruned model faster?").
        strict: raise :class:`UnsupportedOpError` listing every op without a channel rule,
            instead of keeping their channels with a warning.
        verify: ``True`` (default) checks the result against the zero-channel oracle (one
            more forward pass of the original and of the pruned model) and raises
            :class:`VerificationError` unless the verdict is ``exact`` or ``approximate``
            (structure verified exactly); the report is in ``pruned.meta["fxprune.verify"]``.
            ``False`` skips it (see the README for the measured cost).
        data: calibration batches for data-driven criteria.
        seed: seed for randomized criteria.
        progress: optional callback ``(stage, done, total)``.
        allocation: ``"uniform"`` (default), ``"global"`` or ``"clr"``; see
            :mod:`fxprune.plan.allocate`.
        max_ratio: no group loses more than this fraction of its units. Default: 0.9 under
            ``"global"`` and during a target search, no cap under ``"clr"`` (as the authors).
        ratios: explicit ratios ``{module name or glob: ratio}``; a group takes the ratio when
            all of its producer modules match; the other groups follow ``allocation``.
        target_flops: fraction of the original MACs to KEEP (e.g. 0.5); the amount is searched
            so that the MACs of the rewritten model land within 1% of it.
        target_params: the same for the parameter count.
        clr_lambda: CLR's exponent on the per-layer cost (``|w| / c_l**clr_lambda``); the
            authors used 0.5 (VGG-16), 10 (ResNet-56), 5 (ResNet-110), 0.4 (ResNet-50).
        clr_cost: ``"authors"`` (default: CLR-RNF's code — inner convs only, their cost
            factors, ``int(N(1-r))`` rounding), ``"macs"`` (fxprune's: MACs per filter, every
            group), or the authors' table itself: a sequence of costs in the ranked convs'
            graph order, or ``{module name or glob: cost}``. See :mod:`fxprune.core.clr`.
        residual: ``"coupled"`` (default: one keep-set per residual group, the stream
            narrows) or ``"scatter"`` (the SFP/FPGM convention: every residual-output conv
            keeps its own channels and is ``index_add``-ed into a full-width stream, with the
            BatchNorm constants of its removed channels folded in; exact).
        check: the rewrite's postcondition (see :func:`fxprune.rewrite`): ``True`` runs the
            pruned module once and checks its output shapes (with ``verify=True`` the oracle's
            run of the pruned model does that; the node-by-node check then runs only to name
            a failing node), ``"nodes"`` checks every node's shape, ``False`` skips it.
        target_latency: fraction of the original's *measured* latency to keep (e.g. 0.5), on
            ``device`` at ``batch`` with ``threads`` (see :mod:`fxprune.plan.latency_target`): a
            per-layer latency table of the device (measured once, cached as JSON), a greedy
            allocation of importance per millisecond, and a few measured refinements.
            ``round_to`` then defaults to the width step the table measures (an int
            overrides it); ``allocation`` does not apply. The measured ratio (``achieved``:
            the median over separate measurement rounds; ``achieved_spread``: half their
            range; ``achieved_rounds``) and the iterations are in
            ``pruned.meta["fxprune.allocation"]``, the predicted
            per-layer times in ``pruned.meta["fxprune.latency"]``.
        batch: batch size to time at with ``target_latency`` (default: the example's).
        threads: torch threads to time with (default: the current count).
        device: device to time on (default: the model's).
        attention: how attention is pruned (:mod:`fxprune.rules.attention`): ``"dims"``
            (default: every head keeps its place and loses the same dims; q and k share
            them) or ``"heads"`` (whole heads are removed, their q/k/v rows together).
            Either way the embed dim is pruned through the residual stream and its
            LayerNorms (approximate) and the MLP hidden widths like any Linear.

    Returns:
        A ``torch.fx.GraphModule``: train/eval, state_dict, optimizers, ``torch.save``,
        ``torch.jit.trace``, ``torch.export`` and ``torch.compile`` work on it. The chosen
        per-group ratios (and the achieved target) are in ``pruned.meta["fxprune.allocation"]``.

    Example::

        >>> import fxprune, timm
        >>> small = fxprune.compress(timm.create_model("resnet50"), 0.5)  # verified
        >>> half = fxprune.compress(timm.create_model("resnet50"), target_flops=0.5,
        ...                         allocation="global", criterion="fpgm")
    """
    check_flags(strict=strict, verify=verify)
    check_not_scripted(model)
    check_seed(seed)
    if target_latency is not None and round_to == "auto":
        round_to = None  # the latency table measures the step
    round_to = resolve_round_to(round_to, model)
    if ratio is not None:
        ratio = _check_ratio(ratio)
    # The oracle runs the pruned model and compares its output shapes too: with verify=True,
    # check=True's forward pass is left to it, and the rewrite's check runs only to name the
    # failing node when the pruned model fails or has other output shapes.
    fold = bool(verify) and check is True
    with untouched(model):  # whatever the model's forward does, the user's model is restored
        gm = trace(model, example_inputs)
        _check_inputs(model, gm.meta[EXAMPLE_INPUTS])
        pruned, analysis = prune_graph(
            gm, ratio, criterion=criterion, ignore=ignore, round_to=round_to, strict=strict,
            data=data, seed=seed, progress=progress, allocation=allocation,
            max_ratio=max_ratio, ratios=ratios, target_flops=target_flops,
            target_params=target_params, clr_lambda=clr_lambda, residual=residual,
            check=False if fold else check, clr_cost=clr_cost, target_latency=target_latency,
            latency={"batch": batch, "threads": threads, "device": device, "original": model},
            attention=attention)
        if verify:
            kept = kept_mask(analysis, gm.meta[meta.KEEPSETS])
            try:
                report = verify_analyzed(gm, analysis, kept, pruned, gm.meta[EXAMPLE_INPUTS])
            except Exception:
                if fold:
                    rewrite(gm, check=True)  # raises a RewriteError naming the node
                raise
            if fold and report.kind == "shape_mismatch":
                rewrite(gm, check=True)
            pruned.meta[meta.VERIFY] = report
            if report.ok and report.vacuous:
                warnings.warn(
                    f"the oracle's check of the pruned {type(model).__name__} is vacuous: "
                    f"{report.vacuous}, so any model emitting the same would pass. Hint: verify "
                    "with trained weights or other example inputs (two or more samples), e.g. "
                    "fxprune.verify(model, pruned, example_inputs).", stacklevel=2)
            if not report.ok:
                raise VerificationError(
                    f"the pruned {type(model).__name__} does not pass the oracle: {report}. "
                    "This is a bug in fxprune; please report it with the model. Hint: "
                    "ignore=[...] for the modules around the op keeps their channels meanwhile.")
    return pruned
