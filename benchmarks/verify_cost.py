"""What verification (the default of ``fxprune.compress``) costs in pruning time.

    python benchmarks/verify_cost.py --models resnet50 resnet18 --ratio 0.5 --threads 2 --repeat 7

For each timm model (random weights, its default input size, batch 1): one warm-up call, then
``compress(model, ratio, verify=True)`` and ``verify=False`` alternately, ``--repeat`` times
each; prints the medians of wall-clock and of CPU time (this process, all threads), their
IQRs and the difference. On a shared, loaded machine wall-clock time mostly measures the other
processes; CPU time is the steadier figure there.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import fxprune


def _time(model: torch.nn.Module, ratio: float, verify: bool) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process, all threads)."""
    t, c = time.perf_counter(), time.process_time()
    fxprune.compress(model, ratio, verify=verify)
    return time.perf_counter() - t, time.process_time() - c


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
    print(f"{'model':<10} {'clock':<5} {'verify=False':>16} {'verify=True':>16} "
          f"{'cost of verify':>17}")
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        _time(model, args.ratio, True)  # warm-up: imports, allocator, caches
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.repeat):
            for verify in (False, True):
                runs[verify].append(_time(model, args.ratio, verify))
        for k, clock in enumerate(("wall", "CPU")):
            plain = [r[k] for r in runs[False]]
            checked = [r[k] for r in runs[True]]
            a, b = statistics.median(plain), statistics.median(checked)
            print(f"{name:<10} {clock:<5} {a:>7.3f} s ({_iqr(plain):.3f}) "
                  f"{b:>7.3f} s ({_iqr(checked):.3f}) {b - a:>+8.3f} s ({b / a - 1:+.0%})")


if __name__ == "__main__":
    main()
