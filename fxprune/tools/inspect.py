"""Inspection: what fxprune sees in a model, and what a given ratio would do to it.

:func:`inspect` traces and analyzes a model (and, with ``ratio=``, prunes a copy of its graph)
and returns an :class:`InspectReport`: the channel groups (size, kept units, members,
producers, frozen reasons), a per-layer table (channels, MACs and parameters before/after) and
totals. The report renders as text (``str(report)``), markdown or a JSON-able dict.
"""

from __future__ import annotations

__all__ = ["inspect", "InspectReport", "GroupRow", "LayerRow", "normalized_per_layer"]

import warnings
from dataclasses import asdict
from typing import Any

import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis, analyze
from fxprune.core.groups import node_group
from fxprune.core.trace import EXAMPLE_INPUTS, OPAQUE, TRACER, trace
from fxprune.costs.count import Counts, count
from fxprune.ir import meta
from fxprune.tools.report import GroupRow, InspectReport, LayerRow

_LAYER_TYPES: tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
)


def normalized_per_layer(model: nn.Module, counts: Counts) -> dict[str, dict[str, int]]:
    """``counts.per_layer`` keyed by ``named_modules()`` names, MACs and params merged.

    ``FlopCounterMode`` names modules ``"<RootClass>.sub.mod"`` while parameters are counted
    under ``"sub.mod"``; this folds both into one ``{"macs", "params"}`` dict per name (the root
    is ``""``).
    """
    root = type(model).__name__
    out: dict[str, dict[str, int]] = {}
    for name, vals in counts.per_layer.items():
        key = name
        if name == root:
            key = ""
        elif name.startswith(root + "."):
            key = name[len(root) + 1:]
        d = out.setdefault(key, {"macs": 0, "params": 0})
        d["macs"] = max(d["macs"], int(vals.get("macs", 0)))
        d["params"] = max(d["params"], int(vals.get("params", 0)))
    return out


def _channels(mod: nn.Module) -> tuple[int | None, int | None]:
    if isinstance(mod, nn.modules.conv._ConvNd):
        return int(mod.in_channels), int(mod.out_channels)
    if isinstance(mod, nn.Linear):
        return int(mod.in_features), int(mod.out_features)
    if isinstance(mod, nn.modules.batchnorm._NormBase):
        return int(mod.num_features), int(mod.num_features)
    if isinstance(mod, nn.GroupNorm):
        return int(mod.num_channels), int(mod.num_channels)
    if isinstance(mod, nn.LayerNorm):
        c = int(mod.normalized_shape[0]) if mod.normalized_shape else None
        return c, c
    return None, None


def _group_rows(analysis: Analysis, keep: dict[int, meta.KeepSet] | None) -> list[GroupRow]:
    rows = []
    for g in analysis.groups:
        kept = len(keep[g.id].indices) if keep is not None and g.id in keep else None
        if keep is not None and kept is None:
            kept = g.size
        rows.append(GroupRow(
            id=g.id, channels=g.width, units=g.size, divisor=g.divisor, kept=kept,
            prunable=g.prunable,
            members=tuple(dict.fromkeys(m.target for m in g.members)),
            producers=tuple(g.producers), frozen_units=len(g.frozen_units),
            frozen_reason=g.frozen_reason, approx=g.approx))
    return rows


def _layer_rows(gm: fx.GraphModule, analysis: Analysis, before: dict[str, dict[str, int]],
                pruned: fx.GraphModule | None, after: dict[str, dict[str, int]] | None
                ) -> list[LayerRow]:
    rows: list[LayerRow] = []
    seen: set[str] = set()
    for n in gm.graph.nodes:
        if n.op != "call_module" or n.target in seen:
            continue
        name = str(n.target)
        mod = gm.get_submodule(name)
        if not isinstance(mod, _LAYER_TYPES):
            continue
        seen.add(name)
        c_in, c_out = _channels(mod)
        b = before.get(name, {})
        params_b = b.get("params") or sum(p.numel() for p in mod.parameters())
        row = LayerRow(name=name, type=type(mod).__name__, group=node_group(analysis, n),
                       in_before=c_in, out_before=c_out, macs_before=int(b.get("macs", 0)),
                       params_before=int(params_b))
        if pruned is not None and after is not None:
            try:
                new = pruned.get_submodule(name)
            except AttributeError:
                new = None
            if new is not None:
                a_in, a_out = _channels(new)
                a = after.get(name, {})
                params_a = a.get("params") or sum(p.numel() for p in new.parameters())
                row = LayerRow(**{**asdict(row), "in_after": a_in, "out_after": a_out,
                                  "macs_after": int(a.get("macs", 0)),
                                  "params_after": int(params_a)})
            else:
                row = LayerRow(**{**asdict(row), "macs_after": 0, "params_after": 0})
        rows.append(row)
    return rows


