"""SoftPruner(scoring=...): the method's selections use group scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from scoring_nets import disagreeing_net  # noqa: E402  (tests/ is on sys.path: conftest.py)

from fxprune.errors import InputError
from fxprune.train.engine import SoftPruner


def _net() -> nn.Module:
    return disagreeing_net()


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
