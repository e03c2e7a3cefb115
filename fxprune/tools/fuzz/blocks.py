"""Building blocks of the random CNNs (all forwards are straight-line code: traceable by
torch.fx), and the constants the generator draws from."""

from __future__ import annotations

import math
from collections.abc import Callable
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
