"""Allocation policies (uniform, global, CLR, explicit ratios) and FLOPs/params targets."""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch

import fxprune
from fxprune.errors import InputError
from fxprune.ir import meta
from fxprune.models import create_model
from fxprune.plan.allocate import ALLOCATION, layer_costs
from fxprune.plan.compress import prune_graph

X32 = torch.randn(2, 3, 32, 32)


def analyzed(model, x=X32):
    gm = fxprune.trace(model.eval(), (x,))
    return gm, fxprune.analyze(gm)


def removed_fraction(analysis) -> dict[int, float]:
    keep = analysis.gm.meta[meta.KEEPSETS]
    return {g.id: 1 - len(keep[g.id].indices) / g.size for g in analysis.groups}


def producer_of(analysis, name):
    return next(g for g in analysis.groups
                if sorted({m.target for m in g.members if m.role == "out"}) == [name])


# ---------------------------------------------------------------- global ranking

def test_global_never_exceeds_max_ratio():
    model = create_model("resnet56").eval()
    with torch.no_grad():  # 4 dominant filters: normalized, the other 28 look dead
        model.layer2[0].conv1.weight[:4].mul_(1e3)
    gm = fxprune.trace(model, (X32,))
    _, a = prune_graph(gm, 0.3, allocation="global", max_ratio=0.5)
    removed = removed_fraction(a)
    assert max(removed.values()) <= 0.5 + 1e-9
    assert removed[producer_of(a, "layer2.0.conv1").id] == 0.5  # capped, not 1.0
    scored = [g for g in a.groups if g.prunable > 0 and g.size > 1]
    total = sum(round(removed[g.id] * g.size) for g in scored)
    assert total == math.floor(0.3 * sum(g.prunable for g in scored))
    assert len({round(removed[g.id], 3) for g in scored}) > 1  # not uniform


def test_global_normalizes_scores_per_group():
    model = create_model("resnet20").eval()
    with torch.no_grad():  # scaling a layer must not change a mean-normalized ranking
        model.layer3[0].conv1.weight.mul_(100.0)
    a1 = analyzed(model)[1]
    r1 = fxprune.allocate(a1, fxprune.score(a1, "l1"), 0.4, allocation="global")
    with torch.no_grad():
        model.layer3[0].conv1.weight.div_(100.0)
    a2 = analyzed(model)[1]
    r2 = fxprune.allocate(a2, fxprune.score(a2, "l1"), 0.4, allocation="global")
    assert r1 == r2


def test_frozen_units_and_round_to_are_honoured():
    model = create_model("resnet56")
    gm = fxprune.trace(model.eval(), (X32,))
    _, a = prune_graph(gm, 0.6, allocation="global", ignore=["layer1.0.conv1"], round_to=8)
    keep = a.gm.meta[meta.KEEPSETS]
    for g in a.groups:
        k = len(keep[g.id].indices)
        assert set(g.frozen_units) <= set(keep[g.id].indices)
        assert k >= 1 and (k % 8 == 0 or k == g.size), (g.id, k)
    assert removed_fraction(a)[producer_of(a, "layer1.0.conv1").id] == 0.0


# ---------------------------------------------------------------- explicit ratios

def test_explicit_ratios_apply_to_named_layers():
    small = fxprune.compress(create_model("resnet56"), ratios={"layer3.*": 0.75},
                             example_inputs=X32, verify=True)
    mods = dict(small.named_modules())
    for i in range(9):
        assert mods[f"layer3.{i}.conv1"].out_channels == 16  # 64 - floor(64 * 0.75)
        assert mods[f"layer1.{i}.conv1"].out_channels == 16  # untouched
        assert mods[f"layer2.{i}.conv1"].out_channels == 32
    assert mods["conv1"].out_channels == 16  # the residual stream is shared with the stem

    small = fxprune.compress(create_model("resnet56"), 0.5, example_inputs=X32,
                             ratios={"layer1.0.conv1": 0.0, "layer1.*": 0.25})
    mods = dict(small.named_modules())
    assert mods["layer1.0.conv1"].out_channels == 16  # exact name beats the glob
    assert mods["layer1.1.conv1"].out_channels == 12
    assert mods["layer2.1.conv1"].out_channels == 16  # the default ratio 0.5


def test_explicit_ratios_cover_a_whole_residual_stage():
    model = timm.create_model("resnet18")
    small = fxprune.compress(model, 0.2, ratios={"layer4.*": 0.7},
                             example_inputs=torch.randn(1, 3, 64, 64))
    mods = dict(small.named_modules())
    kept = 512 - math.floor(512 * 0.7)
    assert mods["layer4.0.conv1"].out_channels == kept
    assert mods["layer4.1.conv2"].out_channels == kept  # residual group: all producers match
    assert mods["layer4.0.downsample.0"].out_channels == kept
    assert mods["layer3.0.conv1"].out_channels == 256 - math.floor(256 * 0.2)


def test_explicit_ratios_errors():
    with pytest.raises(InputError, match="match no producer"):
        fxprune.compress(create_model("resnet20"), 0.5, ratios={"layer9.*": 0.5},
                         example_inputs=X32)
    with pytest.raises(InputError, match="ratios"):
        fxprune.compress(create_model("resnet20"), ratios={"layer1.*": 1.0},
                         example_inputs=X32)


# ---------------------------------------------------------------- CLR

