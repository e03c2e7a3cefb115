"""``fxprune compress MODEL``: prune, print params, MACs, measured latency and the oracle's
verdict, and save the pruned model (``-o``)."""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import time
from typing import Any

import torch

from fxprune.cli.common import (
    Progress,
    general,
    group_scores_arg,
    model_and_inputs,
    model_args,
    prune_args,
)
from fxprune.cli.counts import count_rows, paper_flops
from fxprune.errors import InputError
from fxprune.ir import meta


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compress", parents=[general()], help="prune a model and save it")
    model_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of channels to remove, in [0, 1)")
    how.add_argument("--target-flops", type=float, metavar="F",
                     help="fraction of the original MACs to keep, in (0, 1]")
    how.add_argument("--target-params", type=float, metavar="P",
                     help="fraction of the original parameters to keep, in (0, 1]")
    how.add_argument("--target-latency", type=float, metavar="T",
                     help="fraction of the measured latency to keep, in (0, 1], at --batch "
                          "with --threads (per-layer latency table, cached)")
    prune_args(p)
    group_scores_arg(p)
    p.add_argument("--allocation", choices=("uniform", "global", "clr"), default="uniform",
                   help="how the amount is spread over layers (default uniform)")
    p.add_argument("--residual", choices=("coupled", "scatter"), default="coupled",
                   help="residual policy (default coupled; scatter = SFP/FPGM index_add)")
    p.add_argument("--attention", choices=("dims", "heads"), default="dims",
                   help="attention: prune the same dims of every head (default) or whole heads")
    p.add_argument("--clr-lambda", type=float, default=1.0, metavar="L",
                   help="CLR exponent on the layer cost (authors: VGG-16 0.5, ResNet-56 10)")
    p.add_argument("--clr-cost", choices=("authors", "macs"), default="authors",
                   help="CLR cost convention (default authors: CLR-RNF's code)")
    p.add_argument("--paper-flops", action="store_true",
                   help="also show the SFP/FPGM papers' FLOPs convention (needs --ratio)")
    p.add_argument("--keep-class", action="store_true",
                   help="prune so that the model's own class and forward still run "
                        "(fxprune.graft); the result is not a GraphModule, so no -o")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 3) on ops without a channel rule")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="check against the oracle (default; exit 1 unless exact or "
                        "approximate with its structure verified exactly)")
    p.add_argument("--batch", type=int, default=8, help="batch size for latency (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for latency")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs per model (default 3)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("-o", "--output", metavar="PATH", help="save the pruned model (fxprune.save)")
    p.set_defaults(func=run)


