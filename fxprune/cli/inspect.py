"""``fxprune inspect MODEL``: channel groups and layer widths (text, markdown or JSON)."""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import json
from typing import Any

from fxprune.cli.common import general, model_and_inputs, model_args, prune_args
from fxprune.cli.counts import paper_flops, paper_line


def add_parser(sub: Any) -> None:
    p = sub.add_parser("inspect", parents=[general()],
                       help="show channel groups and layer widths")
    model_args(p)
    p.add_argument("--ratio", type=float, default=None, help="also prune at this ratio")
    prune_args(p)
    p.add_argument("--paper-flops", action="store_true",
                   help="also show the SFP/FPGM papers' FLOPs convention (needs --ratio)")
    p.add_argument("--format", choices=("text", "md", "json"), default="text")
    p.add_argument("--latency", action="store_true",
                   help="per-layer time: latency table's prediction vs the block timed alone")
    p.add_argument("--batch", type=int, default=8, help="batch size for --latency (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for --latency")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fxprune.tools.inspect import inspect

    model, x = model_and_inputs(args, args.model)
    paper = paper_flops(args, model, x) if args.paper_flops else None
    report = inspect(model, x, ratio=args.ratio, criterion=args.criterion,
                     ignore=args.ignore or None, round_to=args.round_to, latency=args.latency,
                     batch=args.batch, threads=args.threads)
    if args.format == "json":
        out = report.to_json()
        if paper is not None:
            out["paper_flops"] = {"keep": paper.keep, "conv_macs": paper.base,
                                  "conv_macs_pruned": paper.pruned, "cut": paper.cut}
        print(json.dumps(out, indent=2))
    elif args.format == "md":
        print(report.to_markdown(), end="")
        if paper is not None:
            print(f"\n{paper_line(paper)}")
    else:
        print(report.to_text(), end="")
        if paper is not None:
            print(f"\n{paper_line(paper)}")
    return 0