def test_clr_costs_are_macs_per_filter_relative_to_the_first_layer():
    _, a = analyzed(create_model("resnet56"))
    c = layer_costs(a)
    assert c[("conv1", "weight")] == 1.0  # 3*9 weights x 32*32 outputs
    assert c[("layer1.0.conv1", "weight")] == pytest.approx(16 * 9 * 1024 / (27 * 1024))
    assert c[("layer3.1.conv1", "weight")] == pytest.approx(64 * 9 * 64 / (27 * 1024))


def test_clr_pool_has_filters_not_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    _, a = analyzed(model, torch.randn(1, 3, 8, 8))
    conv2 = 72 * 16 / (27 * 36)  # (weights per filter x outputs per channel) / conv1's
    assert layer_costs(a) == {("0", "weight"): 1.0, ("2", "weight"): pytest.approx(conv2)}


def test_clr_lambda_shifts_pruning_to_costly_layers():
    _, a = analyzed(create_model("resnet56"))
    s = fxprune.score(a, "l1")

    def gap(lam: float) -> float:  # layer1 (c = 5.3) minus layer3 (c = 1.3) mean ratio
        r = fxprune.allocate(a, s, 0.5, allocation="clr", clr_lambda=lam, clr_cost="macs")
        mean = {st: sum(r[producer_of(a, f"{st}.{i}.conv1").id] for i in range(9)) / 9
                for st in ("layer1", "layer3")}
        return mean["layer1"] - mean["layer3"]

    gaps = [gap(lam) for lam in (0.0, 1.0, 2.0)]
    assert gaps[0] < 0 < gaps[2]  # lambda=0: magnitude only; larger lambda: cost dominates
    assert gaps[0] < gaps[1] < gaps[2]


def test_clr_amount_is_the_fraction_of_pool_weights():
    _, a = analyzed(create_model("resnet20"))
    s = fxprune.score(a, "l1")
    r = fxprune.allocate(a, s, 0.0, allocation="clr")
    assert all(v == 0.0 for v in r.values())
    r = fxprune.allocate(a, s, 0.99, allocation="clr", max_ratio=0.6)
    assert max(r.values()) <= 0.6


# ---------------------------------------------------------------- targets

def achieved(model, small, x):
    c0, c1 = fxprune.count(model, (x,)), fxprune.count(small, (x,))
    return c1.macs / c0.macs, c1.params / c0.params


@pytest.mark.parametrize("criterion,allocation", [("l1", "uniform"), ("fpgm", "global")])
def test_target_flops_resnet50(criterion, allocation):
    model = timm.create_model("resnet50").eval()
    x = torch.randn(1, 3, 224, 224)
    small = fxprune.compress(model, target_flops=0.5, criterion=criterion,
                             allocation=allocation, example_inputs=x)
    macs, _ = achieved(model, small, x)
    assert abs(macs - 0.5) <= 0.005
    assert small.meta[ALLOCATION]["achieved"] == pytest.approx(macs)


def test_target_params_resnet50():
    model = timm.create_model("resnet50").eval()
    x = torch.randn(1, 3, 224, 224)
    small = fxprune.compress(model, target_params=0.5, example_inputs=x)
    _, params = achieved(model, small, x)
    assert abs(params - 0.5) <= 0.005


@pytest.mark.parametrize("allocation", ["uniform", "global", "clr"])
@pytest.mark.parametrize("kind", ["target_flops", "target_params"])
def test_targets_fast(allocation, kind):
    """resnet56: uniform steps are coarse (27 same-size groups), so the search refines."""
    model = create_model("resnet56").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the target must be met: no warning
        small = fxprune.compress(model, allocation=allocation, example_inputs=X32,
                                 **{kind: 0.4})
    macs, params = achieved(model, small, X32)
    assert abs((macs if kind == "target_flops" else params) - 0.4) <= 0.004


def test_target_with_explicit_ratios_and_round_to():
    model = timm.create_model("test_resnet").eval()
    x = torch.randn(1, 3, 64, 64)
    small = fxprune.compress(model, target_flops=0.6, ratios={"layer1.0.conv1": 0.0},
                             example_inputs=x, round_to=4, verify=True)
    assert dict(small.named_modules())["layer1.0.conv1"].out_channels == 32
    assert abs(achieved(model, small, x)[0] - 0.6) <= 0.006


def test_argument_errors():
    m, x = create_model("resnet20"), X32
    cases = [({}, "nothing to do"), ({"ratio": 0.5, "target_flops": 0.5}, "not both"),
             ({"target_flops": 0.5, "target_params": 0.5}, "not both"),
             ({"target_flops": 1.5}, "KEEP"), ({"target_flops": 0.0}, "KEEP"),
             ({"ratio": 0.5, "allocation": "best"}, "allocation"),
             ({"ratio": 0.5, "allocation": "global", "max_ratio": 1.0}, "max_ratio"),
             ({"target_flops": 0.001}, "out of reach")]
    for kw, match in cases:
        with pytest.raises(InputError, match=match):
            fxprune.compress(m, example_inputs=x, **kw)


def test_uniform_default_is_unchanged():
    model = create_model("resnet20").eval()
    a = fxprune.compress(model, 0.5, example_inputs=X32)
    b = fxprune.compress(model, 0.5, example_inputs=X32, allocation="uniform", max_ratio=0.3)
    assert a.meta[meta.MANIFEST] == b.meta[meta.MANIFEST]
    assert a.meta[ALLOCATION]["allocation"] == "uniform"
