"""What distillation costs during fine-tuning: time per epoch and peak memory of ``fit`` on a
pruned ResNet-20 (Fashion-MNIST, the ``cpu`` preset's data and batch, 5,000 training images,
0.5 of the MACs cut by ``compress``), without a teacher, with logit distillation (``kd``:
``distill=0.5``) and with logit and feature distillation (``kd+fkd``: ``feature_distill=1``).

Each configuration runs in its own process, the configurations interleaved over ``--rounds``
rounds on one thread; the table gives the median over rounds. Memory: the process's resident
set (``VmRSS``) sampled every 5 ms while ``fit`` runs, its peak minus its value right before
``fit`` (the interpreter, torch, the data and both models are loaded by then, in every
configuration alike).

Run: PYTHONPATH=$PWD python -P benchmarks/distill_cost.py [--rounds 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import threading
import time
from pathlib import Path

CONFIGS = {"none": {}, "kd": {"distill": 0.5},
           "kd+fkd": {"distill": 0.5, "feature_distill": 1.0}}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Peak:
    """The highest VmRSS seen by a sampling thread while the ``with`` block runs."""

    def __enter__(self) -> _Peak:
        self.peak, self._stop = _rss_mib(), threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _one(name: str, epochs: int, out: mp.Queue) -> None:
    import dataclasses

    import torch

    import fxprune
    from fxprune.bench.accuracy.presets import PRESETS
    from fxprune.bench.accuracy.rows import load_splits
    from fxprune.models import create_model
    from fxprune.train import data, fit
    from fxprune.train.fit_options import cpu_has_native_bf16

    torch.set_num_threads(1)
    s = load_splits(dataclasses.replace(PRESETS["cpu"], subset=5000), 0)
    train, _, _ = data.make_loaders(s, 128)
    torch.manual_seed(0)
    dense = create_model("resnet20", in_chans=s.in_chans, num_classes=s.num_classes).eval()
    small = fxprune.compress(dense, target_flops=0.5, criterion="l2",
                             example_inputs=(s.example_input(),))
    kw = dict(CONFIGS[name])
    if kw:
        kw["teacher"] = dense
    amp = "bf16" if cpu_has_native_bf16() else None
    base = _rss_mib()
    t, c = time.perf_counter(), time.process_time()
    with _Peak() as peak:
        fit(small, train, None, epochs, lr=0.01, amp=amp, progress=False, **kw)
    out.put((name, (time.perf_counter() - t) / epochs, (time.process_time() - c) / epochs,
             base, peak.peak - base, amp))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    got: dict[str, list[tuple]] = {n: [] for n in CONFIGS}
    for r in range(args.rounds):
        for name in CONFIGS:
            q = ctx.Queue()
            p = ctx.Process(target=_one, args=(name, args.epochs, q))
            p.start()
            res = q.get()
            p.join()
            got[name].append(res[1:])
            print(f"round {r + 1}: {name}: {res[1]:.1f} s/epoch wall, {res[2]:.1f} CPU, "
                  f"fit's peak +{res[4]:.0f} MiB over {res[3]:.0f}, amp {res[5]}", flush=True)
    ref = statistics.median(v[0] for v in got["none"])
    ref_mem = statistics.median(v[3] for v in got["none"])
    print("\n| fine-tuning | wall s / epoch | CPU s / epoch | vs none | fit's peak RSS, MiB "
          "| vs none |")
    print("|---|---|---|---|---|---|")
    for name, v in got.items():
        wall = statistics.median(x[0] for x in v)
        cpu = statistics.median(x[1] for x in v)
        mem = statistics.median(x[3] for x in v)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {wall / ref:.2f}x | {mem:.0f} | "
              f"{mem - ref_mem:+.0f} |")


if __name__ == "__main__":
    main()
