"""``fxprune bench ...``: the benchmarks. ``fxprune bench accuracy`` runs
:mod:`fxprune.cli.bench_accuracy`; everything else (``prunability``, ``--fuzz``) is
:func:`fxprune.bench.prunability.main`. The arguments after ``bench`` reach them untouched by
the CLI's parser."""

from __future__ import annotations

__all__ = ["add_parser", "run", "main"]

import argparse
import importlib
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", add_help=False, help="run benchmarks (fxprune bench -h)")
    p.set_defaults(func=run, passthrough=True)


def run(args: argparse.Namespace) -> int:
    """The command, from the whole command line (``args.argv``)."""
    return main(_bench_argv(args.argv))


def main(argv: list[str]) -> int:
    """``fxprune bench ARGV...``; returns the exit code."""
    accuracy = argv[:1] == ["accuracy"]
    try:
        bench = importlib.import_module("fxprune.cli.bench_accuracy" if accuracy
                                        else "fxprune.bench.prunability")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("fxprune.bench"):
            raise
        print("fxprune: error: 'fxprune bench' is not available in this installation "
              f"(the module {e.name} is missing).", file=sys.stderr)
        return 2
    return int(bench.main(list(argv[1:] if accuracy else argv)) or 0)


def _bench_argv(argv: list[str]) -> list[str]:
    """The arguments after the ``bench`` subcommand, untouched by argparse."""
    i = 0
    while i < len(argv) and argv[i] != "bench":
        i += 2 if argv[i] == "--seed" else 1
    return argv[i + 1:]
