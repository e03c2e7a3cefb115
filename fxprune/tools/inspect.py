"""Inspection: what fxprune sees in a model, and what a given ratio would do to it.

:func:`inspect` traces and analyzes a model (and, with ``ratio=``, prunes a copy of its graph)
and returns an :class:`InspectReport`: the channel groups (size, kept units, members,
producers, frozen reasons), a per-layer table (channels, MACs and parameters before/after) and
totals. The report renders as text (``str(report)``), markdown or a JSON-able dict.
"""

from __future__ import annotations

__all__ = ["inspect", "InspectReport", "GroupRow", "LayerRow", "normalized_per_layer"]

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch.fx as fx
import torch.nn as nn
from tabulate import tabulate
from torch import Tensor

from fxprune.core.analyze import Analysis, analyze
from fxprune.core.groups import node_group
from fxprune.core.trace import EXAMPLE_INPUTS, trace
from fxprune.costs.count import Counts, count
from fxprune.ir import meta

_LAYER_TYPES: tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
)
_MAX_LIST = 4  # names shown per cell in text/markdown tables (JSON has all of them)


@dataclass(frozen=True)
class GroupRow:
    """One channel group as reported.

    Attributes:
        id: the group id (``Group.id``).
        channels: channels of the group's widest space (``Group.width``).
        units: coupled units (``Group.size``); ``channels == units * divisor``.
        divisor: channels per unit (> 1 for grouped convolutions).
        kept: units kept after pruning (None when no ratio was given).
        prunable: units that may be removed (``size - frozen units``).
        members: qualified names of the modules whose parameters the group slices.
        producers: fx node names that create the group's channels.
        frozen_units: number of frozen units.
        frozen_reason: why units are frozen (None when none is).
        approx: why pruning this group is only approximate (None when exact).
    """

    id: int
    channels: int
    units: int
    divisor: int
    kept: int | None
    prunable: int
    members: tuple[str, ...]
    producers: tuple[str, ...]
    frozen_units: int
    frozen_reason: str | None
    approx: str | None


@dataclass(frozen=True)
class LayerRow:
    """One conv / linear / norm module, before and (if pruned) after.

    ``*_after`` fields are None when no ratio was given.
    """

    name: str
    type: str
    group: int | None
    in_before: int | None
    out_before: int | None
    macs_before: int
    params_before: int
    in_after: int | None = None
    out_after: int | None = None
    macs_after: int | None = None
    params_after: int | None = None
    predicted_ms: float | None = None  # inspect(latency=True): table's interpolation
    measured_ms: float | None = None  # the block timed alone at its widths


