"""Stripe-wise pruning latency: finalized layers/models vs the dense original vs dense-with-zeros.

Per layer (CIFAR-shaped convs) and per model (ResNet-20 / VGG-16 CIFAR, batch 1 and --batch),
at several live-stripe densities. Skeletons are random (each stripe lives with probability
``density``; no filter is forced dead), so this measures the kernels, not what training learns;
a trained SWP model also loses whole filters and positions, which turn into plain dense
savings (steps b and c of the rewrite).

Columns:
* ``dense``: the original conv / model; ``zeros``: the same with the dead stripes baked in as
  zeros (the folded model before any rewrite);
* ``stripe``: the position-grouped StripeConv2d forced for every layer;
* ``b+c only`` (models): ``finalize(kernel="dense")``, the channel clean-up and dead positions
  without any stripe kernel;
* ``final``: what ``finalize(kernel="probe")`` emits (the faster form per layer);
* ``stripe MMAC``: SWP's convention (``N' * C * Ho * Wo``, FLOPs / 2); ``meas MMAC``: MACs
  measured with ``fxprune.count`` on the finalized model.

Timings are interleaved medians (``fxprune.stripes.probe.time_module``) with
``torch.set_num_threads(--threads)`` (with one thread: the thread's CPU time, which leaves out
time spent descheduled on a shared machine), inputs and weights channels_last (the fast layout of
PyTorch's CPU convs); on a shared machine they are noisy.

    OMP_NUM_THREADS=1 python -P benchmarks/stripes_latency.py --threads 1
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
from tabulate import tabulate

import fxprune
from fxprune.models import create_model
from fxprune.stripes import STRIPES, StripePruner
from fxprune.stripes.forms import dense_form, stripe_form, stripe_macs
from fxprune.stripes.probe import choose, clear_cache, time_module

CL = torch.channels_last
LAYERS = [  # (name, C, O, K, stride, H)
    ("c64 32x32", 64, 64, 3, 1, 32),
    ("c128 16x16", 128, 128, 3, 1, 16),
    ("c256 8x8", 256, 256, 3, 1, 8),
    ("c64->128 s2", 64, 128, 3, 2, 32),
    ("c512 4x4", 512, 512, 3, 1, 4),
]


def random_live(o: int, k: int, density: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(o, k, k, generator=gen) < density


def layer_rows(densities: list[float], batch: int, repeats: int) -> list[list]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, c, o, k, s, h in LAYERS:
        conv = nn.Conv2d(c, o, k, stride=s, padding=k // 2, bias=False).eval()
        conv = conv.to(memory_format=CL)
        x = torch.randn(batch, c, h, h).to(memory_format=torch.channels_last)
        ho = (h - 1) // s + 1
        for d in densities:
            live = random_live(o, k, d, gen)
            zeros = copy.deepcopy(conv)
            with torch.no_grad():
                zeros.weight.mul_(live.unsqueeze(1))
            dense = dense_form(zeros, live).to(memory_format=CL)
            stripe = stripe_form(zeros, live).to(memory_format=CL)
            clear_cache()
            pick = choose(dense, stripe, zeros, live, x, repeats=repeats)
            final = stripe if pick.kernel == "stripe" else dense
            t = time_module([conv, zeros, stripe, final], x, repeats=repeats)
            rows.append([name, batch, f"{float(live.float().mean()):.2f}",
                         *(f"{v * 1e6:.0f}" for v in t), pick.kernel,
                         f"{t[0] / t[3]:.2f}x",
                         f"{stripe_macs(live, c, (ho, ho)) / 1e6:.2f}",
                         f"{o * c * k * k * ho * ho / 1e6:.2f}"])
    return rows


def model_rows(names: list[str], densities: list[float], batch: int, repeats: int
               ) -> list[list]:
    rows = []
    for mname in names:
        for d in densities:
            model = create_model(mname).eval().to(memory_format=CL)
            x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
            dense = copy.deepcopy(model)
            pruner = StripePruner(model, example_inputs=(x,))
            gen = torch.Generator().manual_seed(1)
            for m in pruner._convs().values():
                with torch.no_grad():
                    m.fs.mul_(random_live(m.fs.shape[0], m.fs.shape[1], d, gen))
            pruner.apply_masks()
            clear_cache()
            final = pruner.finalize(kernel="probe")
            stripe = pruner.finalize(kernel="stripe")
            only_dense = pruner.finalize(kernel="dense")
            zeros = fxprune.stripes.fold(model, pruner.delta)[0].eval().to(memory_format=CL)
            t = time_module([dense, zeros, stripe, only_dense, final], x, repeats=repeats)
            rep = final.meta[STRIPES]
            n_stripe = sum(r.kernel == "stripe" for r in rep.values())
            conv_dense = sum(r.dense_macs for r in rep.values())
            conv_swp = sum(r.stripe_macs for r in rep.values())
            meas = fxprune.count(final, (x[:1],))
            base = fxprune.count(dense, (x[:1],))
            rows.append([mname, batch, f"{pruner.live_density():.2f}",
                         *(f"{v * 1e3:.2f}" for v in t), f"{n_stripe}/{len(rep)}",
                         f"{t[0] / t[4]:.2f}x", f"{conv_swp / 1e6:.1f}",
                         f"{conv_dense / 1e6:.1f}", f"{meas.conv_macs / 1e6:.1f}",
                         f"{base.conv_macs / 1e6:.1f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.3, 0.1, 0.05])
    ap.add_argument("--models", nargs="+", default=["resnet20", "vgg16_bn"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-layers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = "thread CPU time" if args.threads == 1 else "wall clock"
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} thread(s), channels_last, interleaved medians of {args.repeats} "
          f"({clock})")
    if not args.skip_layers:
        rows = []
        for b in sorted({1, args.batch}):
            rows += layer_rows(args.densities, b, args.repeats)
        print(tabulate(rows, headers=["layer", "batch", "density", "dense us", "zeros us",
                                      "stripe us", "final us", "chosen", "speed-up",
                                      "stripe MMAC", "dense MMAC"]))
    rows = []
    for b in sorted({1, args.batch}):
        rows += model_rows(args.models, args.densities, b, args.repeats)
    print(tabulate(rows, headers=["model", "batch", "density", "dense ms", "zeros ms",
                                  "stripe ms", "b+c only ms", "final ms", "stripe layers",
                                  "speed-up",
                                  "conv stripe MMAC", "conv dense MMAC", "final meas MMAC",
                                  "dense meas MMAC"]))


if __name__ == "__main__":
    main()
