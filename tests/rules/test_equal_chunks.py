"""``analyze(..., equal_chunks=True)`` (``compress(..., keep_class=True)``): the pieces of a
chunk (or of a split into equal sizes) keep the same positions, so the model's own code still
splits the pruned tensor where the graph does."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.ir import meta


class Halves(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 1)
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        if self.how == "chunk":
            a, b = y.chunk(2, 1)
        elif self.how == "split_int":
            a, b = y.split(4, 1)
        else:
            a, b = y.split([4, 4], 1)
        return self.a(a) + self.b(b)


class Thirds(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 7, 1)
        self.out = nn.Conv2d(7, 2, 1)

    def forward(self, x):
        a, b, c = self.conv(x).chunk(3, 1)  # 3, 3, 1
        return self.out(torch.cat([c, b, a], 1))


def _units(model: nn.Module, equal: bool) -> tuple[int, bool]:
    gm = fxprune.trace(model, torch.rand(1, 3, 8, 8))
    a = fxprune.analyze(gm, equal_chunks=equal)
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "conv")
    ids = meta.get_ids(node).flatten()
    return len(set(a.unit[ids].tolist())), bool(a.frozen[ids].all())


@pytest.mark.parametrize("how", ["chunk", "split_int", "split_list"])
def test_equal_pieces_couple_position_by_position(how: str) -> None:
    assert _units(Halves(how), False)[0] == 8
    assert _units(Halves(how), True)[0] == 4  # position j of both halves is one unit


def test_unequal_chunks_are_kept_whole() -> None:
    assert _units(Thirds(), True)[1]
    assert not _units(Thirds(), False)[1]


def test_keep_class_prunes_equal_halves() -> None:
    model = Halves("chunk").eval()
    small = fxprune.compress(model, 0.5, example_inputs=torch.rand(2, 3, 8, 8),
                             keep_class=True)
    assert type(small) is Halves and small.conv.out_channels == 2 * small.a.in_channels
    assert small.a.in_channels == small.b.in_channels < 4
