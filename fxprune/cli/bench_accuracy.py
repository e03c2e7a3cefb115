"""``fxprune bench accuracy``: run a preset of the accuracy benchmark."""

from __future__ import annotations

__all__ = ["main", "build_parser"]

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from fxprune.bench.accuracy.presets import METHODS, PRESETS, RECIPE_PARTS, method_spec
from fxprune.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fxprune bench accuracy",
        description="Every pruning method against a dense baseline and Torch-Pruning at the "
                    "same MACs; resumable (finished rows are skipped).")
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke",
                   help="smoke: digits, seconds; cpu: Fashion-MNIST ResNet-20, ~2 h on 2 "
                        "cores; full: all images, ResNet-20/56 (GPU)")
    p.add_argument("--out", type=Path, default=Path("bench_out/accuracy"))
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--methods", help=f"comma-separated subset of: {', '.join(METHODS)}; or "
                   "any registered training method or criterion; or a recipe BASE+PART+... "
                   f"(BASE a criterion or tp-group/tp-magnitude, PART one of "
                   f"{', '.join(RECIPE_PARTS)}; e.g. l2+group+recal+kd+gradual, tp-group+kd)")
    p.add_argument("--models", help="comma-separated models (override the preset's), e.g. "
                   "resnet20,resnet20_b")
    p.add_argument("--tune", action="append", metavar="FIELD=V1,V2",
                   help="choose settings on the validation split: run every combination of "
                        "the values (distill, temperature, gradual_steps, group_scoring, "
                        "recal_batches, lr, recipe_allocation, search_candidates, "
                        "search_spread, soft_clip, soft_settle, fppmo_tau) with all "
                        "accuracies measured on validation, the "
                        "test split never read; repeatable")
    p.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    p.add_argument("--amp", choices=("preset", "bf16", "none"), default="preset",
                   help="precision of training: the preset's (default; bf16 for cpu, "
                        "float32 for cpu-long), bf16, or none (float32: on a CPU without "
                        "AVX512-BF16/AMX "
                        "bf16 is emulated and ~10x slower). Part of a row's settings: a "
                        "results file holds one precision")
    p.add_argument("--targets", type=float, nargs="+", metavar="MACS",
                   help="override the preset's MACs targets (fractions kept, e.g. 0.5)")
    p.add_argument("--limit", type=int, help="stop after this many new rows")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--recheck", metavar="KEY",
                   help="recompute one finished row (e.g. resnet20/fxprune/l1/0.5/0) from its "
                        "dense checkpoint and compare; exit 1 if the accuracy moved by more "
                        "than --tolerance")
    p.add_argument("--tolerance", type=float, default=0.3, help="points (default 0.3)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    if args.methods:
        names = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        try:
            for m in names:
                method_spec(m)
        except InputError as e:
            print(f"fxprune bench accuracy: {e}", file=sys.stderr)
            return 2
        preset = dataclasses.replace(preset, methods=names)
    if args.models:
        preset = dataclasses.replace(
            preset, models=tuple(m.strip() for m in args.models.split(",") if m.strip()))
    if args.seeds:
        preset = dataclasses.replace(preset, seeds=tuple(args.seeds))
    if args.amp != "preset":
        preset = dataclasses.replace(preset, amp=None if args.amp == "none" else args.amp)
    if args.targets:
        bad = [t for t in args.targets if not 0 < t <= 1]
        if bad:
            print(f"fxprune bench accuracy: --targets {bad[0]:g} is not a fraction of the MACs "
                  "to keep; give values in (0, 1], e.g. --targets 0.5 0.25", file=sys.stderr)
            return 2
        preset = dataclasses.replace(preset, targets=tuple(args.targets))
    if args.recheck:
        from fxprune.bench.accuracy.runner import recheck

        try:
            old, new = recheck(preset, args.out, args.recheck, threads=args.threads)
        except InputError as e:
            print(f"fxprune bench accuracy: error: {e}", file=sys.stderr)
            return 2
        diff = (new["acc"] - old["acc"]) * 100
        print(f"{args.recheck}: stored {old['acc'] * 100:.2f}%, rerun {new['acc'] * 100:.2f}% "
              f"({diff:+.2f} pt; MACs kept {old['macs_kept']:.4f} -> {new['macs_kept']:.4f})")
        return 0 if abs(diff) <= args.tolerance else 1
    from tqdm import tqdm

    from fxprune.bench.accuracy.runner import run

    bar = None

    def on_row(row: dict, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"accuracy/{preset.name}", disable=args.no_progress,
                       file=sys.stderr)
        bar.update(1)
        msg = (f"{row['key']}: ERROR {row['error']}" if "error" in row else
               f"{row['key']}: acc {row['acc'] * 100:.2f}%, MACs kept {row['macs_kept']:.3f}, "
               f"{row.get('seconds', 0):.0f} s")
        tqdm.write(msg, file=sys.stdout)

    command = "fxprune bench accuracy " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.tune:
        return _tune(preset, args, command, on_row)
    try:
        doc = run(preset, args.out, workers=args.workers, threads=args.threads,
                  command=command, limit=args.limit, on_row=on_row)
    except InputError as e:
        print(f"fxprune bench accuracy: error: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    failed = sum("error" in r for r in doc["rows"])
    print(f"{len(doc['rows'])} rows ({failed} failed) in {args.out}/accuracy_{preset.name}"
          ".json and .md")
    return 1 if failed else 0


def _tune(preset, args: argparse.Namespace, command: str, on_row) -> int:
    from fxprune.bench.accuracy.tune import best, parse_grid, tune

    try:
        grid = parse_grid(args.tune)
        results = tune(preset, args.out, grid, workers=args.workers, threads=args.threads,
                       command=command, on_row=on_row)
    except InputError as e:
        print(f"fxprune bench accuracy: error: {e}", file=sys.stderr)
        return 2
    print("validation accuracy (mean over seeds), best candidate first:")
    for entry in best(results, list(grid)):
        cands = "; ".join(f"{acc * 100:.2f}% {c}" for acc, c in entry["candidates"])
        print(f"  {entry['model']} {entry['method']} @ {entry['target']}: {cands}")
    failed = sum("error" in r for _, doc in results for r in doc["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
