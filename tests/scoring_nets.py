"""A hand-set model where producer-only and group scores disagree (not collected: no ``test_``
prefix; tests/ is on sys.path, see conftest.py)."""

from __future__ import annotations

import torch
import torch.nn as nn


def disagreeing_net() -> nn.Module:
    """conv1's channel 0 has the larger filter, but conv2 reads channel 1 far more."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                        nn.Conv2d(2, 3, 1, bias=False), nn.Flatten(1), nn.Linear(48, 4))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 0.9]).view(2, 1, 1, 1))
        net[1].weight.fill_(1.0)
        net[3].weight.copy_(torch.tensor([[0.1, 5.0]] * 3).view(3, 2, 1, 1))
    return net
