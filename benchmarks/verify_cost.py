"""What verification (the default of ``fxprune.compress``) costs in pruning time.

    python benchmarks/verify_cost.py --models resnet50 resnet18 --ratio 0.5 --threads 2 --repeat 7

For each timm model (random weights, its default input size, batch 1): one warm-up call, then
``compress(model, ratio, verify=True)`` and ``verify=False`` alternately, ``--repeat`` times
each; prints the medians, their IQRs and the difference. On a shared machine the numbers are
noisy: compare the two columns of one run, not runs on different days.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import fxprune


def _time(model: torch.nn.Module, ratio: float, verify: bool) -> float:
    t = time.perf_counter()
    fxprune.compress(model, ratio, verify=verify)
    return time.perf_counter() - t


def _iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"ratio {args.ratio}, {args.threads} threads, median (IQR) of {args.repeat} "
          "alternating runs each")
    print(f"{'model':<12} {'verify=False':>16} {'verify=True':>16} {'cost of verify':>16}")
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        _time(model, args.ratio, True)  # warm-up: imports, allocator, caches
        plain, checked = [], []
        for _ in range(args.repeat):
            plain.append(_time(model, args.ratio, False))
            checked.append(_time(model, args.ratio, True))
        a, b = statistics.median(plain), statistics.median(checked)
        print(f"{name:<12} {a:>8.3f} s ({_iqr(plain):.3f}) {b:>8.3f} s ({_iqr(checked):.3f})"
              f" {b - a:>+8.3f} s ({b / a - 1:+.0%})")


if __name__ == "__main__":
    main()
