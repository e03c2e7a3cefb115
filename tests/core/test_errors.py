"""Bad input gets a clear error (what, where, how to fix) or is handled correctly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.models import create_model


def small():
    return create_model("resnet20")


X = torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_ratio_out_of_range(ratio):
    with pytest.raises(fxprune.InputError, match=r"ratio"):
        fxprune.compress(small(), ratio, example_inputs=X)


def test_ratio_that_would_empty_groups_keeps_one_channel():
    pruned = fxprune.compress(small(), 0.999, example_inputs=X)
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= 1
    assert pruned(X).shape == (1, 10)


@pytest.mark.parametrize("bad", [{"w": torch.ones(1)}, "resnet50", nn.Conv2d])
def test_not_a_module(bad):
    with pytest.raises(fxprune.InputError, match="expects a torch.nn.Module"):
        fxprune.compress(bad, 0.5)


def test_nothing_prunable():
    with pytest.raises(fxprune.InputError, match="nothing to prune"):
        fxprune.compress(nn.Linear(8, 4), 0.5, example_inputs=torch.randn(2, 8))


def test_wrong_input_shape_names_the_node():
    pattern = r"(?s)conv1.*resnet_cifar.py:\d+.*Hint: check that example_inputs"
    with pytest.raises(fxprune.InputError, match=pattern):
        fxprune.compress(small(), 0.5, example_inputs=torch.randn(1, 4, 32, 32))


def test_wrong_input_dtype():
    with pytest.raises(fxprune.InputError, match="example_inputs"):
        fxprune.compress(small(), 0.5, example_inputs=torch.randn(1, 3, 32, 32,
                                                                  dtype=torch.float64))


def test_model_on_another_device_than_input():
    model = small().to("meta")
    with pytest.raises(fxprune.InputError, match="is on cpu but the model is on meta"):
        fxprune.compress(model, 0.5, example_inputs=X)


def test_float64_model_gets_matching_default_input():
    model = small().double()
    pruned = fxprune.compress(model, 0.5, example_inputs=X.double(), verify=True)
    assert pruned.meta["fxprune.verify"].status == "exact"
    assert next(pruned.parameters()).dtype == torch.float64


def test_unknown_criterion():
    with pytest.raises(fxprune.InputError, match="unknown criterion 'nope'.*Available: .*l1"):
        fxprune.compress(small(), 0.5, example_inputs=X, criterion="nope")


@pytest.mark.parametrize("ignore, match", [
    ("layer9", "no module named 'layer9'"),
    (nn.LSTM, "no module of type LSTM"),
    (nn.Conv2d(3, 3, 1), "not part of the traced model"),
    (3.5, "cannot interpret 3.5"),
])
def test_bad_ignore(ignore, match):
    with pytest.raises(fxprune.InputError, match=match):
        fxprune.compress(small(), 0.5, example_inputs=X, ignore=[ignore])


def test_bad_round_to():
    with pytest.raises(fxprune.InputError, match="round_to"):
        fxprune.compress(small(), 0.5, example_inputs=X, round_to=0)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow
            return y
        return -y


def test_untraceable_model_names_source_line():
    with pytest.raises(fxprune.TraceFailure, match=r"test_errors.py:\d+ \(forward\)"):
        fxprune.compress(DataDependent(), 0.5, example_inputs=X)


def test_untraceable_submodule_becomes_a_frozen_leaf():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.inner = DataDependent()
            self.mid = nn.Conv2d(8, 8, 3)
            self.out = nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.out(self.mid(self.stem(x)).relu()).mean((2, 3)) + self.inner(x).mean()

    with pytest.warns(UserWarning, match="DataDependent"):
        pruned = fxprune.compress(Wrapper(), 0.5, example_inputs=X, verify=True)
    assert pruned.get_submodule("mid").out_channels == 4


def test_verify_needs_a_pruned_module():
    with pytest.raises(fxprune.InputError, match="manifest"):
        fxprune.verify(small(), small(), X)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"a": torch.ones(1)}, path)
    with pytest.raises(fxprune.InputError, match="not an fxprune file"):
        fxprune.load(path)


class _ViewNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv1d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x).relu()
        return self.head(y.view(y.shape[0], 8, -1))  # literal 8: the Reshape rule patches it


@pytest.mark.parametrize("check", [True, "nodes"])
def test_broken_rule_is_caught_by_the_rewrite_check(monkeypatch, check):
    """The postcondition names the node whose rule did not rewrite its arguments."""
    from fxprune.rules.shape import Reshape

    monkeypatch.setattr(Reshape, "rewrite_node", lambda self, node, ctx: None)
    model = _ViewNet()
    gm = fxprune.trace(model, torch.randn(1, 3, 8, 8))
    analysis = fxprune.analyze(gm)
    fxprune.select(analysis, fxprune.score(analysis, "l1"), 0.5)
    with pytest.raises(fxprune.RewriteError, match="node 'view'"):
        fxprune.rewrite(gm, check=check)
    monkeypatch.undo()  # the real rule: the same keep-sets rewrite to an exact model
    pruned = fxprune.rewrite(gm, check=check)
    assert fxprune.verify(model, pruned).status == "exact"


def test_rewrite_check_argument():
    gm = fxprune.trace(_ViewNet(), torch.randn(1, 3, 8, 8))
    analysis = fxprune.analyze(gm)
    fxprune.select(analysis, fxprune.score(analysis, "l1"), 0.5)
    with pytest.raises(fxprune.InputError, match="check must be"):
        fxprune.rewrite(gm, check="everything")
