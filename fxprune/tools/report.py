"""What :func:`fxprune.inspect` returns: :class:`InspectReport` (groups, layers, totals) and its
renderings as text, markdown, JSON and a networkx graph."""

from __future__ import annotations

__all__ = ["InspectReport", "GroupRow", "LayerRow"]

from dataclasses import asdict, dataclass, field
from typing import Any

from tabulate import tabulate

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
    #: Modules the trace kept as one op (their channels are kept), and why.
    opaque: dict[str, str] = field(default_factory=dict)
    #: "symbolic" (torch.fx) or "concrete" (:mod:`fxprune.core.concrete`).
    tracer: str = "symbolic"
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
            "tracer": self.tracer,
            "opaque_modules": sorted(self.opaque),
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
            "opaque": dict(self.opaque),
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
        if self.opaque:
            parts += ["", heading + "Opaque modules (traced as one op; their channels are kept)",
                      ""]
            parts.append(tabulate([[k, v] for k, v in sorted(self.opaque.items())],
                                  ["module", "why"], tablefmt=fmt))
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
