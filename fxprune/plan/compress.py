"""The one-call entry point, :func:`compress`, and the steps it shares with the CLI.

:func:`prune_graph` runs analyze → score → the allocation plan (:mod:`fxprune.plan.allocate`:
ratios, then select) → rewrite on a traced graph; :func:`compress` traces first and optionally
verifies. Their options come grouped (:class:`~fxprune.plan.allocate.AllocationPlan`,
:mod:`fxprune.plan.options`), or as keywords of the same names.
"""

from __future__ import annotations

__all__ = ["compress", "score", "prune_graph"]

import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis, Progress, analyze
from fxprune.core.recalibrate import recalibrate_bn
from fxprune.core.reconstruct import reconstruct as reconstruct_layers
from fxprune.core.rewrite import rewrite
from fxprune.core.select import kept_mask
from fxprune.core.trace import EXAMPLE_INPUTS, OPAQUE, trace
from fxprune.core.verify import verify_analyzed
from fxprune.criteria import CriterionCtx, get_criterion
from fxprune.criteria.scoring import GroupScoring
from fxprune.errors import InputError, TraceFailure, VerificationError
from fxprune.ir import meta
from fxprune.ir.inputs import check_flags, check_not_scripted, check_seed, positional_inputs
from fxprune.ir.state import untouched
from fxprune.plan.allocate import ALLOCATION, AllocationPlan
from fxprune.plan.checks import check_inputs, check_prunable, check_ratio
from fxprune.plan.keep_class import prune_keeping_class
from fxprune.plan.options import (
    AnalysisOptions,
    LatencyOptions,
    VerifyOptions,
    route_keywords,
    with_keywords,
)
from fxprune.plan.regions import REGIONS, prune_opaque_root, prune_regions

#: ``pruned.meta`` key: the batches :func:`compress` recalibrated BatchNorm on.
RECALIBRATED = "fxprune.recalibrated"


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


def _option(owner: str, name: str, value: Any, cls: type) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise InputError(f"{owner}: {name}= must be {article} {cls.__name__}, got "
                         f"{type(value).__name__}. Hint: {name}={cls.__name__}(...), or give "
                         "its fields as keywords.")
    return value


def _grouped(owner: str, ratio: Any, keywords: Mapping[str, Any], **objects: Any
             ) -> dict[str, Any]:
    """The option objects of ``owner`` (``{keyword: (class, value)}`` in ``objects``) with the
    keywords of their fields, and ``ratio``, merged in."""
    classes = {name: cls for name, (cls, _) in objects.items()}
    given = route_keywords(owner, keywords, classes, skip=("ratio", "oracle"))
    if ratio is not None:
        given["plan"]["ratio"] = ratio
    return {name: with_keywords(_option(owner, name, value, cls), given[name], owner)
            for name, (cls, value) in objects.items()}


