"""Pooling and normalization on a lower-rank view (issue 9, 3b).

A ``Kd`` pool or instance norm works on the last K axes of its input, whatever its rank
(``max_pool3d`` on a 4-D tensor pools over channels; ``avg_pool2d`` on ``y.flatten(2)`` too).
Channels on a worked axis must be frozen (with a reason naming the op), channels elsewhere
pass through. Before the fix, the shape-preserving cases below passed with relative errors of
0.03-0.6. Every case runs through the oracle harness.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.testing import prune_and_check


def cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class LowerRank(nn.Module):
    """``a`` feeds the op under test; ``b`` is an ordinary prunable branch."""

    def __init__(self, fn, mod: nn.Module | None = None):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(3, 8)
        self.b2 = nn.Conv2d(8, 16, 1)
        self.m = mod if mod is not None else nn.Identity()
        self.fn = fn
        self.head = nn.LazyLinear(4)  # consumes every channel of the op's output

    def forward(self, x):
        y = self.fn(self, self.a(x))
        return self.head(y.flatten(1)) + self.b2(self.b(x)).mean((1, 2, 3))[:, None]


MIXING = {  # op on a view whose pooled/normalized axes carry channels: frozen
    "max_pool3d_on_4d": (lambda s, y: F.max_pool3d(y, 3, 1, 1), None),
    "avg_pool3d_on_4d": (lambda s, y: F.avg_pool3d(y, 3, 1, 1), None),
    "MaxPool3d_on_4d": (lambda s, y: s.m(y), nn.MaxPool3d(3, 1, 1)),
    "avg_pool2d_on_flatten": (lambda s, y: F.avg_pool2d(y.flatten(2), 3, 1, 1), None),
    "MaxPool2d_on_flatten": (lambda s, y: s.m(y.flatten(2)), nn.MaxPool2d(3, 1, 1)),
    "AdaptiveAvgPool2d_on_flatten": (lambda s, y: s.m(y.flatten(2)),
                                     nn.AdaptiveAvgPool2d((16, 64))),
    "AdaptiveMaxPool3d_on_4d": (lambda s, y: s.m(y), nn.AdaptiveMaxPool3d((16, 8, 8))),
    "InstanceNorm2d_on_flatten": (lambda s, y: s.m(y.flatten(2)), nn.InstanceNorm2d(16)),
    "InstanceNorm3d_on_4d": (lambda s, y: s.m(y), nn.InstanceNorm3d(16)),
    "InstanceNorm1d_on_tokens": (lambda s, y: s.m(y.flatten(2).transpose(1, 2)),
                                 nn.InstanceNorm1d(64)),
    "max_pool1d_on_tokens": (lambda s, y: F.max_pool1d(y.flatten(2).transpose(1, 2), 3, 1, 1),
                             None),
    "lp_pool1d_on_tokens": (lambda s, y: F.lp_pool1d(y.flatten(2).transpose(1, 2), 2, 1), None),
    "max_pool2d_channels_last": (lambda s, y: F.max_pool2d(y.permute(0, 2, 3, 1), 3, 1, 1),
                                 None),
    "max_pool2d_strided_over_channels": (lambda s, y: F.max_pool2d(y.flatten(2), 2), None),
    "interpolate_on_tokens": (lambda s, y: F.interpolate(y.flatten(2).transpose(1, 2),
                                                         scale_factor=1.0), None),
}

PASSING = {  # the pooled/normalized axes carry no channels: channels pass through, pruned
    "avg_pool1d_on_flatten": (lambda s, y: F.avg_pool1d(y.flatten(2), 3, 1, 1), None),
    "AvgPool1d_on_flatten": (lambda s, y: s.m(y.flatten(2)), nn.AvgPool1d(2)),
    "max_pool2d_unbatched": (lambda s, y: torch.stack([F.max_pool2d(y[i], 2)
                                                       for i in range(2)]), None),
    "MaxPool3d_on_5d": (lambda s, y: s.m(y.unsqueeze(2)), nn.MaxPool3d((1, 2, 2))),
    "InstanceNorm1d_on_flatten": (lambda s, y: s.m(y.flatten(2)), nn.InstanceNorm1d(16)),
    "InstanceNorm2d_unbatched": (lambda s, y: torch.stack([s.m(y[i]) for i in range(2)]),
                                 nn.InstanceNorm2d(16, affine=True)),
    "InstanceNorm3d_on_5d": (lambda s, y: s.m(y.unsqueeze(2)),
                             nn.InstanceNorm3d(16, affine=True)),
    "InstanceNorm2d_running_stats": (lambda s, y: s.m(y), nn.InstanceNorm2d(
        16, affine=True, track_running_stats=True)),
}


X = torch.randn(2, 3, 8, 8)


def _model(fn, mod):
    torch.manual_seed(0)
    model = LowerRank(fn, mod)
    with torch.no_grad():
        model(X)  # materialize the lazy head
    for m in model.modules():
        if getattr(m, "running_var", None) is not None:  # non-trivial statistics
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _frozen_reasons(model) -> str:
    analysis = fxprune.analyze(fxprune.trace(model, X))
    return " | ".join(g.frozen_reason or "" for g in analysis.groups)


@pytest.mark.parametrize("name", sorted(MIXING))
def test_op_over_channel_axes_freezes_them(name):
    fn, mod = MIXING[name]
    model = _model(fn, mod)
    pruned = prune_and_check(model, X)
    assert pruned.get_submodule("a.0").out_channels == 16, "channels mixed by the op were pruned"
    assert pruned.get_submodule("b.0").out_channels < 8  # the rest is still pruned
    reasons = _frozen_reasons(model)
    assert "carry channels" in reasons, reasons


@pytest.mark.parametrize("name", sorted(PASSING))
def test_op_over_other_axes_passes_channels(name):
    fn, mod = PASSING[name]
    pruned = prune_and_check(_model(fn, mod), X)
    assert pruned.get_submodule("a.0").out_channels < 16