@dataclass
class InspectReport:
    """The result of :func:`inspect`. ``str(report)`` is :meth:`to_text`."""

    model: str
    input_shapes: list[list[int]]
    ratio: float | None
    criterion: str | None
    groups: list[GroupRow]
    layers: list[LayerRow]
    macs_before: int
    params_before: int
    macs_after: int | None = None
    params_after: int | None = None
    unsupported: dict[str, list[str]] = field(default_factory=dict)
    analysis: Any = field(default=None, repr=False, compare=False)

    def to_networkx(self) -> Any:
        """The channel-dependency graph as a ``networkx.DiGraph`` (see
        :func:`fxprune.tools.graph_nx.to_networkx`), with each layer's widths before/after and, with
        ``latency=True``, its predicted and measured time as node attributes."""
        from fxprune.tools.graph_nx import to_networkx

        rows = {r.name: {k: v for k, v in asdict(r).items()
                         if k in ("in_before", "out_before", "in_after", "out_after",
                                  "predicted_ms", "measured_ms")} for r in self.layers}
        return to_networkx(self.analysis, name=self.model, layers=rows)

    @property
    def pruned(self) -> bool:
        """Whether the report has after-values (a ratio was given)."""
        return self.ratio is not None

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_frozen_groups(self) -> int:
        """Groups with at least one frozen unit."""
        return sum(1 for g in self.groups if g.frozen_units)

    @property
    def n_fully_frozen_groups(self) -> int:
        """Groups none of whose units can be removed."""
        return sum(1 for g in self.groups if g.prunable == 0)

    # --- summaries -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Totals and counts as a flat dict."""
        out: dict[str, Any] = {
            "model": self.model,
            "input_shapes": self.input_shapes,
            "ratio": self.ratio,
            "criterion": self.criterion,
            "groups": self.n_groups,
            "frozen_groups": self.n_frozen_groups,
            "fully_frozen_groups": self.n_fully_frozen_groups,
            "unsupported_ops": sorted(self.unsupported),
            "macs_before": self.macs_before,
            "params_before": self.params_before,
        }
        if self.pruned:
            out.update(macs_after=self.macs_after, params_after=self.params_after)
        return out

    def to_json(self) -> dict[str, Any]:
        """A ``json.dumps``-able dict: ``summary``, ``groups``, ``layers``, ``unsupported``."""
        return {
            "summary": self.summary(),
            "groups": [_jsonable(asdict(g)) for g in self.groups],
            "layers": [_jsonable(asdict(r)) for r in self.layers],
            "unsupported": {k: list(v) for k, v in self.unsupported.items()},
        }

    def to_text(self) -> str:
        """Plain-text tables (tabulate ``simple`` format)."""
        return self._render("simple")

    def to_markdown(self) -> str:
        """GitHub-flavoured markdown tables."""
        return self._render("github", heading="### ")

    def __str__(self) -> str:
        return self.to_text()

    # --- rendering -----------------------------------------------------------------------
    def _summary_rows(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        if self.pruned:
            rows.append(["MACs", _human(self.macs_before), _human(self.macs_after),
                         _change(self.macs_before, self.macs_after)])
            rows.append(["params", _human(self.params_before), _human(self.params_after),
                         _change(self.params_before, self.params_after)])
        else:
            rows.append(["MACs", _human(self.macs_before)])
            rows.append(["params", _human(self.params_before)])
        return rows

    def _render(self, fmt: str, heading: str = "") -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        title = f"{self.model} (input {shapes})"
        if self.pruned:
            title += f", ratio {self.ratio:g}, criterion {self.criterion}"
        head = ["", "before", "after", "change"] if self.pruned else ["", "value"]
        parts = [heading + title, "", tabulate(self._summary_rows(), head, tablefmt=fmt), ""]
        parts.append(
            f"{self.n_groups} channel groups, {self.n_frozen_groups} with frozen channels "
            f"({self.n_fully_frozen_groups} fully frozen); "
            f"{len(self.unsupported)} unsupported op(s)")
        parts += ["", heading + "Channel groups", "", self._groups_table(fmt), ""]
        parts += [heading + "Layers", "", self._layers_table(fmt)]
        if self.unsupported:
            parts += ["", heading + "Unsupported ops (their channels are kept)", ""]
            parts.append(tabulate(
                [[op, _short(locs, 2)] for op, locs in sorted(self.unsupported.items())],
                ["op", "where"], tablefmt=fmt))
        return "\n".join(parts).rstrip() + "\n"

    def _groups_table(self, fmt: str) -> str:
        head = ["id", "channels", "units", "div"]
        if self.pruned:
            head.append("kept")
        head += ["frozen", "members", "producers"]
        rows = []
        for g in self.groups:
            row: list[Any] = [g.id, g.channels, g.units, g.divisor]
            if self.pruned:
                row.append(g.kept)
            frozen = "-"
            if g.frozen_units:
                n = "all" if g.prunable == 0 else f"{g.frozen_units}/{g.units}"
                frozen = f"{n}: {g.frozen_reason}" if g.frozen_reason else n
            if g.approx:
                frozen += f" (approx: {g.approx})"
            row += [frozen, _short(g.members), _short(g.producers)]
            rows.append(row)
        return tabulate(rows, head, tablefmt=fmt, disable_numparse=True)

    def _layers_table(self, fmt: str) -> str:
        if self.pruned:
            head = ["layer", "type", "group", "in", "out", "MACs", "params"]
            rows = [[r.name, r.type, _dash(r.group), _arrow(r.in_before, r.in_after),
                     _arrow(r.out_before, r.out_after),
                     _arrow(_human(r.macs_before), _human(r.macs_after)),
                     _arrow(_human(r.params_before), _human(r.params_after))]
                    for r in self.layers]
        else:
            head = ["layer", "type", "group", "in", "out", "MACs", "params"]
            rows = [[r.name, r.type, _dash(r.group), _dash(r.in_before), _dash(r.out_before),
                     _human(r.macs_before), _human(r.params_before)] for r in self.layers]
        if any(r.predicted_ms is not None for r in self.layers):
            head += ["ms predicted", "ms measured"]
            for row, r in zip(rows, self.layers):
                row += [_ms(r.predicted_ms), _ms(r.measured_ms)]
        return tabulate(rows, head, tablefmt=fmt, disable_numparse=True)


# --- helpers ----------------------------------------------------------------------------------

def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _human(n: int | float | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return str(int(n))


def _change(before: int | None, after: int | None) -> str:
    if not before or after is None:
        return "-"
    return f"{100.0 * (after - before) / before:+.1f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def _arrow(a: Any, b: Any) -> str:
    a, b = _dash(a), _dash(b)
    return a if a == b else f"{a} → {b}"


def _short(names: tuple[str, ...] | list[str], n: int = _MAX_LIST) -> str:
    names = list(names)
    if len(names) <= n:
        return ", ".join(names)
    return ", ".join(names[:n]) + f", … (+{len(names) - n})"


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
    from fxprune.plan.compress import _check_ratio, score

    if ratio is not None:
        ratio = _check_ratio(ratio)
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
        analysis=analysis,
    )