def prune_graph(gm: fx.GraphModule, ratio: float | None = None, *, criterion: Any = "l1",
                plan: AllocationPlan | None = None, analysis: AnalysisOptions | None = None,
                latency: LatencyOptions | Mapping[str, Any] | None = None,
                check: bool | str = True, data: Any = None, seed: int = 0,
                progress: Progress | None = None, **keywords: Any
                ) -> tuple[fx.GraphModule, Analysis]:
    """Analyze, score, allocate, select and rewrite a traced graph; returns (pruned, analysis).

    The arguments are those of :func:`compress` (``latency``: a
    :class:`~fxprune.plan.options.LatencyOptions` or the keyword arguments of
    :func:`fxprune.plan.latency_target.fit_latency`: batch, threads, device...; ``keywords``:
    the fields of ``plan`` and ``analysis``). The graph is analyzed and scored once; a
    ``target_flops``/``target_params``/``target_latency`` search then only re-runs select +
    rewrite (and, for latency, a timing) per step.
    """
    opts = _grouped("prune_graph", ratio, keywords, plan=(AllocationPlan, plan),
                    analysis=(AnalysisOptions, analysis))
    plan, graph = opts["plan"], opts["analysis"]
    plan.amount()  # the amount's errors come before the analysis
    if plan.empty:
        raise InputError("nothing to do: give ratio=, ratios={...}, target_flops= or "
                         "target_params=. Hint: compress(model, 0.5) removes half of the "
                         "channels of every group.")
    result = analyze(gm, ignore=graph.ignore, strict=graph.strict, residual=graph.residual,
                     attention=graph.attention, progress=progress,
                     equal_chunks=graph.keep_class)
    if plan.prunes():
        check_prunable(result)
    scores = score(result, criterion, data=data, seed=seed, scoring=graph.scoring)
    if isinstance(latency, LatencyOptions):
        latency = latency.kwargs()
    chosen = plan.apply(result, scores, count_rule=get_criterion(criterion).count_rule,
                        progress=progress, latency=latency)
    pruned = rewrite(gm, check=check)
    pruned.meta[ALLOCATION] = chosen.record()
    if chosen.layer_ms is not None:
        pruned.meta[meta.LATENCY] = dict(chosen.layer_ms)
    return pruned, result


