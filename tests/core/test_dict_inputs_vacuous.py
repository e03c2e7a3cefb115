"""Dict example inputs (forward(**inputs)), the oracle's vacuous-check flag, and parameters that
forward never reads surviving into the pruned model."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune import InputError
from fxprune.core.verify import vacuous_reason
from fxprune.testing import prune_and_check


class Masked(nn.Module):
    """Two tensor inputs by keyword; a trailing argument left to its default."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 4)

    def forward(self, x, mask=None, scale: float = 1.0):
        h = F.relu(self.fc1(x)) * scale
        if mask is not None:
            h = h * mask
        return self.fc2(h)


def _inputs():
    torch.manual_seed(0)
    return {"x": torch.randn(2, 5, 16), "mask": torch.rand(2, 5, 1)}


def test_dict_inputs_through_compress_verify_count():
    model, inputs = Masked().eval(), _inputs()
    pruned = prune_and_check(model, inputs, 0.5)
    assert tuple(pruned.fc1.weight.shape) == (32, 16)
    small = fxprune.compress(model, 0.5, example_inputs=inputs)
    assert small.meta["fxprune.verify"].kind == "exact"
    assert fxprune.verify(model, small, inputs).kind == "exact"
    with torch.no_grad():  # the pruned module takes the same keywords, in any order
        assert small(mask=inputs["mask"], x=inputs["x"]).shape == model(**inputs).shape
    assert fxprune.count(small, inputs).macs < fxprune.count(model, inputs).macs


@pytest.mark.parametrize(("inputs", "match"), [
    ({"x": torch.randn(1, 16), "masks": torch.ones(1, 1)}, "no such parameter"),
    ({"mask": torch.ones(1, 1)}, "has no 'x'"),
    ({0: torch.randn(1, 16)}, "keys must be the names"),
])
def test_bad_dict_inputs_are_input_errors(inputs, match):
    with pytest.raises(InputError, match=match):
        fxprune.compress(Masked(), 0.5, example_inputs=inputs)


class ZeroHead(nn.Module):
    """torchvision ViT style: the head is zero-initialised, so every output is zero."""

    def __init__(self, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.head = nn.Linear(16, 5, bias=bias)
        nn.init.zeros_(self.head.weight)
        if bias:
            nn.init.uniform_(self.head.bias, 1, 2)

    def forward(self, x):
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


def test_zero_head_makes_the_check_vacuous_and_compress_warns():
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="vacuous"):
        pruned = fxprune.compress(ZeroHead(), 0.5, example_inputs=x)
    report = pruned.meta["fxprune.verify"]
    assert report.ok and report.vacuous and "zero" in report.vacuous
    assert "vacuous" in str(report)


def test_constant_bias_head_is_vacuous_with_two_samples():
    report = fxprune.verify(m := ZeroHead(bias=True), fxprune.compress(
        m, 0.5, example_inputs=torch.randn(2, 3, 8, 8), verify=False))
    assert report.kind == "exact" and "same outputs" in report.vacuous


def test_a_real_check_is_not_vacuous():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no vacuous warning
        pruned = fxprune.compress(model, 0.5, example_inputs=torch.randn(2, 3, 8, 8))
    assert pruned.meta["fxprune.verify"].vacuous is None


def test_vacuous_reason_tolerance():
    assert vacuous_reason(torch.zeros(3)) is not None
    assert vacuous_reason((torch.full((2, 3), 7.0), torch.full((1,), 7.0))) is not None
    assert vacuous_reason(torch.tensor([1.0, 1.0 + 1e-7])) is not None  # within rtol
    assert vacuous_reason(torch.tensor([1.0, 1.01])) is None
    assert vacuous_reason(torch.tensor([[1.0, 2.0], [1.0, 2.5]])) is None


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)
        self.spare = nn.Parameter(torch.randn(8))  # forward never reads it
        self.aux = nn.Module()
        self.aux.scale = nn.Parameter(torch.randn(3))
        self.register_buffer("seen", torch.zeros(2))

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


def test_unused_parameters_survive():
    model = Unused()
    x = torch.randn(1, 3, 8, 8)
    pruned = prune_and_check(model, x, 0.5)
    sd = pruned.state_dict()
    for k in ("spare", "aux.scale", "seen"):
        torch.testing.assert_close(sd[k], model.state_dict()[k])
        assert sd[k].data_ptr() != model.state_dict()[k].data_ptr()  # no shared storage
    assert isinstance(pruned.spare, nn.Parameter)
    with tempfile.TemporaryDirectory() as d:  # a file keeps what forward uses; still verifies
        fxprune.save(pruned, Path(d) / "p.pt")
        assert fxprune.verify(model, fxprune.load(Path(d) / "p.pt"), x).kind == "exact"
        again = fxprune.load(Path(d) / "p.pt", model=Unused())
        assert "spare" in again.state_dict()
