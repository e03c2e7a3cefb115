"""Is the pruned model really faster? timm resnet50, MACs cut to 50%, CPU latency side by side.

Prunes a randomly initialised timm resnet50 to 50% of its MACs with fxprune
(``target_flops=0.5``, and again with ``round_to=8``) and, if installed, with Torch-Pruning
at the same MACs (MetaPruner, magnitude p=1, the classifier ignored; its ratio is bisected to
the same MACs), then times the original and the pruned models in ONE process, interleaved,
after warm-up: median of ``--repeat`` runs at batch 8, 224x224, ``--threads`` threads. Also
reports pruning time.

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


def tp_prune(ratio: float, x: torch.Tensor) -> tuple[torch.nn.Module, float]:
    import torch_pruning as tp

    m = fresh()
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[m.get_classifier()])
    pruner.step()
    return m, time.perf_counter() - t


def tp_at_macs(target: float, x: torch.Tensor, base: int) -> tuple[torch.nn.Module, float, float]:
    lo, hi = 0.0, 0.6
    best = None
    for _ in range(12):
        mid = (lo + hi) / 2
        m, dt = tp_prune(mid, x)
        frac = fxprune.count(m, x).macs / base
        best = (m, dt, frac)
        if abs(frac - target) < 0.005:
            break
        lo, hi = (mid, hi) if frac > target else (lo, mid)
    assert best is not None
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    x1 = torch.randn(1, 3, 224, 224)
    base = fxprune.count(fresh(), x1).macs

    times = []
    for _ in range(3):
        m = fresh()
        t = time.perf_counter()
        fx_model = fxprune.compress(m, target_flops=0.5, example_inputs=x1)
        times.append(time.perf_counter() - t)
    models = {"original": fresh(), "fxprune": fx_model.eval()}
    rounded = fxprune.compress(fresh(), target_flops=0.5, round_to=8, example_inputs=x1)
    models["fxprune round_to=8"] = rounded.eval()
    print(f"fxprune: MACs {fxprune.count(fx_model, x1).macs / base:.3f} of the original "
          f"({fxprune.count(rounded, x1).macs / base:.3f} with round_to=8), pruning (target "
          f"search included) {statistics.median(times):.2f} s")
    t_fx_ratio = []
    for _ in range(3):
        m = fresh()
        t = time.perf_counter()
        fxprune.compress(m, 0.3, example_inputs=x1)
        t_fx_ratio.append(time.perf_counter() - t)
    print(f"fxprune: pruning at a fixed ratio 0.3 (trace+analyze+rewrite) "
          f"{statistics.median(t_fx_ratio):.3f} s")
    if not args.no_tp:
        try:
            tp_model, _, frac = tp_at_macs(0.5, x1, base)
            t_tp = statistics.median(tp_prune(0.3, x1)[1] for _ in range(3))
            models["torch-pruning"] = tp_model.eval()
            print(f"torch-pruning: MACs {frac:.3f} of the original; pruning at ratio 0.3 "
                  f"{t_tp:.3f} s (fxprune/torch-pruning time ratio "
                  f"{statistics.median(t_fx_ratio) / t_tp:.2f})")
        except ImportError:
            print("torch-pruning not installed (pip install fxprune[bench]); skipped")

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
          f"median of {args.repeat} interleaved runs:")
    for k, v in med.items():
        print(f"  {k:20s} {v * 1000:8.1f} ms   speed-up x{med['original'] / v:.2f}")


if __name__ == "__main__":
    main()