def compress(model: nn.Module, ratio: float | None = None, *, criterion: Any = "l1",
             example_inputs: Any = None, plan: AllocationPlan | None = None,
             analysis: AnalysisOptions | None = None, latency: LatencyOptions | None = None,
             verify: bool | VerifyOptions = True, data: Any = None, seed: int = 0,
             recalibrate: int = 0, reconstruct: int = 0, progress: Progress | None = None,
             **keywords: Any) -> fx.GraphModule:
    """Prune ``model`` and return a new, smaller, dense GraphModule (with ``keep_class=True``:
    a copy of the model's own class with the pruned layers in it).

    The options come in groups, each a dataclass with defaults; every field of a group is
    also a keyword of its own name, so ``compress(model, 0.5, allocation="global",
    round_to=8, residual="scatter", verify=False)`` and ``compress(model,
    plan=AllocationPlan(0.5, allocation="global", round_to=8),
    analysis=AnalysisOptions(residual="scatter"), verify=VerifyOptions(oracle=False))`` are
    the same call. An option given both ways with two values raises :class:`InputError`.

    Args:
        model: any ``nn.Module`` (timm, torchvision, your own); it is never modified.
        ratio: the amount to prune, in [0, 1) (``AllocationPlan.ratio``: with
            ``allocation="uniform"`` the fraction of the channels of every coupled group);
            leave it out with a target.
        criterion: a registered criterion name (``fxprune.list_criteria()``) or a function
            ``(group, ctx) -> scores``.
        example_inputs: inputs for tracing and checking: a tensor, a tuple of ``forward``'s
            positional arguments, or a dict of its keyword arguments (``model(**inputs)``)
            (default: timm's input size, else ``(1, 3, 224, 224)``, on the model's device and
            dtype).
        plan: how much each group loses, an :class:`~fxprune.AllocationPlan`: ``ratio``,
            ``allocation``, ``ratios``, ``max_ratio``, ``target_flops``, ``target_params``,
            ``target_latency``, ``clr_lambda``, ``clr_cost``, ``round_to``.
        analysis: how the graph is read and scored, an :class:`~fxprune.AnalysisOptions`:
            ``ignore``, ``strict``, ``residual``, ``attention``, ``scoring`` (group scores,
            e.g. ``scoring="all"``: :class:`~fxprune.GroupScoring`), ``keep_class``
            (return a copy of the model's own class, :func:`fxprune.graft`; chunk pieces
            stay equal, modules whose code reads their widths are kept, listed in
            ``result.fxprune_meta["fxprune.kept"]``).
        latency: how a ``target_latency`` is timed, a :class:`~fxprune.LatencyOptions`:
            ``batch``, ``threads``, ``device``.
        verify: ``True`` (default) checks the result against the zero-channel oracle and
            raises :class:`VerificationError` unless the verdict is ``exact`` or
            ``approximate``; the report is in ``pruned.meta["fxprune.verify"]``. ``False``
            skips it (see the README for the measured cost). A
            :class:`~fxprune.VerifyOptions` also sets the rewrite's ``check``.
        data: calibration batches for data-driven criteria, and for ``reconstruct`` and
            ``recalibrate``: an iterable of batches of training data (never the test split).
        seed: seed for randomized criteria.
        recalibrate: after the rewrite (and after the oracle, which checks the structure on
            the statistics the rewrite copied), recompute every BatchNorm's running
            statistics of the pruned model on ``recalibrate`` batches of ``data``
            (:func:`fxprune.recalibrate_bn`); the number of batches used is in
            ``pruned.meta["fxprune.recalibrated"]``. Default 0: no recalibration.
        reconstruct: after the oracle and before ``recalibrate``, refit every layer whose
            input channels were cut to the original model's outputs on ``reconstruct``
            batches of ``data`` (:func:`fxprune.reconstruct`: least squares, layer by layer);
            the per-layer errors are in ``pruned.meta["fxprune.reconstructed"]``. Default 0:
            the weights are the original's, sliced.
        progress: optional callback ``(stage, done, total)``.
        **keywords: any field of ``plan``, ``analysis``, ``latency`` or ``verify``
            (``check``) by name.

    Returns:
        A ``torch.fx.GraphModule``: train/eval, state_dict, optimizers, ``torch.save``,
        ``torch.jit.trace``, ``torch.export`` and ``torch.compile`` work on it. The chosen
        per-group ratios (and the achieved target) are in ``pruned.meta["fxprune.allocation"]``.
        With ``keep_class=True``: a copy of ``model``'s class (its ``forward``, its
        attributes), the GraphModule's metadata as plain data in ``pruned.fxprune_meta``
        (the oracle's report as a dict of its fields, no example inputs).

    Example::

        >>> import fxprune, timm
        >>> small = fxprune.compress(timm.create_model("resnet50"), 0.5)  # verified
        >>> half = fxprune.compress(timm.create_model("resnet50"), target_flops=0.5,
        ...                         allocation="global", criterion="fpgm")
    """
    if not isinstance(verify, VerifyOptions):
        verify = VerifyOptions(oracle=verify)  # type: ignore[arg-type]
    opts = _grouped("compress", ratio, keywords, plan=(AllocationPlan, plan),
                    analysis=(AnalysisOptions, analysis), latency=(LatencyOptions, latency),
                    verify=(VerifyOptions, verify))
    plan, graph, timing, checks = opts["plan"], opts["analysis"], opts["latency"], opts["verify"]
    check_flags(strict=graph.strict, verify=checks.oracle)
    check_not_scripted(model)
    check_seed(seed)
    GroupScoring.parse(graph.scoring)  # its errors come before tracing
    for name, batches in (("reconstruct", reconstruct), ("recalibrate", recalibrate)):
        _check_batches(name, batches, data)
    plan = plan.resolved(model)
    if plan.ratio is not None:
        plan = replace(plan, ratio=check_ratio(plan.ratio))
    if graph.keep_class:
        def prune(ignore: Any) -> nn.Module:  # traced in eval mode: predict's branches
            with untouched(model, eval_mode=True):
                return _prune_model(model, example_inputs, criterion, plan,
                                    replace(graph, ignore=ignore), timing, checks, data, seed,
                                    progress)

        return _recalibrated(prune_keeping_class(model, prune, graph.ignore), model, data,
                             reconstruct, recalibrate, seed)
    return _recalibrated(_prune_model(model, example_inputs, criterion, plan, graph, timing,
                                      checks, data, seed, progress), model, data, reconstruct,
                         recalibrate, seed)


