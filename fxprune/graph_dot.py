"""The channel-dependency graph of an analyzed model as Graphviz DOT text.

:func:`to_dot` draws one node per fx node that computes something (modules, functions, methods,
graph inputs and outputs; ``get_attr`` constants are left out), with the fx graph's edges. A
node is filled with the colour of the channel group of its output (the most common group of
its output channel ids), so coupled layers (e.g. all convs of a residual stream) share a
colour. Groups with frozen channels are drawn with a dashed red border, the reason in the
tooltip. A legend lists the groups. :func:`render_svg` runs Graphviz's ``dot`` if installed.
"""

from __future__ import annotations

__all__ = ["to_dot", "render_svg"]

import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch.fx as fx

from . import meta
from .analyze import Analysis
from .errors import FxPruneError, InputError

# ColorBrewer Set3 + Pastel1: light fills that keep black labels readable.
_PALETTE = (
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
    "#bc80bd", "#ccebc5", "#ffed6f", "#fbb4ae", "#b3cde3", "#decbe4", "#fed9a6", "#e5d8bd",
)
_NO_GROUP = "#f0f0f0"
_DRAWN = ("placeholder", "output", "call_module", "call_function", "call_method")


def _q(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _colour(gid: int) -> str:
    return _PALETTE[gid % len(_PALETTE)]


def _shape_str(shape: Any) -> str:
    if isinstance(shape, (tuple, list)) and all(isinstance(d, int) for d in shape):
        return "x".join(map(str, shape)) if shape else "scalar"
    if isinstance(shape, (tuple, list)):
        parts = [_shape_str(s) for s in shape]
        return "(" + ", ".join(p for p in parts if p) + ")"
    return ""


def _op_str(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(str(n.target))).__name__
    if n.op == "call_function":
        return getattr(n.target, "__name__", str(n.target))
    if n.op == "call_method":
        return f".{n.target}()"
    return n.op


def _analysis_of(obj: Any) -> Analysis:
    if isinstance(obj, Analysis):
        return obj
    if isinstance(obj, fx.GraphModule):
        a = obj.meta.get(meta.ANALYSIS)
        if isinstance(a, Analysis):
            return a
        raise InputError("to_dot() needs an analyzed GraphModule: run fxprune.analyze(gm) "
                         "first (or pass the Analysis it returns).")
    raise InputError(f"to_dot() expects a GraphModule or an Analysis, got {type(obj).__name__}")


def _group_text(g: meta.Group) -> str:
    txt = f"group {g.id}: {g.width} channels"
    if g.divisor > 1:
        txt += f" ({g.size} units of {g.divisor})"
    if g.frozen_units:
        n = "all" if g.prunable == 0 else f"{len(g.frozen_units)}/{g.size} units"
        txt += f"; frozen {n}" + (f": {g.frozen_reason}" if g.frozen_reason else "")
    if g.approx:
        txt += f"; approximate: {g.approx}"
    return txt


def to_dot(gm_analyzed: fx.GraphModule | Analysis, *, name: str | None = None) -> str:
    """Render the dependency graph of an analyzed GraphModule as DOT text.

    Args:
        gm_analyzed: a GraphModule after :func:`fxprune.analyze` (or the ``Analysis``).
        name: the graph's title (default: the module's class name).

    Returns:
        The DOT source (``digraph``); render with ``dot -Tsvg`` or :func:`render_svg`.
    """
    from .inspect import node_group

    analysis = _analysis_of(gm_analyzed)
    gm = analysis.gm
    title = name or type(gm).__name__
    lines = [f"digraph {_q(title)} {{",
             f"  graph [rankdir=TB, fontname=Helvetica, label={_q(title)}, labelloc=t];",
             "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica, fontsize=10];",
             "  edge [arrowsize=0.6];"]
    drawn: set[str] = set()
    used: dict[int, None] = {}
    for n in gm.graph.nodes:
        if n.op not in _DRAWN:
            continue
        drawn.add(n.name)
        gid = node_group(analysis, n) if n.op != "output" else None
        label = f"{n.name}\n{_op_str(gm, n)}"
        shape = _shape_str(n.meta.get(meta.SHAPE))
        if shape:
            label += f"\n{shape}"
        attrs = {"label": label}
        if n.op in ("placeholder", "output"):
            attrs["shape"] = "ellipse"
            attrs["style"] = "filled"
        if gid is None:
            attrs["fillcolor"] = _NO_GROUP
            attrs["tooltip"] = f"{n.name}: no prunable channels"
        else:
            g = analysis.groups[gid]
            used[gid] = None
            label += f"\ngroup {gid}"
            attrs["label"] = label
            attrs["fillcolor"] = _colour(gid)
            attrs["tooltip"] = f"{n.name}: {_group_text(g)}"
            if g.frozen_units:
                attrs["style"] = attrs.get("style", "rounded,filled") + ",dashed"
                attrs["color"] = "red"
                attrs["penwidth"] = "2"
        body = ", ".join(f"{k}={_q(v)}" for k, v in attrs.items())
        lines.append(f"  {_q(n.name)} [{body}];")
    for n in gm.graph.nodes:
        if n.name not in drawn:
            continue
        for src in n.all_input_nodes:
            if src.name in drawn:
                lines.append(f"  {_q(src.name)} -> {_q(n.name)};")
    lines += _legend(analysis, list(used))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _legend(analysis: Analysis, gids: list[int]) -> list[str]:
    out = ["  subgraph cluster_legend {",
           "    label=\"channel groups\"; fontname=Helvetica; style=rounded; color=gray;",
           "    node [shape=box, style=\"rounded,filled\", fontsize=9];"]
    prev = None
    for gid in sorted(gids):
        g = analysis.groups[gid]
        attrs = f"label={_q(f'group {gid}: {g.width} ch')}, fillcolor={_q(_colour(gid))}, " \
                f"tooltip={_q(_group_text(g))}"
        if g.frozen_units:
            attrs += ", style=\"rounded,filled,dashed\", color=red, penwidth=2"
        key = f"legend_g{gid}"
        out.append(f"    {_q(key)} [{attrs}];")
        if prev is not None:  # stack the legend entries vertically
            out.append(f"    {_q(prev)} -> {_q(key)} [style=invis];")
        prev = key
    out.append("    \"legend_frozen\" [label=\"dashed red border: frozen channels "
               "(reason in tooltip)\", fillcolor=white, style=\"rounded,filled,dashed\", "
               "color=red, penwidth=2];")
    if prev is not None:
        out.append(f"    {_q(prev)} -> \"legend_frozen\" [style=invis];")
    out.append("  }")
    return out


def render_svg(dot: str, path: str | Path) -> None:
    """Render DOT text to an SVG file with Graphviz's ``dot`` binary.

    Raises:
        InputError: ``dot`` is not installed (write the ``.dot`` text instead).
        FxPruneError: ``dot`` failed.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise InputError(
            "rendering SVG needs Graphviz's 'dot' program, which is not installed. Hint: "
            "install graphviz (e.g. apt-get install graphviz), or write DOT text instead "
            "(an output path ending in .dot) and render it elsewhere.")
    proc = subprocess.run([exe, "-Tsvg", "-o", str(path)], input=dot, text=True,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise FxPruneError(f"dot failed (exit {proc.returncode}): {proc.stderr.strip()}")
