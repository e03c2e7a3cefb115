"""Fast training on CPU: measure the options before choosing (issue 12, item 2).

Training throughput (images/s: forward, backward and an SGD step, from the data loader) of the
CIFAR-style ResNet-20 on Fashion-MNIST 28x28, batch 128, for each input path and compute
option, measured in one run, interleaved round by round so that machine noise hits them alike:

- ``per-item``: the DataLoader with torchvision v2 transforms per image (the baseline);
- ``batched``: images in memory, augmented a whole batch at a time (``fxprune.train.batched``);
- ``+channels_last``, ``+bf16`` (autocast; on CPUs with AVX512-BF16/AMX), ``+compile``
  (``torch.compile`` of the model), ``workers=2`` (DataLoader worker processes).

    python benchmarks/cpu_train_speed.py --threads 1 2 --out benchmarks/results/cpu_train_speed.json

The bf16 accuracy check (mixed precision must not move accuracy beyond noise) is
``--accuracy``: a few epochs on a Fashion-MNIST subset in fp32 and in bf16, same seed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from fxprune.models import create_model
from fxprune.train import data


def _variants(compile_: bool) -> dict[str, dict]:
    v = {"per-item": {"batched": False}, "batched": {"batched": True},
         "batched+channels_last": {"batched": True, "cl": True},
         "batched+bf16": {"batched": True, "bf16": True},
         "batched+channels_last+bf16": {"batched": True, "cl": True, "bf16": True},
         "batched, workers=2": {"batched": True, "workers": 2}}
    if compile_:
        v["batched+compile"] = {"batched": True, "compile": True}
    return v


class _Runner:
    def __init__(self, splits: data.DataSplits, opts: dict, batch: int):
        torch.manual_seed(0)
        self.model = create_model("resnet20", in_chans=1, num_classes=10)
        self.cl, self.bf16 = opts.get("cl", False), opts.get("bf16", False)
        if self.cl:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.fwd = torch.compile(self.model) if opts.get("compile") else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.loss = nn.CrossEntropyLoss()
        train, _, _ = data.make_loaders(splits, batch, batched=opts.get("batched", True),
                                        num_workers=opts.get("workers", 0))
        self.loader = train
        self.it = iter(train)

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def steps(self, n: int) -> float:
        """images/s over ``n`` steps."""
        self.model.train()
        t, imgs = time.perf_counter(), 0
        for _ in range(n):
            x, y = self._next()
            if self.cl:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 \
                else contextlib.nullcontext()
            with ctx:
                out = self.fwd(x)
                loss = self.loss(out.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            imgs += len(y)
        return imgs / (time.perf_counter() - t)


def speed(args: argparse.Namespace) -> list[dict]:
    splits = data.load_data("fashion-mnist", seed=0)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runners = {name: _Runner(splits, o, args.batch)
                   for name, o in _variants(args.compile).items()}
        for r in runners.values():  # warm-up (and compilation)
            r.steps(args.warmup)
        samples: dict[str, list[float]] = {n: [] for n in runners}
        for _ in range(args.rounds):
            for name, r in runners.items():
                samples[name].append(r.steps(args.steps))
        base = statistics.median(samples["per-item"])
        for name, s in samples.items():
            med = statistics.median(s)
            rows.append({"threads": threads, "variant": name, "images_per_s": round(med, 1),
                         "vs_per_item": round(med / base, 3),
                         "rounds": [round(v, 1) for v in s]})
            print(f"threads {threads}  {name:28s} {med:8.1f} img/s  x{med / base:.2f}",
                  flush=True)
    return rows


def accuracy(args: argparse.Namespace) -> list[dict]:
    from fxprune.train import evaluate, fit

    splits = data.load_data("fashion-mnist", seed=0)
    sub = torch.randperm(len(splits.train.labels), generator=torch.Generator().manual_seed(0))
    sub = sub[: args.subset]
    splits.train.images, splits.train.labels = (splits.train.images[sub],
                                                splits.train.labels[sub])  # in place: a subset
    train, val, test = data.make_loaders(splits, args.batch)
    rows = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = create_model("resnet20", in_chans=1, num_classes=10)
        t = time.perf_counter()
        fit(model, train, None, args.epochs, lr=0.1, seed=0, progress=False,
            amp="bf16" if bf16 else None)
        acc = evaluate(model, test)[1]
        rows.append({"precision": "bf16" if bf16 else "fp32", "test_acc": acc,
                     "seconds": round(time.perf_counter() - t, 1)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per round and variant")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="include torch.compile")
    p.add_argument("--accuracy", action="store_true", help="also the fp32 vs bf16 check")
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--no-speed", action="store_true", help="only the --accuracy check")
    p.add_argument("--out", type=Path, default=Path("bench_out/cpu_train_speed.json"))
    args = p.parse_args()
    out = {"torch": torch.__version__, "speed": [] if args.no_speed else speed(args)}
    if args.accuracy:
        out["accuracy"] = accuracy(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
