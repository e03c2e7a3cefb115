"""Accuracy at equal measured latency: ``target_latency`` against ``target_flops`` (issue 14).

For the CIFAR ResNet-20 of the accuracy benchmark (Fashion-MNIST, 1x28x28), per seed, from the
dense checkpoint the ``cpu`` preset trained (``benchmarks/results/dense/resnet20_s{seed}.pt``;
run ``fxprune bench accuracy --preset cpu --out benchmarks/results`` first):

1. ``compress(dense, target_latency=T, batch=B, threads=N)``;
2. ``compress(dense, target_flops=F, round_to="auto", allocation="global")`` with ``F``
   bisected until its measured latency matches the first model's (``latency_target.py``'s
   ``macs_at_time``);
3. both fine-tuned with the ``cpu`` preset's recipe (4 epochs, lr 0.01, cosine, bf16) and
   evaluated on the test set.

Run: ``python benchmarks/latency_accuracy.py --seeds 0 1 2 --out FILE.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency_target import macs_at_time, ratio_of  # noqa: E402

import fxprune  # noqa: E402
from fxprune.bench.accuracy import PRESETS  # noqa: E402
from fxprune.bench.accuracy.rows import _fit, _model, dense_path, load_splits  # noqa: E402
from fxprune.train import data, evaluate  # noqa: E402


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    p = PRESETS["cpu"]
    splits = load_splits(p, seed)
    train, _, test = data.make_loaders(splits, p.batch)
    ex = splits.example_input()
    x = ex.expand(args.batch, *ex.shape[1:]).contiguous()
    dense = _model("resnet20", splits)
    dense.load_state_dict(torch.load(dense_path(args.results, "resnet20", seed),
                                     weights_only=True))
    dense.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lat = fxprune.compress(dense, target_latency=args.target, example_inputs=(ex,),
                               batch=args.batch, threads=args.threads)
    r_lat = ratio_of(dense, lat, x, args)
    by_macs, f, r_macs = macs_at_time(dense, ex, x, r_lat, args)
    base = fxprune.count(dense, ex)
    row = {"seed": seed, "latency_ratio_latency_model": r_lat,
           "latency_ratio_flops_model": r_macs, "target_flops_matched": f,
           "round_to": lat.meta["fxprune.allocation"]["round_to"]}
    for tag, m in (("latency", lat), ("flops", by_macs)):
        c = fxprune.count(m, ex)
        row[f"macs_kept_{tag}"] = c.macs / base.macs
        row[f"params_kept_{tag}"] = c.params / base.params
        torch.set_num_threads(1)
        _fit(p, m, train, p.epochs, p.lr, seed)
        row[f"acc_{tag}"] = evaluate(m, test)[1]
        torch.set_num_threads(args.threads)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--target", type=float, default=0.5)
    a.add_argument("--batch", type=int, default=64)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--repeat", type=int, default=15)
    a.add_argument("--warmup", type=int, default=3)
    a.add_argument("--bisect", type=int, default=10)
    a.add_argument("--match", type=float, default=0.02)
    a.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    a.add_argument("--out", type=Path, default=Path("bench_out/latency_accuracy.json"))
    args = a.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run_seed(s, args) for s in args.seeds]
    summary = {}
    for k in ("acc_latency", "acc_flops", "macs_kept_latency", "macs_kept_flops",
              "latency_ratio_latency_model", "latency_ratio_flops_model"):
        v = [r[k] for r in rows]
        summary[k] = [statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "rows": rows, "summary": summary}, indent=1))
    for k, (m, s) in summary.items():
        print(f"{k}: {m:.4f} ± {s:.4f}")


if __name__ == "__main__":
    main()
