"""Is the pruned model really faster? timm resnet50, MACs cut to 50%, CPU latency side by side.

Prunes a randomly initialised timm resnet50 to 50% of its MACs with fxprune
(``target_flops=0.5``: plain, with each ``--round-to`` width multiple, and with
``allocation="global"`` and the last ``--round-to``) and, if installed,
with Torch-Pruning at the same MACs (MetaPruner, magnitude p=1, the classifier ignored; its
ratio is bisected to the same MACs, plain and with ``round_to`` = the largest ``--round-to``),
then times every model in ONE process, interleaved (the order alternates every round), after
warm-up: median and interquartile range of ``--repeat`` runs at batch 8, 224x224,
``--threads`` threads, with the minor page faults per run. Also reports pruning time
(fxprune and Torch-Pruning at ratio 0.3).

glibc's malloc hands large activation buffers back to the OS after every forward pass, and the
kernel zeroes fresh pages on the next one (~60k page faults, a quarter of resnet50's time here):
a cost per activation byte, not per MAC. Run it twice, as is and with the allocator keeping its
memory, to see both::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 \
        python benchmarks/latency_resnet50.py --threads 2 --repeat 15

    python benchmarks/latency_resnet50.py --threads 2 --repeat 15
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import warnings

import timm
import torch

import fxprune


def fresh() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet50").eval()


def tp_prune(ratio: float, x: torch.Tensor, round_to: int | None = None
             ) -> tuple[torch.nn.Module, float]:
    import torch_pruning as tp

    m = fresh()
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[m.get_classifier()],
                                  round_to=round_to)
    pruner.step()
    return m, time.perf_counter() - t


def tp_at_macs(target: float, x: torch.Tensor, base: int, round_to: int | None = None
               ) -> tuple[torch.nn.Module, float]:
    """Bisect Torch-Pruning's ratio until its MACs are within 0.5% of ``target``."""
    lo, hi = 0.0, 0.6
    best: tuple[torch.nn.Module, float] | None = None
    for _ in range(14):
        mid = (lo + hi) / 2
        m, _ = tp_prune(mid, x, round_to)
        frac = fxprune.count(m, x).macs / base
        if best is None or abs(frac - target) < abs(best[1] - target):
            best = (m, frac)
        if abs(frac - target) < 0.005:
            break
        lo, hi = (mid, hi) if frac > target else (lo, mid)
    assert best is not None
    return best


def quartiles(v: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(v, n=4)
    return q[0], q[2]


def time_models(models: dict[str, torch.nn.Module], x: torch.Tensor, repeat: int
                ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Two warm-up calls each, then ``repeat`` interleaved rounds: seconds and page faults."""
    runs: dict[str, list[float]] = {k: [] for k in models}
    faults = dict.fromkeys(models, 0)
    with torch.no_grad():
        for m in models.values():
            for _ in range(2):
                m(x)
        for i in range(repeat):
            order = list(models) if i % 2 == 0 else list(reversed(models))
            for k in order:
                f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t = time.perf_counter()
                models[k](x)
                runs[k].append(time.perf_counter() - t)
                faults[k] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f
    return runs, faults


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--round-to", default="16",
                    help="comma-separated width multiples to measure besides no rounding")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    roundings = [int(r) for r in args.round_to.split(",") if r.strip()]
    x1 = torch.randn(1, 3, 224, 224)
    base = fxprune.count(fresh(), x1).macs

    models: dict[str, torch.nn.Module] = {"original": fresh()}
    macs: dict[str, float] = {"original": 1.0}
    configs = [("uniform", None), *(("uniform", rt) for rt in roundings),
               *(("global", rt) for rt in roundings[-1:])]
    for alloc, rt in configs:
        name = "fxprune" + (f" {alloc}" if alloc != "uniform" else "") + (
            f" round_to={rt}" if rt else "")
        models[name] = fxprune.compress(fresh(), target_flops=0.5, round_to=rt,
                                        allocation=alloc, example_inputs=x1).eval()
        macs[name] = fxprune.count(models[name], x1).macs / base
    t_fx = []
    for _ in range(3):
        m = fresh()
        t = time.perf_counter()
        fxprune.compress(m, 0.3, example_inputs=x1, verify=False)  # Torch-Pruning has no oracle
        t_fx.append(time.perf_counter() - t)
    print(f"pruning time at ratio 0.3 (median of 3): fxprune {statistics.median(t_fx):.3f} s",
          end="")
    if not args.no_tp:
        try:
            t_tp = statistics.median(tp_prune(0.3, x1)[1] for _ in range(3))
            print(f", Torch-Pruning {t_tp:.3f} s (Torch-Pruning/fxprune "
                  f"{t_tp / statistics.median(t_fx):.2f}x)")
            for rt in [None, max(roundings)] if roundings else [None]:
                name = "torch-pruning" if rt is None else f"torch-pruning round_to={rt}"
                models[name], macs[name] = tp_at_macs(0.5, x1, base, rt)
                models[name].eval()
        except ImportError:
            print("\ntorch-pruning not installed (pip install fxprune[bench]); skipped")
    else:
        print()

    x = torch.randn(args.batch, 3, 224, 224)
    runs, faults = time_models(models, x, args.repeat)
    med = {k: statistics.median(v) for k, v in runs.items()}
    malloc = {k: os.environ.get(k, "-") for k in ("MALLOC_MMAP_THRESHOLD_",
                                                  "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")}
    print(f"latency, batch {args.batch}, 224x224, {torch.get_num_threads()} threads, "
          f"median [IQR] of {args.repeat} interleaved runs; allocator settings {malloc}:")
    for k, v in med.items():
        q1, q3 = quartiles(runs[k])
        print(f"  {k:28s} MACs {macs[k]:.3f}  {v * 1000:7.1f} ms [{q1 * 1000:.0f}-"
              f"{q3 * 1000:.0f}]  speed-up x{med['original'] / v:.2f}  "
              f"page faults/run {faults[k] / args.repeat:.0f}")


if __name__ == "__main__":
    main()