def compress_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The amount and allocation keywords of :func:`fxprune.compress` the options give."""
    kwargs: dict[str, Any] = {"allocation": args.allocation, "residual": args.residual,
                              "clr_lambda": args.clr_lambda, "clr_cost": args.clr_cost,
                              "attention": args.attention}
    if getattr(args, "keep_class", False):
        kwargs["keep_class"] = True
    if args.group_scores is not None:
        kwargs["scoring"] = args.group_scores
    if args.target_flops is not None:
        kwargs["target_flops"] = args.target_flops
    if args.target_params is not None:
        kwargs["target_params"] = args.target_params
    if args.target_latency is not None:
        kwargs.update(target_latency=args.target_latency, batch=args.batch,
                      threads=args.threads)
        for k in ("allocation", "clr_lambda", "clr_cost"):
            kwargs.pop(k)
    return kwargs


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from fxprune.costs.count import count
    from fxprune.files.serialize import writable

    kwargs = compress_kwargs(args)
    if args.output and args.keep_class:
        raise InputError("--keep-class returns a model of its own class, which fxprune.save "
                         "does not write. Hint: drop -o, or in Python: small = "
                         "fxprune.compress(model, ..., keep_class=True); torch.save(small, "
                         "path).")
    if args.output:
        writable(args.output)  # before pruning: a missing folder is reported at once
    if args.batch < 1:
        raise InputError(f"--batch must be >= 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    model, x = model_and_inputs(args, args.model)
    paper = paper_flops(args, model, x) if args.paper_flops else None
    t0 = time.perf_counter()
    pruned = _prune(args, model, x, kwargs)
    t_prune = time.perf_counter() - t0
    rows = count_rows(count(model, x), count(pruned, x), paper)
    lat = None if args.no_latency else _latency(args, model, pruned, x)
    if lat is not None:
        thr = f"{lat.threads} thread{'s' if lat.threads > 1 else ''}"
        rows.append([f"latency (batch {lat.batch}, {thr}, {lat.device})",
                     f"{lat.median_a_ms:.2f} ms ±{lat.iqr_a_ms:.2f}",
                     f"{lat.median_b_ms:.2f} ms ±{lat.iqr_b_ms:.2f}",
                     f"{lat.speedup:.2f}x faster"])
    done = "pruned and verified" if args.verify else "pruned"
    print(f"{args.model}: {_how(args, pruned)}, criterion {args.criterion}, {done} in "
          f"{t_prune:.1f} s")
    print(tabulate(rows, ["", "original", "pruned", "change"], tablefmt="simple",
                   disable_numparse=True))
    _notes(args, lat, paper)
    return _finish(args, pruned)


def _prune(args: argparse.Namespace, model: Any, x: Any, kwargs: dict[str, Any]) -> Any:
    """:func:`fxprune.compress` with a progress bar per stage."""
    from fxprune.plan.compress import compress

    bar = Progress(not args.quiet)
    try:
        return compress(model, args.ratio, criterion=args.criterion, example_inputs=x,
                        ignore=args.ignore or None, round_to=args.round_to, strict=args.strict,
                        verify=args.verify, progress=bar, **kwargs)
    finally:
        bar.close()


def _latency(args: argparse.Namespace, model: Any, pruned: Any, x: Any) -> Any:
    """Both models timed, interleaved, on a random batch of ``--batch``."""
    from fxprune.costs.latency import measure_latency

    xb = torch.randn((args.batch, *x[0].shape[1:]), generator=torch.Generator().manual_seed(
        args.seed)).to(x[0])
    return measure_latency(model, pruned, (xb, *x[1:]), warmup=args.warmup,
                           repeat=args.repeat, threads=args.threads)


def _how(args: argparse.Namespace, pruned: Any) -> str:
    """How much was asked for, and what the allocation achieved."""
    alloc = meta.record_of(pruned).get(meta.ALLOCATION) or {}
    achieved = f"(achieved {alloc.get('achieved', float('nan')):.3f})"
    if args.ratio is not None:
        return f"ratio {args.ratio:g}"
    if args.target_latency is not None:
        return (f"target latency {args.target_latency:g} (measured "
                f"{alloc.get('achieved', 0):.3f} ±{alloc.get('achieved_spread', 0):.3f} over "
                f"{len(alloc.get('achieved_rounds', []))} rounds, "
                f"predicted {alloc.get('predicted', 0):.3f}, round_to {alloc.get('round_to')}, "
                f"{alloc.get('steps', 0)} timed step(s), table {alloc.get('table_s', 0):.1f} s)")
    if args.target_flops is not None:
        return f"target FLOPs {args.target_flops:g} {achieved}"
    return f"target params {args.target_params:g} {achieved}"


def _notes(args: argparse.Namespace, lat: Any, paper: Any) -> None:
    """The lines under the table: how latency was timed, page faults, the papers' convention."""
    from fxprune.costs.latency import PAGE_FAULT_WARN

    if lat is not None:
        print(f"latency: median ± IQR of {args.repeat} interleaved runs each, after "
              f"{args.warmup} warm-up runs")
        faults = max(lat.page_faults_a or 0.0, lat.page_faults_b or 0.0)
        if faults >= PAGE_FAULT_WARN:
            print(f"note: {faults:.0f} page faults per run: the allocator returns activation "
                  "memory to the OS after every run; that cost follows activation bytes, not "
                  "MACs, and the allocator's state, so these timings are noisy and can favour "
                  "either model. MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_="
                  "17179869184 (or jemalloc/tcmalloc) avoids it")
    if paper is not None:
        print("papers' convention: SFP/FPGM FLOPs↓ (conv MACs only, every conv at the keep "
              "rate, residual-output convs scattered; fxprune.paper_flops); the measured rows "
              "count this model")




def _finish(args: argparse.Namespace, pruned: Any) -> int:
    """The oracle's verdict, and the saved file."""
    from fxprune.files.serialize import save

    if args.verify:
        report = meta.record_of(pruned).get("fxprune.verify", "-")
        if isinstance(report, dict):  # keep_class: the report's fields, as plain data
            report = (f"{report['status']} (max abs err {report['max_abs_err']:.3g}, rel "
                      f"{report['max_rel_err']:.3g})")
        print(f"oracle: {report}")
        kept = meta.record_of(pruned).get("fxprune.kept")
        if kept:
            print(f"kept for the model's own code (--keep-class): {', '.join(kept)}")
    if args.output:
        save(pruned, args.output)
        print(f"saved {args.output}")
    else:
        print("not saved (give -o PATH to save the pruned model)")
    return 0
