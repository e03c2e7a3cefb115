"""fxprune.search_allocation: measured candidates for a MACs target (EagleEye's adaptive-BN
proxy); the chosen ratios reproduce under compress, verified by the oracle."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.errors import InputError
from fxprune.models import create_model
from fxprune.plan.search import search_allocation

X = torch.randn(1, 1, 16, 16)


def _batches(n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
            for _ in range(n)]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20_b", in_chans=1, num_classes=10).eval()


def test_search_meets_the_target_and_compress_reproduces_it(model) -> None:
    before = copy.deepcopy(model.state_dict())
    found = search_allocation(model, 0.5, data=_batches(3, 0), eval_data=_batches(2, 1),
                              criterion="l2", example_inputs=(X,), candidates=4,
                              recal_batches=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert len(found.candidates) == 4 and found.uniform_loss == found.candidates[0]["loss"]
    assert found.loss == min(c["loss"] for c in found.candidates)
    assert all(abs(c["achieved"] - 0.5) <= 0.01 * 0.5 for c in found.candidates)
    # candidate 0 is uniform (up to one channel per group: the target search's last step)
    uniform = found.candidates[0]["ratios"].values()
    assert max(uniform) - min(uniform) <= 1 / 16
    small = fxprune.compress(model, ratios=found.ratios, criterion="l2", example_inputs=(X,))
    kept = fxprune.count(small, (X,)).macs / fxprune.count(model, (X,)).macs
    assert kept == pytest.approx(found.candidates[found.chosen]["achieved"], abs=1e-9)
    assert small.meta["fxprune.verify"].ok


def test_spread_zero_is_uniform_and_custom_loss(model) -> None:
    calls = []

    def loss_fn(m, batches):  # any (model, batches) -> float; lower is better
        calls.append(len(batches))
        return float(len(calls))

    found = search_allocation(model, 0.5, data=_batches(2, 0), eval_data=_batches(2, 1),
                              example_inputs=(X,), candidates=3, spread=0.0, recal_batches=2,
                              eval_batches=1, loss_fn=loss_fn)
    assert calls == [1, 1, 1] and found.chosen == 0
    assert [c["ratios"] for c in found.candidates[1:]] == [found.candidates[0]["ratios"]] * 2


@pytest.mark.parametrize("kw, match", [
    ({"target_flops": 1.0}, "target_flops"),
    ({"candidates": 0}, "candidates"),
    ({"spread": 1.5}, "spread"),
    ({"data": []}, "no batches"),
    ({"eval_data": 3}, "eval_data must be an iterable"),
])
def test_bad_input_is_a_clear_error(model, kw, match) -> None:
    args = dict(target_flops=0.5, data=_batches(1, 0), eval_data=_batches(1, 1),
                example_inputs=(X,), candidates=2)
    args.update(kw)
    with pytest.raises(InputError, match=match):
        search_allocation(model, **args)
