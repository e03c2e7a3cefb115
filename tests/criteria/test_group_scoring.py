"""Group-level scores: a unit scored from every slice bound to it (producers' filters,
consumers' input columns, norm scales), on hand-set weights where producer-only and group
scores disagree; the default is today's producer-only score; the oracle holds either way."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.criteria import GroupScoring
from fxprune.errors import InputError


def _net() -> nn.Module:
    """conv1's channel 0 has the larger filter, but conv2 reads channel 1 far more."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                        nn.Conv2d(2, 3, 1, bias=False), nn.Flatten(1), nn.LazyLinear(4))
    net(torch.randn(1, 1, 4, 4))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 0.9]).view(2, 1, 1, 1))
        net[1].weight.fill_(1.0)
        net[3].weight.copy_(torch.tensor([[0.1, 5.0]] * 3).view(3, 2, 1, 1))
    return net.eval()


def _scores(scoring):
    net = _net()
    gm = fxprune.trace(net, (torch.randn(2, 1, 4, 4),))
    analysis = fxprune.analyze(gm)
    group = next(g for g in analysis.groups
                 if any(m.target == "0" and m.role == "out" for m in g.members))
    return fxprune.score(analysis, "l1", scoring=scoring)[group.id]


def test_default_is_producer_only() -> None:
    s = _scores(None)
    assert s[0] > s[1]
    torch.testing.assert_close(s, _scores(GroupScoring("producers", "mean", "mean")))


@pytest.mark.parametrize("spec", ["all", "all/mean/mean", "all/none/sum", "all/max/sum",
                                  "all/none/mean"])
def test_group_scores_see_the_consumer(spec: str) -> None:
    s = _scores(spec)
    assert s[1] > s[0], spec


def test_first_reduction_reads_the_first_member_only() -> None:
    torch.testing.assert_close(_scores("all/none/first"), torch.tensor([1.0, 0.9],
                                                                       dtype=torch.float64))


def test_hand_computed_values() -> None:
    # all/none/sum: |conv1 filter|_1 + |bn gamma| + |conv2 input column|_1 (over 3 filters)
    torch.testing.assert_close(_scores("all/none/sum"),
                               torch.tensor([1.0 + 1.0 + 3 * 0.1, 0.9 + 1.0 + 3 * 5.0],
                                            dtype=torch.float64))


def test_bad_spec_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="members"):
        GroupScoring.parse("everything")
    with pytest.raises(InputError, match="reduction"):
        GroupScoring("all", "mean", "median")


@pytest.mark.parametrize("spec", ["all", "all/none/sum"])
def test_group_scored_model_passes_the_oracle(spec: str) -> None:
    from fxprune.models import create_model

    model = create_model("resnet20").eval()
    analysis = fxprune.analyze(fxprune.trace(model, (torch.randn(2, 3, 32, 32),)))
    scores = fxprune.score(analysis, "l2", scoring=spec)
    keep = fxprune.select(analysis, scores, 0.5)
    pruned = fxprune.rewrite(analysis.gm)
    report = fxprune.verify(model, pruned, (torch.randn(2, 3, 32, 32),))
    assert report.ok and report.kind == "exact" and keep
