"""score_recalibration's cost: one candidate evaluation (MFP's meta-attribute, FPPMO's reward)
with and without recalibrating BatchNorm on 10 training batches first. Fashion-MNIST (the cpu
preset's data, 5,000 training images), batch 128, ResNet-20, 4 validation batches, 1 thread.

Run: PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -P benchmarks/score_recalibration_cost.py
"""

import dataclasses
import time

import torch

from fxprune.bench.accuracy.presets import PRESETS
from fxprune.bench.accuracy.rows import load_splits
from fxprune.models import create_model
from fxprune.train import SoftPruner, data

torch.set_num_threads(1)
s = load_splits(dataclasses.replace(PRESETS["cpu"], subset=5000), 0)
train, val, test = data.make_loaders(s, 128)
vb = [b for _, b in zip(range(4), val)]
x = s.example_input()
for method in ("mfp", "fppmo"):
    for r in (0, 10):
        torch.manual_seed(0)
        m = create_model("resnet20", in_chans=s.in_chans, num_classes=s.num_classes)
        p = SoftPruner(m, target_flops=0.5, method=method, example_inputs=(x,), data=vb,
                       score_recalibration=r, calibration_data=train)
        p.evaluate(p.keep, p.method.attribute)  # warm-up
        t, c = time.perf_counter(), time.process_time()
        for _ in range(5):
            p.evaluate(p.keep, p.method.attribute)
        wall, cpu = (time.perf_counter() - t) / 5, (time.process_time() - c) / 5
        print(f"{method} score_recalibration={r}: one candidate wall {wall:.2f} s, "
              f"CPU {cpu:.2f} s", flush=True)
