"""``fxprune list-criteria`` and ``fxprune list-rules``: what the registries hold."""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
from typing import Any

from fxprune.cli.common import general


def add_parser(sub: Any) -> None:
    p = sub.add_parser("list-criteria", parents=[general()], help="list channel criteria")
    p.set_defaults(func=run)
    p = sub.add_parser("list-rules", parents=[general()], help="list ops with a channel rule")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``list-criteria`` or ``list-rules`` (``args.command``)."""
    return _criteria() if args.command == "list-criteria" else _rules()


def _criteria() -> int:
    from tabulate import tabulate

    from fxprune.criteria import list_criteria

    rows = [[c.name, "yes" if c.needs_data else "", c.summary] for c in list_criteria()]
    print(tabulate(rows, ["criterion", "needs data", "summary"], tablefmt="simple"))
    return 0


def _rules() -> int:
    from tabulate import tabulate

    from fxprune.rules import list_rules

    print(tabulate(list_rules(), ["op", "rule"], tablefmt="simple"))
    return 0
