"""Choosing a layer's kernel: the dense form or the stripe form, by a timing probe (cached).

:func:`choose` times the candidate modules on the input the layer sees (from the example
inputs), on the layer's device, interleaved (dense, stripe, dense, ...; CPU time of the
calling thread when PyTorch runs one intra-op thread, see :func:`default_clock`), and keeps
the stripe form only when its median is below ``margin`` times the dense median in two
successive measurements: the stripe kernel is never chosen where it measures slower. Results
are cached per (device, dtype, memory format, input shape, conv shape, live pattern) for the
process, so identical layers are probed once.

``policy="density"`` skips the probe: the stripe form is chosen when the live-stripe density
``N' / (O * K * K)`` of the layer is at most ``density`` (default 0.0, i.e. never; the README
table shows where stripes pay off on a given machine, to set it from).
"""

from __future__ import annotations

__all__ = ["choose", "time_module", "default_clock", "clear_cache", "Choice"]

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

_CACHE: dict[Any, Choice] = {}


@dataclass(frozen=True)
class Choice:
    kernel: str  # "dense" or "stripe"
    index: int  # which dense candidate (0: the first), when kernel == "dense"
    dense_s: float | None  # median seconds per call of the best dense candidate (None: no probe)
    stripe_s: float | None
    reason: str


def clear_cache() -> None:
    _CACHE.clear()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_clock(device: torch.device) -> Any:
    """``time.thread_time`` on a CPU with one intra-op thread (the calling thread does all the
    work, and time spent descheduled on a shared machine is not counted), else
    ``time.perf_counter``."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


@torch.no_grad()
def time_module(mods: list[nn.Module], x: Tensor, repeats: int = 7, min_time: float = 2e-3,
                clock: Any = None) -> list[float]:
    """Median seconds per call of each module on ``x``, measured interleaved (``clock``:
    :func:`default_clock` of ``x``'s device unless given)."""
    dev = x.device
    clock = clock or default_clock(dev)
    for m in mods:  # warm-up
        m(x)
    _sync(dev)
    # calls per sample: enough that one sample of the slowest module takes ~min_time
    t0 = clock()
    for m in mods:
        m(x)
    _sync(dev)
    n = max(1, int(min_time / max((clock() - t0) / len(mods), 1e-7)))
    samples: list[list[float]] = [[] for _ in mods]
    for _ in range(repeats):
        for k, m in enumerate(mods):
            m(x)  # untimed: the previous module's memory traffic must not be billed to this one
            _sync(dev)
            t = clock()
            for _ in range(n):
                m(x)
            _sync(dev)
            samples[k].append((clock() - t) / n)
    return [statistics.median(s) for s in samples]


def _timed(mods: list[nn.Module], x: Tensor, repeats: int) -> list[float]:
    flags = [m.training for m in mods]
    for m in mods:
        m.eval()
    try:
        return time_module(mods, x, repeats=repeats)
    finally:
        for m, f in zip(mods, flags):
            m.train(f)


def _key(x: Tensor, conv: nn.Conv2d, live: Tensor) -> Any:
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and \
        not x.is_contiguous()
    return (str(x.device), x.dtype, cl, tuple(x.shape), conv.in_channels, conv.out_channels,
            conv.kernel_size, conv.stride, conv.bias is not None,
            live.flatten().to(torch.uint8).cpu().numpy().tobytes())


def choose(dense: nn.Module | list[nn.Module], stripe: nn.Module, conv: nn.Conv2d,
           live: Tensor, x: Tensor, *, policy: str = "probe", density: float = 0.0,
           margin: float = 0.95, repeats: int = 7) -> Choice:
    """Pick ``"dense"`` (and which of the dense candidates) or ``"stripe"`` for one layer."""
    denses = list(dense) if isinstance(dense, (list, tuple)) else [dense]
    d = float(live.float().mean()) if live.numel() else 0.0
    if policy in ("dense", "stripe"):
        return Choice(policy, 0, None, None, "forced")
    if policy == "density":
        kernel = "stripe" if d <= density else "dense"
        return Choice(kernel, 0, None, None,
                      f"density {d:.3f} {'<=' if d <= density else '>'} {density}")
    key = (_key(x, conv, live), len(denses))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit

    def measure() -> tuple[int, float, float]:
        t = _timed([*denses, stripe], x, repeats)
        best = min(range(len(denses)), key=t.__getitem__)
        return best, t[best], t[-1]

    best, td, ts = measure()
    wins = ts < margin * td
    if wins:  # a stripe win must hold in a second, independent measurement too
        best, td, ts = measure()
        wins = ts < margin * td
    out = Choice("stripe" if wins else "dense", best, td, ts,
                 f"probe: dense {td * 1e6:.0f} us, stripe {ts * 1e6:.0f} us")
    _CACHE[key] = out
    return out
