"""prune_iteratively: the geometric schedule, the epoch split, the final size equal to a
one-shot cut's, the user's model untouched, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import fxprune
from fxprune.errors import InputError
from fxprune.train.gradual import _split, prune_iteratively, step_targets


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    return net, DataLoader(TensorDataset(x, y), batch_size=16), (x[:2],)


def test_schedule_and_split() -> None:
    assert step_targets(0.25, 2) == pytest.approx([0.5, 0.25])
    assert _split(5, 2) == [2, 3] and sum(_split(16, 3)) == 16


def test_ratio_reaches_the_one_shot_width() -> None:
    net, loader, ex = _setup()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rounds = []
    small, hists = prune_iteratively(
        net, 0.75, steps=2, train_loader=loader, epochs=2, example_inputs=ex,
        fit_kwargs={"lr": 0.05, "progress": False},
        callback=lambda i, m, h: rounds.append(m.get_submodule("0").out_channels))
    assert rounds == [8, 4] and len(hists) == 2
    one_shot = fxprune.compress(net, 0.75, example_inputs=ex)
    assert small.get_submodule("0").out_channels == one_shot.get_submodule("0").out_channels
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_target_flops() -> None:
    net, loader, ex = _setup()
    small, _ = prune_iteratively(net, target_flops=0.3, steps=2, train_loader=loader, epochs=2,
                                 example_inputs=ex, fit_kwargs={"lr": 0.05, "progress": False})
    kept = fxprune.count(small, ex).macs / fxprune.count(net, ex).macs
    assert kept == pytest.approx(0.3, abs=0.06)


@pytest.mark.parametrize("kw, match", [({}, "exactly one"), ({"ratio": 0.5, "steps": 0}, "steps"),
                                       ({"ratio": 0.5, "epochs": 1, "steps": 2}, "epochs"),
                                       ({"ratio": 0.5, "fit_kwargs": {}}, "lr")])
def test_bad_arguments(kw, match) -> None:
    net, loader, ex = _setup()
    args = {"steps": 2, "epochs": 2, "fit_kwargs": {"lr": 0.1}, **kw}
    with pytest.raises(InputError, match=match):
        prune_iteratively(net, train_loader=loader, example_inputs=ex, **args)
