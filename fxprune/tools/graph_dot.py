"""The channel-dependency graph of an analyzed model as Graphviz DOT text.

The graph comes from :func:`fxprune.tools.graph_nx.to_networkx` (networkx); this module only draws
it. networkx has no DOT writer of its own (``nx_pydot`` needs pydot, ``nx_agraph`` pygraphviz,
neither a dependency), so :func:`to_dot` serializes the networkx graph itself, with styles: a
node is filled with the colour of the channel group of its output, so coupled layers (e.g. all
convs of a residual stream) share a colour; groups with frozen channels are drawn with a dashed
red border, the reason in the tooltip; a legend lists the groups. :func:`render_svg` runs
Graphviz's ``dot`` if installed.
"""

from __future__ import annotations

__all__ = ["to_dot", "render_svg"]

import shutil
import subprocess
from pathlib import Path

import networkx as nx
import torch.fx as fx

from fxprune.core.analyze import Analysis
from fxprune.errors import FxPruneError, InputError
from fxprune.ir import meta
from fxprune.tools.graph_nx import analysis_of, to_networkx

# ColorBrewer Set3 + Pastel1: light fills that keep black labels readable.
_PALETTE = (
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
    "#bc80bd", "#ccebc5", "#ffed6f", "#fbb4ae", "#b3cde3", "#decbe4", "#fed9a6", "#e5d8bd",
)
_NO_GROUP = "#f0f0f0"


def _q(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _colour(gid: int) -> str:
    return _PALETTE[gid % len(_PALETTE)]


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


def to_dot(gm_analyzed: fx.GraphModule | Analysis | nx.DiGraph, *, name: str | None = None
           ) -> str:
    """Render the dependency graph of an analyzed GraphModule as DOT text.

    Args:
        gm_analyzed: a GraphModule after :func:`fxprune.analyze` (or the ``Analysis``), or a
            graph from :func:`fxprune.tools.graph_nx.to_networkx` of one.
        name: the graph's title (default: the module's class name).

    Returns:
        The DOT source (``digraph``); render with ``dot -Tsvg`` or :func:`render_svg`.
    """
    if isinstance(gm_analyzed, nx.DiGraph):
        raise InputError("to_dot() needs the analysis for its legend: pass the analyzed "
                         "GraphModule or Analysis")
    analysis = analysis_of(gm_analyzed, "to_dot")
    g = to_networkx(analysis, name=name)
    title = g.graph["name"]
    lines = [f"digraph {_q(title)} {{",
             f"  graph [rankdir=TB, fontname=Helvetica, label={_q(title)}, labelloc=t];",
             "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica, fontsize=10];",
             "  edge [arrowsize=0.6];"]
    used: dict[int, None] = {}
    for node, d in g.nodes(data=True):
        label = f"{node}\n{d['kind']}" + (f"\n{d['shape']}" if d["shape"] else "")
        attrs = {"label": label}
        if d["op"] in ("placeholder", "output"):
            attrs["shape"] = "ellipse"
            attrs["style"] = "filled"
        gid = d["group"]
        if gid < 0:
            attrs["fillcolor"] = _NO_GROUP
            attrs["tooltip"] = f"{node}: no prunable channels"
        else:
            grp = analysis.groups[gid]
            used[gid] = None
            attrs["label"] = label + f"\ngroup {gid}"
            attrs["fillcolor"] = _colour(gid)
            attrs["tooltip"] = f"{node}: {_group_text(grp)}"
            if grp.frozen_units:
                attrs["style"] = attrs.get("style", "rounded,filled") + ",dashed"
                attrs["color"] = "red"
                attrs["penwidth"] = "2"
        body = ", ".join(f"{k}={_q(v)}" for k, v in attrs.items())
        lines.append(f"  {_q(node)} [{body}];")
    for src, dst in g.edges():
        lines.append(f"  {_q(src)} -> {_q(dst)};")
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
