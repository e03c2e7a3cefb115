"""SoftPruner(scoring=...): the method's selections use group scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxprune.errors import InputError
from fxprune.train.engine import SoftPruner


def _net() -> nn.Module:
    """conv1's channel 0 has the larger filter, but conv2 reads channel 1 far more."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                        nn.Conv2d(2, 3, 1, bias=False), nn.Flatten(1), nn.Linear(48, 4))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 0.9]).view(2, 1, 1, 1))
        net[1].weight.fill_(1.0)
        net[3].weight.copy_(torch.tensor([[0.1, 5.0]] * 3).view(3, 2, 1, 1))
    return net


def _kept(scoring) -> tuple[int, ...]:
    pruner = SoftPruner(_net(), 0.5, method="soft", criterion="l1", scoring=scoring,
                        example_inputs=(torch.randn(2, 1, 4, 4),))
    group = next(g for g in pruner.analysis.groups
                 if any(m.target == "0" and m.role == "out" for m in g.members))
    return pruner.keep[group.id].indices


def test_scoring_changes_the_selection() -> None:
    assert _kept(None) == (0,)
    assert _kept("all") == (1,)
    with pytest.raises(InputError, match="members"):
        _kept("everything")
