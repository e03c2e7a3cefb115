"""method="swp" in the soft-pruning engine: trains through SoftPruner and finalizes exactly."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.stripes import STRIPES, SkeletonConv2d
from fxprune.train import SoftPruner, list_methods


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4))


def test_swp_trains_and_finalizes_exactly() -> None:
    torch.manual_seed(0)
    model = _net()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    assert "swp" in list_methods()
    pruner = SoftPruner(model, method="swp", example_inputs=(x[:2],), alpha=0.2,
                        delta=0.05, kernel="stripe")
    assert isinstance(model[0], SkeletonConv2d) and "0.fs" in model.state_dict()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    handle = pruner.attach(opt)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    pruner.epoch_end()
    live = pruner.method.stripes.live_density()
    assert 0.0 < live < 1.0
    assert 0.0 < pruner.kept_macs < 1.0  # SWP's stripe convention, from the method
    small = pruner.finalize()
    model.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert set(small.meta[STRIPES]) == {"0", "3"}
    assert small.meta["fxprune.train"]["method"] == "swp"
    sd = pruner.state_dict()
    assert sd["method_state"]["alpha"] == 0.2
    handle.remove()
    assert fxprune.count(small, (x[:1],)).macs < fxprune.count(_net(), (x[:1],)).macs
