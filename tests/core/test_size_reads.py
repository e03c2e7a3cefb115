"""A channel count used as a number (issue 9, 3a): pinned to its original value, or frozen.

Every model is pruned through the oracle harness; the count-using op must not pass with a
changed count (before the fix these gave relative errors of 0.01-0.5 with every setting).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.testing import prune_and_check

torch.fx.wrap("len")  # `len(tensor)` is traced only when wrapped (torch.fx's own rule)


def cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Uses(nn.Module):
    """Two prunable convs; ``fn(y, z)`` combines them, a 1x1 conv consumes the result."""

    def __init__(self, fn, width: int = 32):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(3, 16)
        self.head = nn.Conv2d(width, 4, 1)
        self.fn = fn

    def forward(self, x):
        return self.head(self.fn(self.a(x), self.b(x)))


def _width(gm: nn.Module, conv: str) -> int:
    return gm.get_submodule(conv).out_channels


def _size_tuple(y, z):
    b, c, h, w = y.size()
    return torch.cat([y / c, z], 1)


CASES = {
    "reciprocal_of_shape": lambda y, z: torch.cat([y * (1 / y.shape[1]), z], 1),
    "math_sqrt_of_size": lambda y, z: torch.cat([y / math.sqrt(y.size(1)), z], 1),
    "numel_power": lambda y, z: torch.cat([y * y.numel() ** -0.5, z], 1),
    "torch_numel": lambda y, z: torch.cat([y * (10.0 / torch.numel(y)), z], 1),
    "size_tuple": _size_tuple,
    "size_tuple_index": lambda y, z: torch.cat([y / y.size()[-3], z], 1),
    "len_of_item": lambda y, z: torch.cat([y / len(y[0]), z], 1),
    "count_of_another_tensor": lambda y, z: torch.cat([y * (1.0 / z.shape[1]), z], 1),
    "fill_value": lambda y, z: torch.cat([y + torch.full_like(y, y.shape[1] / 8), z], 1),
    "scalar_kwarg": lambda y, z: torch.cat([y.clamp(max=y.shape[1] / 64), z], 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_count_used_as_number_is_pinned(name):
    torch.manual_seed(0)
    model = Uses(CASES[name]).eval()
    pruned = prune_and_check(model, torch.randn(2, 3, 8, 8))
    assert _width(pruned, "a.0") < 16 and _width(pruned, "b.0") < 16  # both still pruned


class Returned(nn.Module):
    """A count returned by forward is a number too: the pruned model returns the original."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.head(y), y.shape[1]


class Asserts(nn.Module):
    """``torch._assert`` on a count held on the original: it is checked on the original count."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        torch._assert(y.shape[1] == 16, "expects 16 channels")
        torch._assert(y.shape[1] % 4 == 0, "expects a multiple of 4")
        return self.head(y)


def test_assert_on_a_count_is_pinned():
    prune_and_check(Asserts().eval(), torch.randn(1, 3, 8, 8), ratio=0.3)


def test_returned_count_is_pinned():
    pruned = prune_and_check(Returned().eval(), torch.randn(1, 3, 8, 8))
    assert pruned(torch.randn(3, 3, 8, 8))[1] == 16


class Dynamic(nn.Module):
    """numel over a batch: the pinned count scales with the batch size, like the original."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.head(y * (y.numel() ** -0.5) + y / y.shape[1] * x.shape[0])


def test_pinned_counts_keep_other_axes_dynamic():
    model = Dynamic().eval()
    pruned = prune_and_check(model, torch.randn(2, 3, 8, 8))
    x = torch.randn(5, 3, 12, 12)
    report = fxprune.verify(model, pruned, x)
    assert report.status == "exact", report


class SizeOfOwnInput(nn.Module):
    """A count used to shape its own tensor is recomputed, not pinned (it must shrink)."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        b, c, h, w = y.shape
        return self.head((y.reshape(b, c, h * w) * (4.0 / c)).reshape_as(y))


def test_size_of_own_input_is_recomputed_and_number_pinned():
    prune_and_check(SizeOfOwnInput().eval(), torch.randn(2, 3, 8, 8))


class ShapesAnother(nn.Module):
    """A count read from one tensor and used as a size of another: both are frozen."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 16), cbr(3, 16), cbr(3, 8)
        self.head = nn.Conv2d(40, 4, 1)

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        z = z.reshape(z.shape[0], y.shape[1], -1).reshape(z.shape)
        return self.head(torch.cat([y, z, self.c(x)], 1))


def test_count_shaping_another_tensor_freezes_both():
    model = ShapesAnother().eval()
    gm = fxprune.trace(model, torch.randn(1, 3, 8, 8))
    analysis = fxprune.analyze(gm)
    reasons = " ".join(g.frozen_reason or "" for g in analysis.groups)
    assert "its size is read to shape another tensor" in reasons
    assert "shaped with the size of another tensor" in reasons
    pruned = prune_and_check(model, torch.randn(1, 3, 8, 8))
    assert _width(pruned, "a.0") == 16 and _width(pruned, "b.0") == 16
    assert _width(pruned, "c.0") < 8
