"""Building a spec: widths and spatial sizes are derived here, so any sub-spec is valid."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from fxprune.tools.fuzz.blocks import (
    HW,
    Act,
    Concat,
    ConvBNAct,
    FunctionalConv,
    PadShortcut,
    Residual,
    Seq,
    Spec,
    Split,
)
from fxprune.tools.fuzz.heads import (
    ECA,
    SE,
    ChannelsLastMLP,
    FuzzNet,
    Head,
    Hourglass,
    LayerScale,
    NoRule,
    Pool,
    SelectiveKernel,
    Shared,
    Shuffle,
    SpaceToDepth,
    SpatialGate,
    Star,
    TokenMLP,
    Up,
)
from fxprune.tools.fuzz.specs import random_spec

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