def inspect(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    ratio: float | None = None,
    criterion: Any = "l1",
    ignore: Any = None,
    round_to: int | str | None = None,
    latency: bool = False,
    batch: int = 1,
    threads: int | None = None,
    device: Any = None,
) -> InspectReport:
    """Analyze ``model`` (and optionally prune a copy) and report groups, layers and totals.

    Unsupported ops do not raise: their channels are kept and they are listed in
    ``report.unsupported`` (the analysis warning is not repeated).

    Args:
        model: any ``nn.Module``; it is never modified.
        example_inputs: inputs for tracing and counting (default as in :func:`fxprune.trace`).
        ratio: if given, prune a copy of the graph at this ratio (as :func:`fxprune.compress`
            does with its default uniform allocation) and report kept units and after-values.
        criterion: criterion name or function, used with ``ratio``.
        ignore: modules whose output channels are kept (as in :func:`fxprune.compress`).
        round_to: make every pruned group's kept width a multiple of this (or ``"auto"``).
        latency: also report each conv/linear block's predicted time (the latency table of
            :mod:`fxprune.costs.latency.table`, measured once and cached) and its time measured
            alone at its (pruned) widths, at ``batch`` with ``threads`` on ``device``.

    Returns:
        An :class:`InspectReport`.

    Example::

        >>> import fxprune, timm
        >>> print(fxprune.inspect(timm.create_model("resnet18"), ratio=0.5))
    """
    from fxprune.core.rewrite import rewrite
    from fxprune.core.select import select
    from fxprune.costs.latency import resolve_round_to
    from fxprune.plan.checks import check_ratio
    from fxprune.plan.compress import score

    if ratio is not None:
        ratio = check_ratio(ratio)
    round_to = resolve_round_to(round_to, model)
    gm = trace(model, example_inputs)
    inputs = gm.meta[EXAMPLE_INPUTS]
    pruned: fx.GraphModule | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unsupported ops: listed in the report
        analysis = analyze(gm, ignore=ignore)
    if ratio is not None:  # compress's uniform policy; a fully frozen model keeps everything
        select(analysis, score(analysis, criterion), ratio, round_to=round_to)
        pruned = rewrite(gm)
    keep = gm.meta.get(meta.KEEPSETS) if pruned is not None else None
    c_before = count(gm, inputs)
    before = normalized_per_layer(gm, c_before)
    c_after = after = None
    if pruned is not None:
        c_after = count(pruned, inputs)
        after = normalized_per_layer(pruned, c_after)
    layers = _layer_rows(gm, analysis, before, pruned, after)
    if latency:
        from fxprune.costs.latency.profile import layer_times

        times = layer_times(analysis, keep, batch=batch, threads=threads, device=device)
        layers = [LayerRow(**{**asdict(r), **times.get(r.name, {})}) for r in layers]
    crit_name = None
    if pruned is not None:
        crit_name = criterion if isinstance(criterion, str) else getattr(
            criterion, "name", getattr(criterion, "__name__", "custom"))
    return InspectReport(
        model=type(model).__name__,
        input_shapes=[list(x.shape) for x in inputs if isinstance(x, Tensor)],
        ratio=ratio,
        criterion=crit_name,
        groups=_group_rows(analysis, keep),
        layers=layers,
        macs_before=c_before.macs,
        params_before=c_before.params,
        macs_after=c_after.macs if c_after is not None else None,
        params_after=c_after.params if c_after is not None else None,
        unsupported={k: list(v) for k, v in analysis.unsupported.items()},
        opaque=dict(gm.meta.get(OPAQUE) or {}),
        tracer=gm.meta.get(TRACER, "symbolic"),
        analysis=analysis,
    )

