"""``fxprune plot MODEL -o widths.png``: a bar chart of the output channels per layer, before
and after pruning (needs matplotlib: ``pip install fxprune[plot]``)."""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import sys
from typing import Any

from fxprune.cli.common import criterion_names, general, model_and_inputs, model_args
from fxprune.errors import InputError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plot", parents=[general()], help="bar chart of widths before/after")
    model_args(p)
    p.add_argument("--ratio", type=float, default=0.5, help="prune ratio (default 0.5)")
    p.add_argument("--criterion", default="l1", choices=criterion_names(), metavar="CRITERION")
    p.add_argument("-o", "--output", metavar="PATH", required=True, help="e.g. widths.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        print("fxprune: error: plotting needs matplotlib: pip install fxprune[plot]",
              file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fxprune.tools.inspect import inspect

    model, x = model_and_inputs(args, args.model)
    report = inspect(model, x, ratio=args.ratio, criterion=args.criterion)
    layers = [r for r in report.layers if "Conv" in r.type or "Linear" in r.type]
    if not layers:
        raise InputError("the model has no conv or linear layers to plot")
    n = len(layers)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.22 * n + 2), 40.0), 4.5), dpi=100)
    pos = list(range(n))
    ax.bar(pos, [r.out_before or 0 for r in layers], color="#c8c8c8", label="before")
    ax.bar(pos, [r.out_after if r.out_after is not None else 0 for r in layers],
           color="#1f77b4", width=0.6, label=f"after (ratio {args.ratio:g})")
    ax.set_ylabel("output channels")
    ax.set_title(f"{report.model}: output channels per layer")
    ax.set_xlim(-0.6, n - 0.4)
    if n <= 120:
        ax.set_xticks(pos)
        ax.set_xticklabels([r.name for r in layers], rotation=90, fontsize=6)
    else:
        ax.set_xlabel("layer (graph order)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output)
    plt.close(fig)
    print(f"wrote {args.output}")
    return 0
