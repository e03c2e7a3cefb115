"""What ``inspect`` and ``compress`` print about MACs and parameters: the before/after rows and
the SFP/FPGM papers' FLOPs convention (``--paper-flops``)."""

from __future__ import annotations

__all__ = ["paper_flops", "paper_line", "count_rows"]

import argparse
from typing import Any

from fxprune.cli.common import change, human
from fxprune.errors import InputError


def paper_flops(args: argparse.Namespace, model: Any, x: Any) -> Any:
    """The SFP/FPGM FLOPs convention at the uniform keep rate 1 - ratio (--paper-flops)."""
    from fxprune.costs.paper_flops import paper_flops as measure

    if args.ratio is None or getattr(args, "allocation", "uniform") != "uniform":
        raise InputError("--paper-flops needs --ratio with the uniform allocation: the papers' "
                         "FLOPs convention is defined for one rate applied to every layer")
    return measure(model, 1.0 - args.ratio, example_inputs=x, ignore=args.ignore or None)


def paper_line(paper: Any) -> str:
    """One line on the papers' convention, printed after ``inspect``'s report."""
    return (f"papers' FLOPs convention (SFP/FPGM: conv MACs only, every conv at keep "
            f"{paper.keep:g}, residual-output convs scattered): {human(paper.base)} -> "
            f"{human(paper.pruned)} conv MACs, {paper.cut:.2%} cut; measured MACs count "
            "N - floor(N x ratio) kept filters and every layer")


def count_rows(before: Any, after: Any, paper: Any) -> list[list[Any]]:
    """The params and MACs rows of ``compress``'s table (and the conv-MACs rows with
    ``--paper-flops``)."""
    rows: list[list[Any]] = [
        ["params", human(before.params), human(after.params),
         change(before.params, after.params)],
        ["MACs", human(before.macs), human(after.macs), change(before.macs, after.macs)],
    ]
    if paper is not None:
        rows += [["conv MACs (measured)", human(before.conv_macs), human(after.conv_macs),
                  change(before.conv_macs, after.conv_macs)],
                 [f"conv MACs, papers' convention (keep {paper.keep:g})", human(paper.base),
                  human(paper.pruned), change(paper.base, paper.pruned)]]
    return rows
