"""Accuracy right after a cut, without training: raw, BatchNorm recalibrated, layers
reconstructed (``fxprune.reconstruct``), and both.

The ``cpu`` preset's dense checkpoints (``benchmarks/results/recipes/dense/``, committed),
Fashion-MNIST, the recipe's cut (``l2`` with group scores, uniform ``target_flops``). Every
accuracy is on the validation split carved from the training set (the batches after the ones
that score masks); the test split is never read. Calibration batches come from the training
split; the loader's shuffle is seeded, so a rerun uses the same batches. One thread. Rows
are appended to ``--out`` as they finish; finished rows are skipped.

Run (the committed file):
    PYTHONPATH=$PWD python -P benchmarks/reconstruct_oneshot.py \
        --out benchmarks/results/reconstruct_oneshot.json
    # the settings sweep (resnet20_b, seed 0):
    PYTHONPATH=$PWD python -P benchmarks/reconstruct_oneshot.py --models resnet20_b --seeds 0 \
        --ridge 1e-4 1e-3 1e-2 --batches 4 8 16 --out benchmarks/results/reconstruct_sweep.json
"""

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import torch

import fxprune
from fxprune.bench.accuracy import rows
from fxprune.bench.accuracy.presets import PRESETS
from fxprune.models import create_model
from fxprune.train import data, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet20_b"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.25])
    ap.add_argument("--ridge", nargs="+", type=float, default=[1e-3])
    ap.add_argument("--batches", nargs="+", type=int, default=[8])
    ap.add_argument("--dense", default="benchmarks/results/recipes")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    p = PRESETS["cpu"]
    out = Path(a.out)
    done = json.loads(out.read_text()) if out.exists() else []
    have = {r["key"] for r in done}
    for seed, model_name in itertools.product(a.seeds, a.models):
        splits = rows.load_splits(p, seed)
        train, val, _ = data.make_loaders(splits, p.batch)
        valb = list(itertools.islice(val, p.eval_batches, None))
        x = splits.example_input()
        dense = create_model(model_name, in_chans=splits.in_chans,
                             num_classes=splits.num_classes)
        state = torch.load(rows.dense_path(Path(a.dense), model_name, seed), weights_only=True)
        dense.load_state_dict(state)
        dense.eval()
        acc_dense = evaluate(dense, valb)[1]
        for target in a.targets:
            small = fxprune.compress(dense, target_flops=target, example_inputs=(x,),
                                     criterion="l2", scoring=p.group_scoring, seed=seed)
            cut = evaluate(small, valb)[1]
            recal = copy.deepcopy(small)
            torch.manual_seed(seed)  # the training loader's shuffle: the same batches each run
            fxprune.recalibrate_bn(recal, train, batches=p.recal_batches)
            acc_recal = evaluate(recal, valb)[1]
            for ridge, batches in itertools.product(a.ridge, a.batches):
                key = f"{model_name}/{target:g}/{seed}/ridge{ridge:g}/batches{batches}"
                if key in have:
                    continue
                rec = copy.deepcopy(small)
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                report = fxprune.reconstruct(rec, dense, train, batches=batches, ridge=ridge,
                                             seed=seed)
                seconds = time.perf_counter() - t0
                acc_rec = evaluate(rec, valb)[1]
                torch.manual_seed(seed)
                fxprune.recalibrate_bn(rec, train, batches=p.recal_batches)
                row = {"key": key, "model": model_name, "target": target, "seed": seed,
                       "ridge": ridge, "batches": batches, "split": "validation",
                       "acc_dense": acc_dense, "acc_cut": cut, "acc_cut_recal": acc_recal,
                       "acc_recon": acc_rec, "acc_recon_recal": evaluate(rec, valb)[1],
                       "recon_seconds": seconds, "layers": len(report),
                       "layers_changed": sum(r["changed"] for r in report.values())}
                done.append(row)
                out.write_text(json.dumps(done, indent=1) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
