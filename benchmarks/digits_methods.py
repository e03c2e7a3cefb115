"""Every training-time method against `random` at the same MACs, on scikit-learn's digits.

Issue 11's check that each method trains, finalizes exactly and beats random selection at the
same budget. It is not the accuracy benchmark (that one is Fashion-MNIST, more epochs and
Torch-Pruning): digits is 1,797 8x8 images, so the numbers only separate a method that works
from one that does not.

Protocol, per seed: a dense CIFAR ResNet-20 (in_chans=1) trained ``--dense-epochs`` epochs;
every method starts from a copy of it and gets ``--epochs`` epochs at ``--lr`` (cosine), the
same for all, with the papers' residual structure (``residual="scatter"``): one-shot methods
(`compress` then fine-tune) and soft methods (`SoftPruner` during those epochs, then
`finalize()`, which checks the compact model against the masked one). MFP and FPPMO score
masks on the validation split carved from train; the test split is used only for the
reported accuracy.

    python benchmarks/digits_methods.py --seeds 0 1 2 --out benchmarks/results/digits_methods.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

import fxprune
from fxprune.models import create_model
from fxprune.train import data, evaluate, fit

METHODS = {  # name: (kind, SoftPruner method or compress criterion, criterion for soft)
    "random (one-shot)": ("oneshot", "random", None),
    "l1 (one-shot)": ("oneshot", "l1", None),
    "random (soft)": ("soft", "soft", "random"),
    "sfp": ("soft", "sfp", None),
    "fpgm": ("soft", "fpgm", None),
    "mfp": ("soft", "mfp", None),
    "fppmo": ("soft", "fppmo", None),
}


def run_seed(seed: int, args: argparse.Namespace) -> list[dict]:
    splits = data.load_data("digits", seed=seed)
    train, val, test = data.make_loaders(splits, args.batch)
    val_batches = list(val)
    x = splits.example_input()
    torch.manual_seed(seed)
    dense = create_model("resnet20", in_chans=splits.in_chans, num_classes=splits.num_classes)
    fit(dense, train, val, args.dense_epochs, lr=0.1, seed=seed, progress=False)
    dense_acc = evaluate(dense, test)[1]
    dense_macs = fxprune.count(dense, (x,)).macs
    rows = [{"method": "dense", "seed": seed, "acc": dense_acc, "macs_kept": 1.0,
             "seconds": 0.0}]
    for name, (kind, how, crit) in METHODS.items():
        torch.manual_seed(seed)
        model = copy.deepcopy(dense)
        t = time.perf_counter()
        if kind == "oneshot":
            small = fxprune.compress(model, args.ratio, criterion=how, example_inputs=(x,),
                                     seed=seed, residual=args.residual)
            fit(small, train, val, args.epochs, lr=args.lr, seed=seed, progress=False)
        else:
            kw = {"criterion": crit} if crit else {}
            if how in ("mfp", "fppmo"):
                kw["data"] = val_batches
            pruner = fxprune.SoftPruner(model, args.ratio, method=how, example_inputs=(x,),
                                        seed=seed, residual=args.residual, **kw)
            fit(model, train, val, args.epochs, lr=args.lr, pruner=pruner, seed=seed,
                progress=False, bn_recalibration=args.recalibrate_bn)
            small = pruner.finalize()
        rows.append({"method": name, "seed": seed, "acc": evaluate(small, test)[1],
                     "macs_kept": fxprune.count(small, (x,)).macs / dense_macs,
                     "seconds": time.perf_counter() - t})
    return rows


def table(rows: list[dict]) -> str:
    from tabulate import tabulate

    out = []
    for name in ["dense", *METHODS]:
        r = [x for x in rows if x["method"] == name]
        accs = [x["acc"] * 100 for x in r]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        out.append([name, f"{statistics.mean(accs):.2f} ± {sd:.2f}",
                    f"{statistics.mean(x['macs_kept'] for x in r):.3f}",
                    f"{statistics.mean(x['seconds'] for x in r):.1f}", len(r)])
    return tabulate(out, ["method", "test acc % (mean ± std)", "MACs kept", "s / run", "seeds"],
                    tablefmt="github")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--dense-epochs", type=int, default=6)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--residual", choices=("coupled", "scatter"), default="scatter",
                   help="default scatter: the papers' structure (MACs then follow the counts)")
    p.add_argument("--recalibrate-bn", type=int, default=10, metavar="N",
                   help="soft methods: recompute BN statistics on N batches after each mask "
                        "update (fit's bn_recalibration; default 10)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("bench_out/digits_methods.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for seed in args.seeds:
        rows += run_seed(seed, args)
        print(f"seed {seed} done", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"ratio {args.ratio}, residual {args.residual}, dense {args.dense_epochs} epochs, "
          f"then {args.epochs} epochs per method at lr {args.lr} (soft: BN recalibrated on "
          f"{args.recalibrate_bn} batches after each mask update); seeds {args.seeds}")
    print(table(rows))


if __name__ == "__main__":
    main()