def _prune_model(model: nn.Module, example_inputs: Any, criterion: Any, plan: AllocationPlan,
                 graph: AnalysisOptions, timing: LatencyOptions, checks: VerifyOptions,
                 data: Any, seed: int, progress: Progress | None) -> nn.Module:
    """Trace, prune, check with the oracle, prune inside opaque modules: :func:`compress`
    after its options are merged and checked."""
    # The oracle runs the pruned model and compares its output shapes too: with verify=True,
    # check=True's forward pass is left to it, and the rewrite's check runs only to name the
    # failing node when the pruned model fails or has other output shapes.
    fold = bool(checks.oracle) and checks.check is True
    with untouched(model):  # whatever the model's forward does, the user's model is restored
        try:
            gm = trace(model, example_inputs)
        except TraceFailure as e:  # its own forward cannot be traced: prune its children
            if plan.ratio is None or example_inputs is None:
                raise
            return prune_opaque_root(
                model, positional_inputs(model, example_inputs),
                _region_options(criterion, plan, graph, checks, seed), str(e), compress)
        check_inputs(model, gm.meta[EXAMPLE_INPUTS])
        pruned, result = prune_graph(
            gm, criterion=criterion, plan=plan, analysis=graph,
            latency={**timing.kwargs(), "original": model},
            check=False if fold else checks.check, data=data, seed=seed, progress=progress)
        if checks.oracle:
            _oracle(model, gm, result, pruned, fold)
        if gm.meta.get(OPAQUE) and plan.ratio is not None:  # prune inside the opaque modules
            pruned.meta[REGIONS] = prune_regions(
                model, pruned, gm.meta[OPAQUE], gm.meta[EXAMPLE_INPUTS],
                _region_options(criterion, plan, graph, checks, seed), compress)
    return pruned


def _check_batches(name: str, batches: Any, data: Any) -> None:
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise InputError(f"compress: {name} must be an int >= 0 (batches), got {batches!r}")
    if batches and data is None:
        raise InputError(f"compress: {name}={batches} needs data= (batches of "
                         f"training data). Hint: compress(model, 0.5, data=train_loader, "
                         f"{name}={batches or 8}).")


def _recalibrated(pruned: Any, model: nn.Module, data: Any, reconstruct: int,
                  recalibrate: int, seed: int) -> Any:
    """``pruned`` with its cut layers refitted to ``model`` on ``reconstruct`` batches of
    ``data``, then BatchNorm recalibrated on ``recalibrate`` batches (each if > 0), after the
    oracle has checked it."""
    if reconstruct:
        reconstruct_layers(pruned, model, data, batches=reconstruct, seed=seed)
    if recalibrate:
        meta.record_of(pruned)[RECALIBRATED] = recalibrate_bn(pruned, data,
                                                              batches=recalibrate)
    return pruned


def _region_options(criterion: Any, plan: AllocationPlan, graph: AnalysisOptions,
                   checks: VerifyOptions, seed: int) -> dict[str, Any]:
    """What each opaque region's own :func:`compress` gets: the same criterion, ratio and
    policies as the whole model."""
    return dict(ratio=plan.ratio, criterion=criterion, round_to=plan.round_to,
                verify=checks.oracle, seed=seed, allocation=plan.allocation,
                max_ratio=plan.max_ratio, residual=graph.residual, attention=graph.attention,
                scoring=graph.scoring)


def _oracle(model: nn.Module, gm: fx.GraphModule, analysis: Analysis, pruned: fx.GraphModule,
            fold: bool) -> None:
    """Check ``pruned`` against the zero-channel oracle; the report goes to its meta."""
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
            "fxprune.verify(model, pruned, example_inputs).", stacklevel=3)
    if not report.ok:
        raise VerificationError(
            f"the pruned {type(model).__name__} does not pass the oracle: {report}. "
            "This is a bug in fxprune; please report it with the model. Hint: "
            "ignore=[...] for the modules around the op keeps their channels meanwhile.")
