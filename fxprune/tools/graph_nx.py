"""The channel-dependency graph of an analyzed model as a networkx ``DiGraph``.

:func:`to_networkx` makes one node per fx node that computes something (modules, functions,
methods, graph inputs and outputs; ``get_attr`` constants are left out) and one edge per tensor
passed between them. Every attribute is a str, int, float or bool, so the graph can be written
with ``networkx.write_graphml`` as is (:func:`write_graphml`); :mod:`fxprune.tools.graph_dot`
draws the
same graph as DOT.

Node attributes: ``op`` (fx op), ``kind`` (module class, function or ``.method()``),
``target``, ``shape`` (on the example inputs, ``"1x64x56x56"``), ``group`` (channel group of
the output, -1 if none), ``frozen`` and ``frozen_reason`` (of that group), ``channels`` and
``channels_after`` (width of the output's channel axis before and after the selected
keep-sets; -1 when the output has no channel axis), and for conv/linear/norm modules
``in_before``/``out_before``/``in_after``/``out_after``; ``predicted_ms``/``measured_ms``
where layer times are given. Edge attributes: ``shape`` and ``group`` of the tensor.
"""

from __future__ import annotations

__all__ = ["to_networkx", "write_graphml", "op_str", "shape_str"]

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import torch.fx as fx
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.errors import InputError
from fxprune.ir import meta

DRAWN = ("placeholder", "output", "call_module", "call_function", "call_method")


def shape_str(shape: Any) -> str:
    if isinstance(shape, (tuple, list)) and all(isinstance(d, int) for d in shape):
        return "x".join(map(str, shape)) if shape else "scalar"
    if isinstance(shape, (tuple, list)):
        parts = [shape_str(s) for s in shape]
        return "(" + ", ".join(p for p in parts if p) + ")"
    return ""


def op_str(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(str(n.target))).__name__
    if n.op == "call_function":
        return getattr(n.target, "__name__", str(n.target))
    if n.op == "call_method":
        return f".{n.target}()"
    return n.op


def analysis_of(obj: Any, who: str = "to_networkx") -> Analysis:
    if isinstance(obj, Analysis):
        return obj
    if isinstance(obj, fx.GraphModule):
        a = obj.meta.get(meta.ANALYSIS)
        if isinstance(a, Analysis):
            return a
        raise InputError(f"{who}() needs an analyzed GraphModule: run fxprune.analyze(gm) "
                         "first (or pass the Analysis it returns).")
    raise InputError(f"{who}() expects a GraphModule or an Analysis, got {type(obj).__name__}")


def _channels(n: fx.Node) -> tuple[int, int]:
    ids, shape = meta.get_ids(n), n.meta.get(meta.SHAPE)
    if not isinstance(ids, Tensor) or not isinstance(shape, (tuple, list)) or \
            not all(isinstance(d, int) for d in shape):
        return -1, -1
    axes = [d for d in range(1, ids.dim()) if ids.shape[d] > 1]
    if not axes:
        return -1, -1
    axis = axes[0]
    width = int(shape[axis])
    keep = n.meta.get(meta.KEEP)
    after = width
    if isinstance(keep, meta.NodeKeep):
        for d, _, pos in keep.axes:
            if d == axis:
                after = len(pos)
    return width, after


def to_networkx(gm_analyzed: fx.GraphModule | Analysis, *, name: str | None = None,
                layers: Mapping[str, Mapping[str, Any]] | None = None,
                times: Mapping[str, Mapping[str, float]] | None = None) -> nx.DiGraph:
    """The dependency graph of an analyzed GraphModule (attributes in the module docstring).

    Args:
        gm_analyzed: a GraphModule after :func:`fxprune.analyze` (selected keep-sets give the
            after-widths), or its ``Analysis``.
        name: the graph's ``name`` attribute (default: the module's class name).
        layers: ``{module name: {"in_before": ..., ...}}`` extra per-module attributes (the
            inspect report's layer rows).
        times: ``{module name: {"predicted_ms": ..., "measured_ms": ...}}``.
    """
    from fxprune.core.groups import node_group

    analysis = analysis_of(gm_analyzed)
    gm = analysis.gm
    g = nx.DiGraph(name=name or type(gm).__name__)
    for n in gm.graph.nodes:
        if n.op not in DRAWN:
            continue
        gid = node_group(analysis, n) if n.op != "output" else None
        grp = analysis.groups[gid] if gid is not None else None
        ch, ch_after = _channels(n)
        attrs: dict[str, Any] = {
            "op": n.op, "kind": op_str(gm, n), "target": str(n.target),
            "shape": shape_str(n.meta.get(meta.SHAPE)), "group": -1 if gid is None else gid,
            "frozen": bool(grp is not None and grp.frozen_units),
            "frozen_reason": (grp.frozen_reason or "") if grp is not None else "",
            "channels": ch, "channels_after": ch_after}
        if n.op == "call_module":
            for src in (layers or {}, times or {}):
                for k, v in (src.get(str(n.target)) or {}).items():
                    if v is not None:
                        attrs[k] = v
        g.add_node(n.name, **attrs)
    for n in gm.graph.nodes:
        if n.name not in g:
            continue
        for src in n.all_input_nodes:
            if src.name in g:
                gid = g.nodes[src.name]["group"]
                g.add_edge(src.name, n.name, shape=g.nodes[src.name]["shape"], group=gid)
    return g


def write_graphml(graph: nx.DiGraph, path: str | Path) -> None:
    """Write a graph from :func:`to_networkx` as GraphML (``networkx.write_graphml``)."""
    nx.write_graphml(graph, str(path))
