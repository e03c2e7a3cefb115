"""Is the pruned model really faster? timm resnet50, MACs cut to 50%, CPU latency side by side.

Prunes a randomly initialised timm resnet50 to 50% of its MACs with fxprune
(``target_flops=0.5``, plain and with each ``--round-to`` width multiple) and, if installed,
with Torch-Pruning at the same MACs (MetaPruner, magnitude p=1, the classifier ignored; its
ratio is bisected to the same MACs, plain and with ``round_to`` = the largest ``--round-to``),
then times every model in ONE process, interleaved (the order alternates every round), after
warm-up: median and interquartile range of ``--repeat`` runs at batch 8, 224x224,
``--threads`` threads. Also reports pruning time (fxprune and Torch-Pruning at ratio 0.3).

    python benchmarks/latency_resnet50.py --threads 2 --repeat 15
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--round-to", default="8,16",
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
    for rt in [None, *roundings]:
        name = "fxprune" if rt is None else f"fxprune round_to={rt}"
        models[name] = fxprune.compress(fresh(), target_flops=0.5, round_to=rt,
                                        example_inputs=x1).eval()
        macs[name] = fxprune.count(models[name], x1).macs / base
    t_fx = []
    for _ in range(3):
        m = fresh()
        t = time.perf_counter()
        fxprune.compress(m, 0.3, example_inputs=x1)
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
    runs: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            for _ in range(2):
                m(x)
        for i in range(args.repeat):
            order = list(models) if i % 2 == 0 else list(reversed(models))
            for k in order:
                t = time.perf_counter()
                models[k](x)
                runs[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"latency, batch {args.batch}, 224x224, {torch.get_num_threads()} threads, "
          f"median [IQR] of {args.repeat} interleaved runs:")
    for k, v in med.items():
        q1, q3 = quartiles(runs[k])
        print(f"  {k:28s} MACs {macs[k]:.3f}  {v * 1000:7.1f} ms [{q1 * 1000:.0f}-"
              f"{q3 * 1000:.0f}]  speed-up x{med['original'] / v:.2f}")


if __name__ == "__main__":
    main()
