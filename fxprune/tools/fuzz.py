"""Random CNN generator and fuzz driver: every random model must prune *exactly*.

A seed gives a JSON-able *spec* (:func:`random_spec`): a stem, a body of nested blocks and a
head. :func:`build` turns a spec into an ``nn.Module`` and an example input; it derives every
input width itself and repairs what a spec cannot know (group divisibility, strides on tiny
maps, a residual body's output width), so any sub-spec builds too. That is what makes
:func:`shrink` (greedy test-case reduction) possible.

Blocks: conv(+BN+act, strides, bias), depthwise (channel multiplier) and grouped convs,
functional convs on own parameters, transposed convs, residuals (identity, projection or
zero-padded "option A" shortcuts; ``+``/``torch.add``/``.add``/``+=``), concats of branches of
different widths (optionally with the input, DenseNet style), channel splits
(``torch.split``/``chunk``/``x[:, a:b]``) re-merged by cat (in any order) or add, SE gates,
ECA gates, CBAM-style and 1-channel spatial gates, selective-kernel attention
(stack/softmax/sum), star and max of branches, layer scale, channels-last MLPs and token
MLPs (flatten → transpose → Linear), channel shuffle, space-to-depth, pooling, upsampling,
hourglass (pool → body → upsample → add), ops without a channel rule (roll/flip over
channels: their channels must be frozen), standalone BatchNorm and activations, and nested
sequences. Heads: global pool → linear, pool → flatten → MLP, a 1x1-conv map, optionally a
second (feature) output. No LayerNorm/GroupNorm: every case must verify ``exact``.

Example::

    >>> from fxprune.fuzz import random_model, run_case
    >>> model, x = random_model(7)
    >>> run_case(7).ok
    True
"""

from __future__ import annotations

__all__ = [
    "random_spec",
    "build",
    "random_model",
    "case_config",
    "check_spec",
    "run_case",
    "run_spec",
    "shrink",
    "campaign",
    "CaseResult",
    "CRITERIA",
]

import contextlib
import copy
import math
import random
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

CRITERIA = ("l1", "l2", "random")
ACTS = ("relu", "relu_inplace", "silu", "gelu", "hardswish", "leaky", "relu6", "f_relu",
        "m_relu", "tanh", "hswish_manual", "none")
MAX_BLOCKS = 14  # blocks per model, nested ones included (keeps one case ~50-150 ms)

Spec = dict[str, Any]
HW = tuple[int, int]


# --- building blocks (all forwards are straight-line code: traceable by torch.fx) -----------

