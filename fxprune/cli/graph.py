"""``fxprune graph MODEL``: the channel-dependency graph as DOT, SVG (Graphviz) or GraphML
(networkx)."""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
from pathlib import Path
from typing import Any

from fxprune.cli.common import general, model_and_inputs, model_args
from fxprune.errors import InputError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("graph", parents=[general()], help="draw the channel-dependency graph")
    model_args(p)
    p.add_argument("--ignore", nargs="+", default=None, metavar="NAME")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="graph.svg (needs Graphviz), graph.dot or graph.graphml (networkx); "
                        "default: DOT on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fxprune.core.analyze import analyze
    from fxprune.core.trace import trace
    from fxprune.tools.graph_dot import render_svg, to_dot

    out = args.output
    if out and Path(out).suffix.lower() not in (".svg", ".dot", ".gv", ".graphml"):
        raise InputError(f"-o must end in .svg, .dot, .gv or .graphml, got {out!r}")
    model, x = model_and_inputs(args, args.model)
    gm = trace(model, x)
    analyze(gm, ignore=args.ignore or None)
    if out and out.lower().endswith(".graphml"):
        from fxprune.tools.graph_nx import to_networkx, write_graphml

        write_graphml(to_networkx(gm), out)
        print(f"wrote {out}")
        return 0
    dot = to_dot(gm)
    if not out:
        print(dot, end="")
    elif out.lower().endswith(".svg"):
        render_svg(dot, out)
        print(f"wrote {out}")
    else:
        Path(out).write_text(dot)
        print(f"wrote {out}")
    return 0
