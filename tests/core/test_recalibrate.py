"""fxprune.recalibrate_bn: after a cut, eval accuracy comes back without training; the weights,
training flags and momenta are untouched; bad input gets a clear error; an empty loader leaves
the old statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import fxprune
from fxprune.errors import InputError


def _data(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g) * 3 + 1
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=16)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=0.3), nn.ReLU(),
                         nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4)).eval()


def test_statistics_match_the_data() -> None:
    net = _net()
    w = net[0].weight.clone()
    assert fxprune.recalibrate_bn(net, _data(), batches=4) == 4
    x = torch.cat([b[0] for b in _data()])
    with torch.no_grad():
        h = net[0](x)
    torch.testing.assert_close(net[1].running_mean, h.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert not net.training and net[1].momentum == 0.3 and torch.equal(net[0].weight, w)


def test_pruned_model_recalibrated() -> None:
    """The rewrite's output is a GraphModule: its BatchNorms are recalibrated the same way."""
    net = _net()
    pruned = fxprune.compress(net, 0.5, example_inputs=(torch.randn(2, 3, 8, 8),))
    assert fxprune.recalibrate_bn(pruned, _data(), batches=2) == 2
    bn = pruned.get_submodule("1")
    assert int(bn.num_batches_tracked) == 2


def test_plain_tensors_and_dicts() -> None:
    net = _net()
    assert fxprune.recalibrate_bn(net, [torch.randn(4, 3, 8, 8)] * 3, batches=10) == 3


@pytest.mark.parametrize("args, match", [((None, [torch.randn(1)]), "nn.Module"),
                                         ((_net(), None), "iterable"),
                                         ((_net(), [torch.randn(2, 3, 8, 8)], 0), "batches"),
                                         ((_net(), ["x"]), "batch must be")])
def test_bad_input(args, match) -> None:
    with pytest.raises(InputError, match=match):
        fxprune.recalibrate_bn(*args)


def test_no_batches_keeps_the_old_statistics() -> None:
    net = _net()
    fxprune.recalibrate_bn(net, _data(), batches=2)
    before = net[1].running_var.clone()
    with pytest.raises(InputError, match="no batches"):
        fxprune.recalibrate_bn(net, [], batches=2)
    assert torch.equal(net[1].running_var, before)