class Act(nn.Module):
    """An activation as a module, a function, a Tensor method or plain arithmetic."""

    def __init__(self, kind: str, inplace_ok: bool = False):
        super().__init__()
        if kind == "relu_inplace" and not inplace_ok:  # only on a fresh, unshared tensor
            kind = "relu"
        self.kind = kind
        mods: dict[str, Callable[[], nn.Module]] = {
            "relu": nn.ReLU, "relu_inplace": lambda: nn.ReLU(inplace=True), "silu": nn.SiLU,
            "gelu": nn.GELU, "hardswish": nn.Hardswish, "leaky": lambda: nn.LeakyReLU(0.1),
            "relu6": nn.ReLU6, "tanh": nn.Tanh}
        self.fn = mods[kind]() if kind in mods else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "f_relu":
            return F.relu(x)
        if self.kind == "m_relu":
            return x.relu()
        if self.kind == "hswish_manual":
            return x * F.relu6(x + 3.0) / 6.0
        return self.fn(x)


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int, bn: bool,
                 act: str, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = Act(act, inplace_ok=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class FunctionalConv(nn.Module):
    """``F.conv2d`` on the module's own parameters (get_attr nodes in the graph)."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.pad = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, 1, self.pad)


class Seq(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


class Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module | None, style: str, act: str):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.style = style
        self.act = Act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.shortcut is None else self.shortcut(x)
        y = self.body(x)
        if self.style == "torch.add":
            y = torch.add(s, y)
        elif self.style == "method":
            y = y.add(s)
        elif self.style == "iadd":
            y += s
        elif self.style == "rev":
            y = s + y
        else:
            y = y + s
        return self.act(y)


class PadShortcut(nn.Module):
    """CIFAR ResNet "option A": ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, lo, hi))``, lo+hi=C."""

    def __init__(self, c: int):
        super().__init__()
        self.lo, self.hi = c // 2, c - c // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.lo, self.hi))


class Concat(nn.Module):
    def __init__(self, branches: list[nn.Module], identity: bool, fn: str):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.identity = identity
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        if self.identity:
            outs = [x, *outs]
        if self.fn == "concat":
            return torch.concat(outs, dim=1)
        return torch.cat(outs, 1)


class Split(nn.Module):
    """Split channels (split/chunk/slicing), transform each piece, merge by cat or add."""

    def __init__(self, how: str, sizes: list[int], branches: list[nn.Module], merge: str,
                 n_chunks: int = 2):
        super().__init__()
        self.how = how
        self.n_chunks = n_chunks
        self.sizes = list(sizes)
        self.branches = nn.ModuleList(branches)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "split":
            parts = torch.split(x, self.sizes, dim=1)
        elif self.how == "split_int":
            parts = x.split(self.sizes[0], 1)
        elif self.how == "chunk":
            parts = torch.chunk(x, self.n_chunks, dim=1)
        elif self.how == "narrow":
            parts, off = [], 0
            for s in self.sizes:
                parts.append(x.narrow(1, off, s))
                off += s
        elif self.how == "neg_slice":  # x[:, :-k] and x[:, -k:] (two pieces)
            k = sum(self.sizes[1:])
            parts = [x[:, :-k], x[:, -k:]]
        else:  # "slice": x[:, a:b]
            parts, off = [], 0
            for s in self.sizes:
                parts.append(x[:, off:off + s])
                off += s
        outs = [b(parts[i]) for i, b in enumerate(self.branches)]  # no iteration of a Proxy
        if self.merge == "add":
            y = outs[0]
            for o in outs[1:]:
                y = y + o
            return y
        if self.merge == "first":  # keep only the first piece (the rest is dead code)
            return outs[0]
        if self.merge == "cat_rev":
            outs = outs[::-1]
        return torch.cat(outs, dim=1)


class SE(nn.Module):
    """``x * sigmoid(conv(act(conv(mean(x, (2, 3), keepdim=True)))))``; ``pool="linear"``:
    the legacy form ``fc2(relu(fc1(x.mean((2, 3))))).view(B, C, 1, 1)`` with Linear layers."""

    def __init__(self, c: int, rd: int, pool: str, gate: str):
        super().__init__()
        lin = pool.startswith("linear")
        self.reduce: nn.Module = nn.Linear(c, rd) if lin else nn.Conv2d(c, rd, 1)
        self.act = nn.ReLU()
        self.expand: nn.Module = nn.Linear(rd, c) if lin else nn.Conv2d(rd, c, 1)
        self.pool = pool
        self.gate = gate
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "adaptive":
            s = F.adaptive_avg_pool2d(x, 1)
        elif self.pool == "linear":
            s = x.mean((2, 3))
        elif self.pool == "linear_lit":
            s = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        else:
            s = x.mean((2, 3), keepdim=True)
        s = self.expand(self.act(self.reduce(s)))
        if self.pool == "linear":
            s = s.view(x.size(0), -1, 1, 1)
        elif self.pool == "linear_lit":
            s = s.view(x.size(0), self.c, 1, 1)
        if self.gate == "hardsigmoid":
            return x * F.hardsigmoid(s)
        if self.gate == "expand_as":
            return x * torch.sigmoid(s).expand_as(x)
        if self.gate == "mul_":
            return x.mul(torch.sigmoid(s))
        return x * torch.sigmoid(s)


class ECA(nn.Module):
    """ECA: a Conv1d over the *channel axis* of the pooled map (mixes neighbouring channels)."""

    def __init__(self, k: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y)
        return x * y.view(x.shape[0], -1, 1, 1).sigmoid()


class SpatialGate(nn.Module):
    """``x * sigmoid(conv_to_1(x))``, or CBAM's ``conv(cat[mean_c(x), max_c(x)])``."""

    def __init__(self, c: int, k: int, cbam: bool):
        super().__init__()
        self.cbam = cbam
        self.conv = nn.Conv2d(2 if cbam else c, 1, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cbam:
            s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
            return x * torch.sigmoid(self.conv(s))
        return x * self.conv(x).sigmoid()


class SelectiveKernel(nn.Module):
    """SKNet attention: stack branches, softmax over the path axis, weighted sum."""

    def __init__(self, c: int, rd: int, n: int, literal: bool):
        super().__init__()
        self.paths = nn.ModuleList(ConvBNAct(c, c, 3, 1, 1, True, "relu", False)
                                   for _ in range(n))
        self.fc1 = nn.Conv2d(c, rd, 1)
        self.fc2 = nn.Conv2d(rd, c * n, 1)
        self.n, self.c, self.literal = n, c, literal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([p(x) for p in self.paths], dim=1)  # B, n, C, H, W
        s = feats.sum(1).mean((2, 3), keepdim=True)
        a = self.fc2(F.relu(self.fc1(s)))
        c = self.c if self.literal else -1
        a = a.view(x.shape[0], self.n, c, 1, 1).softmax(dim=1)
        return (feats * a).sum(dim=1)


class Star(nn.Module):
    """StarNet ``act(f1(x)) * f2(x)`` (or ``torch.maximum``) then a projection."""

    def __init__(self, cin: int, hidden: int, cout: int, act: str, how: str):
        super().__init__()
        self.f1 = nn.Conv2d(cin, hidden, 1)
        self.f2 = nn.Conv2d(cin, hidden, 1)
        self.act = Act(act)
        self.g = nn.Conv2d(hidden, cout, 1)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "max":
            return self.g(torch.maximum(self.act(self.f1(x)), self.f2(x)))
        return self.g(self.act(self.f1(x)) * self.f2(x))


class Shared(nn.Module):
    """One conv applied twice (shared weights): ``conv(act(conv(x)))`` or ``conv(x) +
    conv(pool(x))`` style reuse couples the calls' channels."""

    def __init__(self, c: int, k: int, how: str):
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(c)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "twice_parallel":
            return self.conv(x) + self.conv(self.bn(x))
        return self.conv(F.relu(self.bn(self.conv(x))))


class LayerScale(nn.Module):
    """``x * gamma`` (ConvNeXt/MetaFormer layer scale): a [C, 1, 1] parameter, a [C] parameter
    reshaped or indexed with None, or a [1, C, 1, 1] buffer."""

    def __init__(self, c: int, how: str):
        super().__init__()
        self.how = how
        g = torch.rand(c) + 0.5
        if how == "buffer":
            self.register_buffer("gamma", g.view(1, c, 1, 1))
        elif how in ("reshape", "index"):
            self.gamma = nn.Parameter(g)
        else:
            self.gamma = nn.Parameter(g.view(c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "reshape":
            return x.mul(self.gamma.reshape(1, -1, 1, 1))
        if self.how == "index":
            return x * self.gamma[:, None, None]
        return x * self.gamma


class ChannelsLastMLP(nn.Module):
    """ConvNeXt-style MLP: permute to NHWC, Linear → act → Linear, permute back."""

    def __init__(self, c: int, hidden: int, cout: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.act = Act(act)
        self.fc2 = nn.Linear(hidden, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(x)))
        return x.permute(0, 3, 1, 2).contiguous()


class TokenMLP(nn.Module):
    """MobileViT/transformer style: ``x.flatten(2).transpose(1, 2)`` → Linear → back."""

    def __init__(self, c: int, cout: int, hw: HW):
        super().__init__()
        self.fc = nn.Linear(c, cout)
        self.shape = (cout, hw[0], hw[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.fc(x.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(x.shape[0], self.shape[0], self.shape[1],
                                         self.shape[2])


class Shuffle(nn.Module):
    """ShuffleNet channel shuffle, with sizes read from ``x.shape`` or literal ones."""

    def __init__(self, groups: int, literal: tuple[int, int, int] | None = None):
        super().__init__()
        self.groups = groups
        self.literal = literal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.literal is not None:
            c, h, w = self.literal
            y = x.reshape(x.size(0), self.groups, c // self.groups, h, w)
            return torch.transpose(y, 1, 2).reshape(x.size(0), c, h, w)
        b, c, h, w = x.shape
        x = x.contiguous().view(b, self.groups, c // self.groups, h, w)
        return x.transpose(1, 2).reshape(b, c, h, w)


class SpaceToDepth(nn.Module):
    """YOLO "Focus": cat of the four strided sub-images (4x the channels, half the size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                          x[..., 1::2, 1::2]], 1)


class NoRule(nn.Module):
    """Ops without a channel rule (roll/flip over channels): fxprune must freeze them."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "flip":
            return torch.flip(x, [1])
        return torch.roll(x, 1, 1)


class Pool(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.m = nn.MaxPool2d(2) if kind == "max" else nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "f_max":
            return F.max_pool2d(x, 3, 2, 1)
        return self.m(x)


class Up(nn.Module):
    def __init__(self, kind: str, c: int):
        super().__init__()
        self.kind = kind
        self.m: nn.Module = nn.Upsample(scale_factor=2, mode="nearest")
        if kind == "convT":
            self.m = nn.ConvTranspose2d(c, c, 2, stride=2)
        elif kind == "convT_dw":
            self.m = nn.ConvTranspose2d(c, c, 2, stride=2, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "bilinear":
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.m(x)


class Hourglass(nn.Module):
    """``x + upsample(body(pool(x)))`` back to x's size (an FPN/U-Net skip)."""

    def __init__(self, body: nn.Module, size: HW):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.body = body
        self.up = nn.Upsample(size=size, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.body(self.pool(x)))


class Head(nn.Module):
    def __init__(self, kind: str, c: int, hw: HW, n: int, pool_k: int, hidden: int,
                 flatten: str, extra_out: bool):
        super().__init__()
        self.kind, self.flatten_kind, self.extra_out = kind, flatten, extra_out
        self.pool_k = min(pool_k, hw[0], hw[1])
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.2)
        if kind == "conv":
            self.fc: nn.Module = nn.Conv2d(c, n, 1)
        elif kind == "gap":
            self.fc = nn.Linear(c, n)
        else:  # "mlp": adaptive pool to k x k, flatten, Linear → ReLU → Linear
            k = self.pool_k
            self.fc = nn.Sequential(nn.Linear(c * k * k, hidden), nn.ReLU(), nn.Linear(hidden, n))

    def _flatten(self, x: torch.Tensor, one: bool = False) -> torch.Tensor:
        if self.flatten_kind == "module":
            return self.flat(x)
        if self.flatten_kind == "view":
            return x.contiguous().view(x.size(0), -1)
        if self.flatten_kind == "reshape":
            return x.reshape(x.shape[0], -1)
        if self.flatten_kind == "method":
            return x.flatten(1)
        if self.flatten_kind == "squeeze" and one:  # [B, C, 1, 1] only
            return x.squeeze(-1).squeeze(-1)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> Any:
        if self.kind == "conv":
            y = self.fc(x)
        elif self.kind == "gap":
            if self.flatten_kind == "mean":
                y = self.fc(self.drop(x.mean((2, 3))))
            else:
                y = self.fc(self._flatten(F.adaptive_avg_pool2d(x, 1), one=True))
        else:
            y = self.fc(self._flatten(F.adaptive_avg_pool2d(x, self.pool_k)))
        if self.extra_out:
            return y, x
        return y


class FuzzNet(nn.Module):
    def __init__(self, stem: nn.Module, body: nn.Module, head: nn.Module):
        super().__init__()
        self.stem = stem
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> Any:
        return self.head(self.body(self.stem(x)))


# --- random specs -------------------------------------------------------------------------

def _width(rng: random.Random) -> int:
    return rng.choice([4, 6, 8, 8, 12, 16, 16, 24, 32])


def _act(rng: random.Random) -> str:
    return rng.choice(ACTS)


class _Budget:
    def __init__(self, n: int):
        self.left = n

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


_KINDS = [  # (kind, weight, nests other blocks)
    ("conv", 6, False), ("dw", 3, False), ("grouped", 2, False), ("fconv", 1, False),
    ("res", 4, True), ("pad_res", 1, True), ("cat", 3, True), ("split", 3, True),
    ("se", 2, False), ("eca", 1, False), ("sgate", 2, False), ("sk", 1, False),
    ("star", 1, False), ("scale", 1, False), ("mlp_cl", 1, False), ("tokens", 1, False),
    ("shuffle", 1, False), ("s2d", 1, False), ("norule", 1, False), ("pool", 2, False),
    ("up", 1, False), ("hourglass", 1, True), ("bn", 1, False), ("act", 1, False),
    ("seq", 1, True), ("shared", 1, False),
]

_OPTIONS: dict[str, Callable[[random.Random], Spec]] = {
    "conv": lambda r: dict(c=_width(r), k=r.choice([1, 3, 3]), stride=r.choice([1, 1, 1, 2]),
                           bn=r.random() < 0.7, act=_act(r), bias=r.random() < 0.4),
    "dw": lambda r: dict(mult=r.choice([1, 1, 2]), k=r.choice([3, 5]),
                         stride=r.choice([1, 1, 2]), bn=r.random() < 0.7, act=_act(r),
                         bias=r.random() < 0.3),
    "grouped": lambda r: dict(c=_width(r), g=r.choice([2, 4]), k=r.choice([1, 3]),
                              bn=r.random() < 0.7, act=_act(r), bias=r.random() < 0.3),
    "fconv": lambda r: dict(c=_width(r), k=r.choice([1, 3]), bias=r.random() < 0.5),
    "se": lambda r: dict(rd=r.choice([0.25, 0.5]),
                         pool=r.choice(["mean", "adaptive", "linear", "linear_lit"]),
                         gate=r.choice(["sigmoid", "sigmoid", "hardsigmoid", "expand_as",
                                        "mul_"])),
    "eca": lambda r: dict(k=r.choice([3, 5])),
    "sgate": lambda r: dict(k=r.choice([1, 1, 3]), cbam=r.random() < 0.3),
    "sk": lambda r: dict(n=r.choice([2, 3]), rd=r.choice([4, 8]), literal=r.random() < 0.5),
    "star": lambda r: dict(hidden=_width(r), c=_width(r), act=_act(r),
                           how=r.choice(["mul", "mul", "max"])),
    "mlp_cl": lambda r: dict(hidden=_width(r), c=_width(r), act=r.choice(["gelu", "relu"])),
    "tokens": lambda r: dict(c=_width(r)),
    "scale": lambda r: dict(how=r.choice(["param", "buffer", "reshape", "index"])),
    "shared": lambda r: dict(k=r.choice([1, 3]), how=r.choice(["twice", "twice_parallel"])),
    "shuffle": lambda r: dict(g=r.choice([2, 4]), literal=r.random() < 0.5),
    "norule": lambda r: dict(kind=r.choice(["roll", "flip"])),
    "pool": lambda r: dict(kind=r.choice(["max", "avg", "f_max"])),
    "up": lambda r: dict(kind=r.choice(["nearest", "bilinear", "convT", "convT_dw"])),
    "act": lambda r: dict(act=_act(r)),
}


def _block_spec(rng: random.Random, depth: int, budget: _Budget) -> Spec:
    kinds = [(k, w) for k, w, nest in _KINDS if depth > 0 or not nest]
    kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
    if kind in ("res", "pad_res", "cat", "split", "hourglass", "seq") and budget.left < 3:
        kind = "conv"

    def sub(n_max: int) -> list[Spec]:
        n = rng.randint(1, n_max)
        return [_block_spec(rng, depth - 1, budget) for _ in range(n) if budget.take()]

    s: Spec = {"op": kind}
    if kind in _OPTIONS:
        s.update(_OPTIONS[kind](rng))
    elif kind == "res":
        s.update(body=sub(3), proj=rng.random() < 0.3, c=_width(rng),
                 style=rng.choice(["+", "+", "torch.add", "method", "iadd", "rev"]),
                 act=rng.choice(["none", "relu", "silu"]))
    elif kind == "pad_res":
        s.update(body=sub(2), act=rng.choice(["none", "relu"]))
    elif kind == "cat":
        s.update(branches=[sub(2) for _ in range(rng.randint(1, 3))],
                 identity=rng.random() < 0.4, fn=rng.choice(["cat", "cat", "concat"]))
    elif kind == "split":
        n = rng.choice([2, 2, 3])
        s.update(how=rng.choice(["split", "split_int", "chunk", "slice", "narrow",
                                  "neg_slice"]),
                 fracs=[rng.randint(1, 4) for _ in range(n)],
                 branches=[sub(2) if rng.random() < 0.7 else [] for _ in range(n)],
                 merge=rng.choice(["cat", "cat", "cat_rev", "add", "first"]))
    elif kind in ("hourglass", "seq"):
        s.update(body=sub(3))
    return s


def random_spec(seed: int) -> Spec:
    """A random model description (JSON-able) for ``seed``; see :func:`build`."""
    rng = random.Random(seed)
    budget = _Budget(MAX_BLOCKS)
    body = []
    for _ in range(rng.randint(1, 5)):
        if budget.take():
            body.append(_block_spec(rng, rng.choice([1, 2, 2, 3]), budget))
    head = {"kind": rng.choice(["gap", "gap", "mlp", "conv"]), "n": rng.choice([3, 5, 10]),
            "pool_k": rng.choice([2, 3]), "hidden": _width(rng),
            "flatten": rng.choice(["torch", "module", "view", "reshape", "mean", "method",
                                   "squeeze"]),
            "extra_out": rng.random() < 0.05}
    return {"seed": seed, "input": [rng.randint(1, 4), rng.randint(16, 32), rng.randint(16, 32)],
            "stem": {"op": "conv", "c": _width(rng), "k": 3, "stride": rng.choice([1, 2]),
                     "bn": rng.random() < 0.7, "act": _act(rng), "bias": rng.random() < 0.3},
            "body": body, "head": head}


# --- building: widths and spatial sizes are derived here, so any sub-spec is valid ---------

Built = tuple[nn.Module, int, HW]


def _half(hw: HW, ceil: bool = True) -> HW:
    return ((hw[0] + 1) // 2, (hw[1] + 1) // 2) if ceil else (hw[0] // 2, hw[1] // 2)


def _proj(c: int, out: int) -> nn.Module:
    return ConvBNAct(c, out, 1, 1, 1, False, "none", False)


def _b_conv(s: Spec, c: int, hw: HW, out: int | None, keep_hw: bool) -> Built:
    op = s["op"]
    stride = 1 if min(hw) < 4 or keep_hw else int(s.get("stride", 1))
    cout = out or int(s.get("c", c))
    g = 1
    if op == "grouped":
        g = max(d for d in range(1, c + 1) if c % d == 0 and d <= int(s.get("g", 2))
                and cout % d == 0)
    elif op == "dw":
        cout, g = c * int(s.get("mult", 1)), c
        if out is not None and out != cout:
            cout, g = out, math.gcd(c, out)
    m = ConvBNAct(c, cout, int(s.get("k", 3)), stride, g, bool(s.get("bn")),
                  s.get("act", "none"), bool(s.get("bias")))
    return m, cout, hw if stride == 1 else _half(hw)


def _b_res(s: Spec, c: int, hw: HW, out: int | None, keep_hw: bool) -> Built:
    body_spec = s.get("body") or [{"op": "conv", "k": 1, "c": c}]
    if s["op"] == "pad_res":  # option-A shortcut: stride 2, width 2c (zero-padded channels)
        if min(hw) < 4 or keep_hw:
            return _b_res({**s, "op": "res", "proj": False}, c, hw, out, keep_hw)
        first = ConvBNAct(c, 2 * c, 3, 2, 1, True, "relu", False)
        body, _, _ = _build_seq(body_spec, 2 * c, _half(hw), out=2 * c, keep_hw=True)
        return Residual(Seq([first, body]), PadShortcut(c), "+", s.get("act", "none")), \
            2 * c, _half(hw)
    proj = bool(s.get("proj")) or (out is not None and out != c)
    cout = (out or int(s.get("c", c))) if proj else c
    body, _, _ = _build_seq(body_spec, c, hw, out=cout, keep_hw=True)
    shortcut = nn.Sequential(nn.Conv2d(c, cout, 1, bias=False), nn.BatchNorm2d(cout)) \
        if proj else None
    return Residual(body, shortcut, s.get("style", "+"), s.get("act", "none")), cout, hw


def _b_cat(s: Spec, c: int, hw: HW, out: int | None, keep_hw: bool) -> Built:
    branches, widths = [], []
    for b in s.get("branches", []) or [[]]:
        m, w, _ = _build_seq(b, c, hw, keep_hw=True)
        branches.append(m)
        widths.append(w)
    identity = bool(s.get("identity"))
    return Concat(branches, identity, s.get("fn", "cat")), sum(widths) + c * identity, hw


def _b_split(s: Spec, c: int, hw: HW, out: int | None, keep_hw: bool) -> Built:
    fracs = [max(1, int(f)) for f in s.get("fracs", [1, 1])]
    n = len(fracs)
    if c < n:  # too narrow to split: the first branch alone
        return _build_seq((s.get("branches") or [[]])[0], c, hw, keep_hw=keep_hw)
    how = s.get("how", "split")
    if how == "neg_slice" and n != 2:
        how = "slice"
    if how in ("chunk", "split_int"):
        per = -(-c // n)  # torch.chunk / split(int): equal pieces, the last may be smaller
        sizes = [min(per, c - i * per) for i in range(n) if c - i * per > 0]
    else:
        sizes = [max(1, c * f // sum(fracs)) for f in fracs]
        sizes[-1] = c - sum(sizes[:-1])
        if sizes[-1] < 1:
            sizes = [1] * (n - 1) + [c - (n - 1)]
    merge = s.get("merge", "cat")
    target = (out or max(sizes)) if merge == "add" else None
    specs = list(s.get("branches", [])) + [[]] * len(sizes)
    branches, widths = [], []
    for size, b in zip(sizes, specs):
        m, w, _ = _build_seq(b, size, hw, out=target, keep_hw=True)
        branches.append(m)
        widths.append(w)
    cout = widths[0] if merge in ("add", "first") else sum(widths)
    return Split(how, sizes, branches, merge, n), cout, hw


def _b_nested(s: Spec, c: int, hw: HW, out: int | None, keep_hw: bool) -> Built:
    if s["op"] == "hourglass" and min(hw) >= 4:
        body, _, _ = _build_seq(s.get("body", []), c, _half(hw, ceil=False), out=c,
                                keep_hw=True)
        return Hourglass(body, hw), c, hw
    return _build_seq(s.get("body", []), c, hw, out=out, keep_hw=keep_hw)


def _b_simple(s: Spec, c: int, hw: HW, out: int | None, keep_hw: bool) -> Built:
    """Blocks that keep the width unless they say otherwise."""
    op = s["op"]
    if op == "fconv":
        cout = out or int(s.get("c", c))
        return FunctionalConv(c, cout, int(s.get("k", 3)), bool(s.get("bias"))), cout, hw
    if op in ("star", "mlp_cl", "tokens"):
        cout = out or int(s.get("c", c))
        hidden = int(s.get("hidden", c))
        if op == "star":
            return Star(c, hidden, cout, s.get("act", "relu"), s.get("how", "mul")), cout, hw
        if op == "mlp_cl":
            return ChannelsLastMLP(c, hidden, cout, s.get("act", "gelu")), cout, hw
        return TokenMLP(c, cout, hw), cout, hw
    if op == "s2d" and not keep_hw and hw[0] % 2 == 0 and hw[1] % 2 == 0 and min(hw) >= 4:
        return SpaceToDepth(), 4 * c, _half(hw)
    if op == "pool" and min(hw) >= 4 and not keep_hw:
        kind = s.get("kind", "max")
        return Pool(kind), c, _half(hw, ceil=kind != "max")
    if op == "up" and max(hw) <= 16 and not keep_hw:
        return Up(s.get("kind", "nearest"), c), c, (hw[0] * 2, hw[1] * 2)
    makers: dict[str, Callable[[], nn.Module]] = {
        "se": lambda: SE(c, max(1, int(c * float(s.get("rd", 0.25)))), s.get("pool", "mean"),
                         s.get("gate", "sigmoid")),
        "eca": lambda: ECA(int(s.get("k", 3))),
        "sgate": lambda: SpatialGate(c, int(s.get("k", 1)), bool(s.get("cbam"))),
        "sk": lambda: SelectiveKernel(c, int(s.get("rd", 4)), int(s.get("n", 2)),
                                      bool(s.get("literal"))),
        "scale": lambda: LayerScale(c, s.get("how", "param")),
        "shared": lambda: Shared(c, int(s.get("k", 1)), s.get("how", "twice")),
        "shuffle": lambda: Shuffle(int(s.get("g", 2)), (c, hw[0], hw[1])
                                   if s.get("literal") else None)
        if c % int(s.get("g", 2)) == 0 and c > int(s.get("g", 2)) else nn.Identity(),
        "norule": lambda: NoRule(s.get("kind", "roll")),
        "bn": lambda: nn.BatchNorm2d(c),
        "act": lambda: Act(s.get("act", "relu")),
    }
    return makers.get(op, nn.Identity)(), c, hw


_BUILDERS: dict[str, Callable[[Spec, int, HW, int | None, bool], Built]] = {
    "conv": _b_conv, "dw": _b_conv, "grouped": _b_conv, "res": _b_res, "pad_res": _b_res,
    "cat": _b_cat, "split": _b_split, "seq": _b_nested, "hourglass": _b_nested,
}


def _build_block(s: Spec, c: int, hw: HW, out: int | None = None, keep_hw: bool = False
                 ) -> Built:
    """Build one block for input width ``c`` and size ``hw``; ``out`` forces the output width
    (residual bodies, add-merges), ``keep_hw`` forbids resizing (no strides, pools,
    upsampling). Returns (module, out width, out size)."""
    m, cout, size = _BUILDERS.get(s["op"], _b_simple)(s, c, hw, out, keep_hw)
    if out is not None and cout != out:
        return Seq([m, _proj(cout, out)]), out, size
    return m, cout, size


def _build_seq(specs: list[Spec], c: int, hw: HW, out: int | None = None,
               keep_hw: bool = False) -> Built:
    """A sequence; ``out`` forces the last block's width, ``keep_hw`` forbids resizing."""
    mods: list[nn.Module] = []
    for i, s in enumerate(specs):
        m, c, hw = _build_block(s, c, hw, out if i == len(specs) - 1 else None, keep_hw)
        mods.append(m)
    if out is not None and c != out:
        mods.append(_proj(c, out))
        c = out
    return (mods[0] if len(mods) == 1 else Seq(mods)), c, hw


def _randomize(model: nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics (a fresh BN is the identity, hiding bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            elif isinstance(m, FunctionalConv):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                               / math.sqrt(m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def build(spec: Spec, check: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """Build ``(model, example_input)`` from a spec (eval mode, seeded random weights).

    With ``check``, the model is run once: a generator bug must not pass for an fxprune bug.
    """
    cin, h, w = (int(v) for v in spec["input"])
    stem, c, hw = _build_block(spec["stem"], cin, (h, w))
    body, c, hw = _build_seq(spec.get("body", []), c, hw)
    hs = spec.get("head", {})
    head = Head(hs.get("kind", "gap"), c, hw, int(hs.get("n", 10)), int(hs.get("pool_k", 2)),
                int(hs.get("hidden", 16)), hs.get("flatten", "torch"),
                bool(hs.get("extra_out", False)))
    model = FuzzNet(stem, body, head)
    seed = int(spec.get("seed", 0))
    _randomize(model, seed)
    model.eval()
    x = torch.randn((2, cin, h, w), generator=torch.Generator().manual_seed(seed + 1))
    if check:
        with torch.no_grad():
            model(x)
    return model, x


def random_model(seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A random CNN and an example input ``(2, C, 16..32, 16..32)`` for ``seed``."""
    return build(random_spec(seed))


# --- running cases ------------------------------------------------------------------------

@dataclass
class CaseResult:
    """The outcome of one fuzz case. ``stage`` names where it failed (None when ok)."""

    seed: int
    ratio: float
    criterion: str
    ok: bool
    stage: str | None = None
    error: str = ""
    seconds: float = 0.0
    params: tuple[int, int] = (0, 0)
    #: ok, but nothing was prunable (every channel frozen, e.g. all reach an output)
    skipped: bool = False
    traceback: str = field(default="", repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def case_config(seed: int) -> tuple[float, str]:
    """The (ratio in [0.1, 0.8], criterion) a seed prunes with."""
    rng = random.Random(f"fxprune-fuzz-{seed}")
    return round(rng.uniform(0.1, 0.8), 3), rng.choice(CRITERIA)


_STAGE_OF_FILE = {"analyze.py": "analyze", "groups.py": "analyze", "channels.py": "analyze",
                  "select.py": "select", "allocate.py": "select", "criteria.py": "select",
                  "rewrite.py": "rewrite", "trace.py": "trace", "verify.py": "oracle",
                  "serialize.py": "save/load"}


def _stage_of(exc: BaseException) -> str:
    """The pipeline stage an exception from :func:`fxprune.compress` comes from."""
    from fxprune.errors import RewriteError, TraceFailure, UnsupportedOpError, VerificationError

    by_type = [(TraceFailure, "trace"), (UnsupportedOpError, "analyze"),
               (RewriteError, "rewrite"), (VerificationError, "oracle")]
    for t, name in by_type:
        if isinstance(exc, t):
            return name
    for fr in reversed(traceback.extract_tb(exc.__traceback__)):
        f = fr.filename.replace("\\", "/")
        if "/rules/" in f and "/fxprune/" in f:
            return "analyze"
        if "/passes/" in f:
            return "select"
        if "/fxprune/" in f and f.rsplit("/", 1)[-1] in _STAGE_OF_FILE:
            return _STAGE_OF_FILE[f.rsplit("/", 1)[-1]]
    return "prune"


def _first_line(exc: BaseException) -> str:
    from fxprune.errors import short_error

    text = short_error(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _check_pruned(model: nn.Module, pruned: nn.Module, x: torch.Tensor,
                  set_stage: Callable[[str], None]) -> None:
    from fxprune.core.verify import verify
    from fxprune.files.serialize import load, save

    set_stage("run")
    with torch.no_grad():
        ref, out = model(x), pruned(x)
    set_stage("shape")
    ref_t = ref if isinstance(ref, torch.Tensor) else ref[0]
    out_t = out if isinstance(out, torch.Tensor) else out[0]
    assert ref_t.shape == out_t.shape, f"output shape changed {ref_t.shape} -> {out_t.shape}"
    assert _n_params(pruned) <= _n_params(model), "the pruned model has more parameters"
    set_stage("oracle")
    report = verify(model, pruned, (x,))
    assert report.status == "exact", f"oracle: {report} (expected exact)"
    set_stage("save/load")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pruned.pt"
        save(pruned, path)
        again = load(path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), out, rtol=0, atol=0)


def check_spec(spec: Spec, ratio: float, criterion: str, **compress_kwargs: Any
               ) -> tuple[int, int]:
    """Prune a spec's model and assert every invariant (``prune_and_check`` semantics: exact
    oracle, same output shape, untouched original, no more parameters, save/load identical).

    Returns (params before, params after). Raises on any violation; the exception's
    ``fuzz_stage`` attribute names the failing stage.
    """
    from fxprune.plan.compress import compress

    stage = ["create"]

    def set_stage(name: str) -> None:
        stage[0] = name

    try:
        model, x = build(spec)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        set_stage("prune")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # verify=False: _check_pruned runs the oracle itself, on a fresh trace
            pruned = compress(model, ratio, example_inputs=(x,), criterion=criterion,
                              seed=int(spec.get("seed", 0)),
                              **{"verify": False, **compress_kwargs})
        set_stage("untouched")
        after = model.state_dict()
        assert before.keys() == after.keys(), "compress() changed the model's state_dict keys"
        for k, v in before.items():
            assert torch.equal(v, after[k]), f"compress() modified the user's model: {k}"
        _check_pruned(model, pruned, x, set_stage)
        return _n_params(model), _n_params(pruned)
    except BaseException as e:
        if stage[0] == "prune":
            stage[0] = _stage_of(e)
        if not hasattr(e, "fuzz_stage"):
            with contextlib.suppress(Exception):  # built-in exceptions without __dict__
                e.fuzz_stage = stage[0]  # type: ignore[attr-defined]
        raise


def _nothing_to_prune(e: BaseException) -> bool:
    from fxprune.errors import InputError

    return isinstance(e, InputError) and str(e).startswith("nothing to prune")


def run_spec(spec: Spec, ratio: float, criterion: str, **compress_kwargs: Any) -> CaseResult:
    """Run one spec and return a :class:`CaseResult` (never raises for a failing case)."""
    seed = int(spec.get("seed", 0))
    t0 = time.perf_counter()
    try:
        params = check_spec(spec, ratio, criterion, **compress_kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - every failure is a result
        if _nothing_to_prune(e):
            return CaseResult(seed, ratio, criterion, True, error=_first_line(e),
                              seconds=time.perf_counter() - t0, skipped=True)
        return CaseResult(seed, ratio, criterion, False, stage=getattr(e, "fuzz_stage", "prune"),
                          error=_first_line(e), seconds=time.perf_counter() - t0,
                          traceback=traceback.format_exc())
    return CaseResult(seed, ratio, criterion, True, seconds=time.perf_counter() - t0,
                      params=params)


def run_case(seed: int, ratio: float | None = None, criterion: str | None = None,
             **compress_kwargs: Any) -> CaseResult:
    """Generate the model of ``seed``, prune it (ratio in [0.1, 0.8] and criterion among
    l1/l2/random derived from the seed unless given) and check it: exact oracle, same output
    shape, untouched original, save/load. Never raises for a failing case."""
    r, crit = case_config(seed)
    return run_spec(random_spec(seed), r if ratio is None else ratio, criterion or crit,
                    **compress_kwargs)


# --- shrinking ----------------------------------------------------------------------------

def _walk(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, i))


def _get(root: Any, path: tuple) -> Any:
    for p in path:
        root = root[p]
    return root


def _edited(spec: Spec, path: tuple, fn: Callable[[Any], None]) -> Spec:
    new = copy.deepcopy(spec)
    fn(_get(new, path))
    return new


_SIMPLER = {"bn": False, "bias": False, "act": "none", "identity": False, "proj": False,
            "extra_out": False, "stride": 1, "mult": 1, "literal": False, "cbam": False}


def _children(spec: Spec) -> Iterator[Spec]:
    """Candidate simplifications of a spec, most aggressive first."""
    nodes = list(_walk(spec))
    for path, node in nodes:  # 1. delete a block from a list of blocks
        if isinstance(node, list) and node and all(isinstance(b, dict) and "op" in b
                                                   for b in node):
            for i in range(len(node)):
                yield _edited(spec, path, lambda lst, i=i: lst.pop(i))
    for path, node in nodes:  # 2. replace a compound block by one of its sub-sequences
        if isinstance(node, dict) and "op" in node and path[:1] == ("body",):
            for sub in ([node["body"]] if "body" in node else []) + node.get("branches", []):
                new = copy.deepcopy(spec)
                _get(new, path[:-1])[path[-1]] = {"op": "seq", "body": copy.deepcopy(sub)}
                yield new
    for path, node in nodes:  # 3. drop options, halve widths
        if not isinstance(node, dict):
            continue
        for k, v in _SIMPLER.items():
            if k in node and node[k] != v:
                yield _edited(spec, path, lambda d, k=k, v=v: d.__setitem__(k, v))
        for k in ("c", "hidden"):
            if k in node and int(node[k]) > 4:
                yield _edited(spec, path,
                              lambda d, k=k: d.__setitem__(k, max(4, int(d[k]) // 2)))
    if spec.get("head", {}).get("kind") != "gap":  # 4. simpler head, smaller input
        yield {**spec, "head": {**spec["head"], "kind": "gap", "flatten": "torch"}}
    if spec["input"][1:] != [16, 16]:
        yield {**spec, "input": [spec["input"][0], 16, 16]}


def shrink(spec: Spec, ratio: float, criterion: str,
           same: Callable[[CaseResult], bool] | None = None, max_steps: int = 400,
           **compress_kwargs: Any) -> Spec:
    """Greedy test-case reduction: the smallest spec that still fails the same way.

    ``same(result)`` decides whether a failing result is "the same failure" (default: the
    same stage as the original failure). Example::

        >>> r, c = case_config(seed); small = shrink(random_spec(seed), r, c)
        >>> print(build(small)[0])
    """
    first = run_spec(spec, ratio, criterion, **compress_kwargs)
    if first.ok:
        return spec

    def same_stage(r: CaseResult) -> bool:
        return (not r.ok) and r.stage == first.stage

    same = same or same_stage
    best, steps, progress = spec, 0, True
    while progress and steps < max_steps:
        progress = False
        for cand in _children(best):
            steps += 1
            res = run_spec(cand, ratio, criterion, **compress_kwargs)
            if res.stage != "create" and same(res) and cand != best:
                best, progress = cand, True
                break
            if steps >= max_steps:
                break
    return best


def campaign(seeds: Iterable[int], progress: Callable[[CaseResult], None] | None = None,
             **compress_kwargs: Any) -> list[CaseResult]:
    """Run many cases; returns every result (failures have ``ok=False``)."""
    out = []
    for s in seeds:
        r = run_case(s, **compress_kwargs)
        out.append(r)
        if progress is not None:
            progress(r)
    return out
