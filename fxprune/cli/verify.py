"""``fxprune verify ORIGINAL PRUNED``: check a pruned model against the oracle (exit 1 unless it
passes)."""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import sys
from typing import Any

import torch

from fxprune.cli.common import example_inputs, general, load_model, shape_arg, trust_arg


def add_parser(sub: Any) -> None:
    p = sub.add_parser("verify", parents=[general()],
                       help="check a pruned model against the oracle")
    p.add_argument("original", metavar="ORIGINAL", help="the original MODEL")
    p.add_argument("pruned", metavar="PRUNED", help="the pruned model file")
    p.add_argument("--input", metavar="SHAPE", type=shape_arg,
                   help="input shape (default: the saved one)")
    trust_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fxprune.core.verify import verify

    torch.manual_seed(args.seed)
    original, default = load_model(args.original, args.trust_pickle)
    torch.manual_seed(args.seed)
    pruned, saved_shape = load_model(args.pruned, args.trust_pickle)
    x = example_inputs(original, args, saved_shape or default)
    report = verify(original, pruned, x)
    print(f"oracle: {report}")
    if not report.ok:  # only exact and approximate (structure verified exactly) pass
        print(f"fxprune: error: the pruned model does not pass the oracle ({report.kind})",
              file=sys.stderr)
        return 1
    return 0
