"""What does soft pruning cost per epoch? resnet20 (CIFAR), synthetic 32x32 data, CPU.

For each method, trains ``--epochs`` epochs of ``--steps`` SGD steps (batch ``--batch``) with a
:class:`fxprune.SoftPruner` attached, and reports per epoch (after the first, warm-up epoch):

- the epoch's wall time (training steps + ``epoch_end``);
- the pruner's own time, measured inside it (``pruner.stats``): mask application and gradient
  masking in the optimizer hooks, and selection in ``epoch_end`` (scoring, switching,
  sampling, and for MFP/FPPMO the evaluation of candidate masks on ``--val-batches`` held-out
  batches), as a fraction of the epoch;
- a dense epoch without a pruner, timed in the same process, for reference (its difference
  to the pruned epoch is within the machine's noise: the in-pruner timers are the measurement).

    python benchmarks/soft_overhead.py --threads 2 --epochs 3 --steps 20 --batch 64

Wall-clock timings depend on the machine's load; run it on an idle machine for stable numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fxprune
from fxprune.models import create_model


def batches(n: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,),
                                                                        generator=g))
            for _ in range(n)]


def epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, data: list,
          pruner: fxprune.SoftPruner | None) -> tuple[float, float]:
    """(wall, process CPU) seconds of one epoch."""
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if pruner is not None:
        pruner.epoch_end()
    return time.perf_counter() - t0, time.process_time() - c0


def run(method: str, args: argparse.Namespace, train: list, val: list) -> dict:
    torch.manual_seed(0)
    model = create_model("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pruner = None
    if method != "dense":
        extra = {"data": val} if method in ("mfp", "fppmo") else {}
        pruner = fxprune.SoftPruner(model, args.ratio, method=method, residual=args.residual,
                                    example_inputs=train[0][0][:1], **extra)
        pruner.attach(opt)
    rows = []
    for e in range(args.epochs):
        before = dict(pruner.stats) if pruner is not None else {}
        wall, cpu = epoch(model, opt, train, pruner)
        if e == 0:
            continue  # warm-up
        row = {"wall": wall, "cpu": cpu}
        if pruner is not None:
            for k in ("mask_s", "mask_cpu_s", "select_s", "select_cpu_s"):
                row[k] = pruner.stats[k] - before[k]
        rows.append(row)
    out = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    if pruner is not None:
        out["kept_macs"] = pruner.kept_macs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="dense,sfp,fpgm,mfp,fppmo")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--val-batches", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.4)
    ap.add_argument("--residual", default="coupled", choices=["coupled", "scatter"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--project-steps", type=int, default=391,
                    help="also project the overhead to an epoch of this many steps (CIFAR-10 at "
                         "batch 128: 391): per-step costs scale, the selection cost does not")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is a warm-up)")
    torch.set_num_threads(args.threads)
    train = batches(args.steps, args.batch, 0)
    val = batches(args.val_batches, args.batch, 1)
    print(f"resnet20, 32x32, batch {args.batch}, {args.steps} steps/epoch, ratio {args.ratio}, "
          f"residual={args.residual}, {args.threads} threads, median of {args.epochs - 1} "
          "epochs after a warm-up epoch")
    print("CPU: process CPU seconds (robust on a shared machine); wall: elapsed seconds")
    n, proj = args.steps, args.project_steps
    print("| method | epoch CPU s (wall s) | masks in hooks, CPU ms (wall) | epoch_end selection, "
          f"CPU ms (wall) | overhead CPU (wall) | projected to {proj} steps | kept MACs |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        r = run(method, args, train, val)
        if method == "dense":
            print(f"| dense (no pruner) | {r['cpu']:.2f} ({r['wall']:.2f}) | - | - | - | - "
                  "| 1.000 |")
            continue
        frac_cpu = (r["mask_cpu_s"] + r["select_cpu_s"]) / r["cpu"]
        frac = (r["mask_s"] + r["select_s"]) / r["wall"]
        step = (r["cpu"] - r["select_cpu_s"]) / n  # a training step with its hooks
        projected = (r["mask_cpu_s"] / n * proj + r["select_cpu_s"]) / (step * proj
                                                                         + r["select_cpu_s"])
        print(f"| {method} | {r['cpu']:.2f} ({r['wall']:.2f}) | {1e3 * r['mask_cpu_s']:.1f} "
              f"({1e3 * r['mask_s']:.1f}) | {1e3 * r['select_cpu_s']:.1f} "
              f"({1e3 * r['select_s']:.1f}) | {100 * frac_cpu:.2f}% ({100 * frac:.2f}%) | "
              f"{100 * projected:.2f}% | {r['kept_macs']:.3f} |")


if __name__ == "__main__":
    main()
