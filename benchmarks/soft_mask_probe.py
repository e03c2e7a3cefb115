"""What a soft-pruning method's epoch-end mask does to the network, epoch by epoch.

For each epoch end of ``SoftPruner(method=..., variant=...)`` fine-tuning the ``cpu-long``
preset's seed-0 dense ResNet-20 (Fashion-MNIST, 15,000 training images) at 0.5 of the MACs:
validation accuracy just before the mask, right after it, and after recalibrating BatchNorm on 20
training batches (on a copy), plus the share of all conv weight norm the mask zeroed. Only the
validation split is read (the 12 batches after the ones that score masks).

It shows why ``sfp (paper)`` collapses: the filters its mask zeroes have regrown to a tiny norm,
but BatchNorm (scale-invariant per filter) had made full-strength features of them.

Needs the dense checkpoint in ``benchmarks/results_long/dense/`` (see docs/accuracy.md).
Run: PYTHONPATH=$PWD python -P benchmarks/soft_mask_probe.py --epochs 4 --variant paper \
         --out benchmarks/results_long/soft_mask_probe_sfp_paper_e4.json
"""

import argparse
import copy
import dataclasses
import itertools
import json
from pathlib import Path

import torch

from fxprune.bench.accuracy import rows
from fxprune.bench.accuracy.presets import PRESETS
from fxprune.core.recalibrate import recalibrate_bn
from fxprune.models import create_model
from fxprune.train import SoftPruner, data, evaluate


def conv_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: q.detach().clone() for n, q in model.named_parameters() if q.dim() == 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--method", default="sfp")
    ap.add_argument("--variant", default="paper", choices=("paper", "fxprune"))
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense", default="benchmarks/results_long")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    p = dataclasses.replace(PRESETS["cpu-long"], epochs=a.epochs)
    splits = rows.load_splits(p, a.seed)
    train, val, _ = data.make_loaders(splits, p.batch)
    valb = list(itertools.islice(val, p.eval_batches, p.eval_batches + 12))
    x = splits.example_input()
    model = create_model("resnet20", in_chans=splits.in_chans, num_classes=splits.num_classes)
    state = torch.load(rows.dense_path(Path(a.dense), "resnet20", a.seed), weights_only=True)
    model.load_state_dict(state)
    pruner = SoftPruner(model, example_inputs=(x,), seed=a.seed, method=a.method,
                        variant=a.variant, target_flops=a.target)
    epoch_end, records = pruner.epoch_end, []

    def probe(*args, **kwargs):
        was = model.training
        model.eval()
        before, w0 = evaluate(model, valb)[1], conv_weights(model)
        epoch_end(*args, **kwargs)
        w1 = conv_weights(model)
        removed = sum(float((w0[n] - w1[n]).norm() ** 2) for n in w0) ** 0.5
        total = sum(float(w.norm() ** 2) for w in w0.values()) ** 0.5
        after = evaluate(model, valb)[1]
        recal = copy.deepcopy(model)
        recalibrate_bn(recal, train, batches=20)
        rec = {"epoch": pruner.epoch, "acc_before_mask": before, "acc_after_mask": after,
               "acc_after_mask_recal": evaluate(recal, valb)[1],
               "removed_weight_norm_share": removed / total}
        records.append(rec)
        print(json.dumps(rec), flush=True)
        model.train(was)

    pruner.epoch_end = probe
    rows._fit(p, model, train, a.epochs, p.lr, a.seed, pruner=pruner)
    Path(a.out).write_text(json.dumps({"args": vars(a), "split": "validation",
                                       "epochs": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
