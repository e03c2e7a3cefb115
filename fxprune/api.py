"""The one-call entry point, :func:`compress`, and the scoring step it shares with the CLI."""

from __future__ import annotations

__all__ = ["compress", "score", "prune_graph"]

import math
from typing import Any

import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from . import meta
from .analyze import Analysis, Progress, analyze
from .criteria import CriterionCtx, get_criterion
from .errors import InputError, VerificationError
from .rewrite import rewrite
from .select import kept_mask, select
from .trace import EXAMPLE_INPUTS, trace
from .verify import _check_inputs, verify_analyzed


def score(analysis: Analysis, criterion: Any = "l1", *, data: Any = None, seed: int = 0
          ) -> dict[int, Tensor]:
    """Score every group that has prunable units: ``{group id: Tensor[group.size]}``."""
    crit = get_criterion(criterion)
    ctx = CriterionCtx(root=analysis.gm, data=data, seed=seed)
    return {g.id: crit(g, ctx) for g in analysis.groups if g.prunable > 0 and g.size > 1}


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio):
        raise InputError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if not 0.0 <= float(ratio) < 1.0:
        raise InputError(
            f"ratio must be in [0, 1) (the fraction of channels to remove), got {ratio}. "
            "Hint: 0.5 removes half of the channels of every group; 1.0 would remove all.")
    return float(ratio)


def prune_graph(gm: fx.GraphModule, ratio: float, *, criterion: Any = "l1", ignore: Any = None,
                round_to: int | None = None, strict: bool = False, data: Any = None,
                seed: int = 0, progress: Progress | None = None) -> tuple[fx.GraphModule,
                                                                        Analysis]:
    """Analyze, score, select and rewrite a traced graph; returns (pruned, analysis)."""
    analysis = analyze(gm, ignore=ignore, strict=strict, progress=progress)
    if ratio > 0 and not any(g.prunable > 0 and g.size > 1 for g in analysis.groups):
        reasons = sorted({g.frozen_reason for g in analysis.groups if g.frozen_reason})[:5]
        raise InputError(
            "nothing to prune: every channel of this model is frozen"
            + (f" ({'; '.join(reasons)})" if reasons else "")
            + ". Hint: fxprune prunes the channels between layers (conv/linear outputs that feed"
            " other layers); a model whose every channel reaches the output or an unsupported "
            "op has none.")
    scores = score(analysis, criterion, data=data, seed=seed)
    if progress is not None:
        progress("select", 1, 1)
    select(analysis, scores, ratio, round_to=round_to)
    pruned = rewrite(gm)
    return pruned, analysis


def compress(
    model: nn.Module,
    ratio: float,
    *,
    criterion: Any = "l1",
    example_inputs: Any = None,
    ignore: Any = None,
    round_to: int | None = None,
    strict: bool = False,
    verify: bool = False,
    data: Any = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> fx.GraphModule:
    """Prune ``model`` and return a new, smaller, dense GraphModule.

    Args:
        model: any ``nn.Module`` (timm, torchvision, your own); it is never modified.
        ratio: fraction of the channels of every coupled group to remove, in [0, 1).
        criterion: a registered criterion name (``fxprune.list_criteria()``) or a function
            ``(group, ctx) -> scores``.
        example_inputs: inputs for tracing and checking (default: timm's input size, else
            ``(1, 3, 224, 224)``, on the model's device and dtype).
        ignore: modules whose output channels are kept: instances, qualified names (globs
            allowed) or types. Channels reaching the graph output are always kept.
        round_to: make every pruned group's kept width a multiple of this.
        strict: raise :class:`UnsupportedOpError` listing every op without a channel rule,
            instead of keeping their channels with a warning.
        verify: check the result against the zero-channel oracle; raises
            :class:`VerificationError` on a mismatch. The report is in ``pruned.meta``.
        data: calibration batches for data-driven criteria.
        seed: seed for randomized criteria.
        progress: optional callback ``(stage, done, total)``.

    Returns:
        A ``torch.fx.GraphModule``: train/eval, state_dict, optimizers, ``torch.save``,
        ``torch.jit.trace``, ``torch.export`` and ``torch.compile`` work on it.

    Example::

        >>> import fxprune, timm
        >>> small = fxprune.compress(timm.create_model("resnet50"), 0.5, verify=True)
    """
    ratio = _check_ratio(ratio)
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise InputError(f"round_to must be a positive int, got {round_to!r}")
    gm = trace(model, example_inputs)
    _check_inputs(model, gm.meta[EXAMPLE_INPUTS])
    pruned, analysis = prune_graph(gm, ratio, criterion=criterion, ignore=ignore,
                                   round_to=round_to, strict=strict, data=data, seed=seed,
                                   progress=progress)
    if verify:
        kept = kept_mask(analysis, gm.meta[meta.KEEPSETS])
        report = verify_analyzed(gm, analysis, kept, pruned, gm.meta[EXAMPLE_INPUTS])
        pruned.meta["fxprune.verify"] = report
        if not report.ok:
            raise VerificationError(
                f"the pruned {type(model).__name__} does not match the zero-channel oracle: "
                f"{report}. This is a bug in fxprune; please report it with the model.")
    return pruned
