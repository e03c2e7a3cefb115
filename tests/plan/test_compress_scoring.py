"""compress(..., scoring=...) is score(scoring=) + select + rewrite and passes the oracle;
compress(..., data=, recalibrate=N) recalibrates BatchNorm after the oracle; old keyword calls
keep working."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from scoring_nets import disagreeing_net  # noqa: E402  (tests/ is on sys.path: conftest.py)
from torch.utils.data import DataLoader, TensorDataset

import fxprune
from fxprune.errors import InputError
from fxprune.plan.options import AnalysisOptions


def _net() -> nn.Module:
    return disagreeing_net().eval()


X = (torch.randn(2, 1, 4, 4),)


def _kept_conv1(pruned) -> torch.Tensor:
    return pruned.get_submodule("0").weight.flatten()


@pytest.mark.parametrize("spec", [None, "all", "all/none/sum"])
def test_compress_scoring_equals_score_and_select(spec) -> None:
    net = _net()
    pruned = fxprune.compress(net, 0.5, criterion="l1", example_inputs=X, scoring=spec)
    assert pruned.meta["fxprune.verify"].ok
    analysis = fxprune.analyze(fxprune.trace(net, X))
    fxprune.select(analysis, fxprune.score(analysis, "l1", scoring=spec), 0.5)
    manual = fxprune.rewrite(analysis.gm)
    torch.testing.assert_close(_kept_conv1(pruned), _kept_conv1(manual))
    # producer-only keeps the larger filter (1.0); group scores keep the channel conv2 reads
    expected = 1.0 if spec is None else 0.9
    assert _kept_conv1(pruned).tolist() == [pytest.approx(expected)]


def test_scoring_in_analysis_options_and_twice_is_an_error() -> None:
    pruned = fxprune.compress(_net(), 0.5, example_inputs=X,
                              analysis=AnalysisOptions(scoring="all"))
    assert _kept_conv1(pruned).tolist() == [pytest.approx(0.9)]
    with pytest.raises(InputError, match="twice"):
        fxprune.compress(_net(), 0.5, example_inputs=X, scoring="producers",
                         analysis=AnalysisOptions(scoring="all"))
    with pytest.raises(InputError, match="members"):
        fxprune.compress(_net(), 0.5, example_inputs=X, scoring="everything")


def _data(n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g) * 3 + 2
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=8)


def test_recalibrate_after_the_oracle() -> None:
    net = _net()
    plain = fxprune.compress(net, 0.5, example_inputs=X)
    recal = fxprune.compress(net, 0.5, example_inputs=X, data=_data(), recalibrate=2)
    assert recal.meta["fxprune.recalibrated"] == 2 and "fxprune.recalibrated" not in plain.meta
    assert recal.meta["fxprune.verify"].ok  # the oracle ran on the rewrite's statistics
    bn_plain, bn_recal = plain.get_submodule("1"), recal.get_submodule("1")
    torch.testing.assert_close(bn_plain.running_mean, net[1].running_mean[:1])
    x = torch.cat([b[0] for b in _data()][:2])
    with torch.no_grad():
        h = recal.get_submodule("0")(x)
    torch.testing.assert_close(bn_recal.running_mean, h.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert not recal.training and torch.equal(recal.get_submodule("0").weight,
                                              plain.get_submodule("0").weight)


def test_recalibrate_errors() -> None:
    with pytest.raises(InputError, match="needs data"):
        fxprune.compress(_net(), 0.5, example_inputs=X, recalibrate=3)
    with pytest.raises(InputError, match="recalibrate"):
        fxprune.compress(_net(), 0.5, example_inputs=X, data=_data(), recalibrate=-1)
