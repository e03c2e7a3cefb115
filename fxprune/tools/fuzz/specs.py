"""Random specs: a seed gives a JSON-able spec of nested blocks."""

from __future__ import annotations

import random
from collections.abc import Callable

from fxprune.tools.fuzz.blocks import ACTS, MAX_BLOCKS, Spec

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
