"""The one allocation plan and the grouped options: old keywords and option objects give the
same model; SoftPruner and compress choose the same channels for the same options."""

from __future__ import annotations

import copy

import pytest
import torch

import fxprune
from fxprune import (
    AllocationPlan,
    AnalysisOptions,
    InputError,
    LatencyOptions,
    SoftPruner,
    VerifyOptions,
)
from fxprune.ir import meta
from fxprune.models import create_model
from fxprune.plan.allocate import ALLOCATION
from fxprune.plan.checks import check_amount, check_ratio, check_target

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20").eval()


def _same(a: torch.fx.GraphModule, b: torch.fx.GraphModule) -> None:
    assert a.meta[meta.MANIFEST] == b.meta[meta.MANIFEST]
    assert a.meta[ALLOCATION] == b.meta[ALLOCATION]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("old,new", [
    (dict(ratio=0.5, allocation="global", max_ratio=0.6, round_to=4, residual="scatter",
          check="nodes"),
     dict(plan=AllocationPlan(0.5, allocation="global", max_ratio=0.6, round_to=4),
          analysis=AnalysisOptions(residual="scatter"), verify=VerifyOptions(check="nodes"))),
    (dict(target_flops=0.6, ratios={"layer1.*": 0.25}, ignore=["layer3.2.conv1"]),
     dict(plan=AllocationPlan(target_flops=0.6, ratios={"layer1.*": 0.25}),
          analysis=AnalysisOptions(ignore=["layer3.2.conv1"]))),
    (dict(ratio=0.4, allocation="clr", clr_cost="macs", clr_lambda=2.0),
     dict(plan=AllocationPlan(0.4, allocation="clr", clr_cost="macs", clr_lambda=2.0))),
])
def test_old_keywords_and_option_objects_give_the_same_model(old, new):
    model = _model()
    ratio = old.pop("ratio", None)
    a = fxprune.compress(model, ratio, example_inputs=X, **old)
    b = fxprune.compress(model, example_inputs=X, **new)
    _same(a, b)
    assert a.meta[meta.VERIFY].kind == b.meta[meta.VERIFY].kind == "exact"


def test_objects_and_keywords_mix():
    model = _model()
    ref = fxprune.compress(model, 0.5, allocation="global", round_to=4, example_inputs=X,
                           verify=False)
    # the positional ratio and a keyword join a plan that leaves them at their defaults
    mixed = fxprune.compress(model, 0.5, plan=AllocationPlan(allocation="global"), round_to=4,
                             example_inputs=X, verify=VerifyOptions(oracle=False))
    _same(ref, mixed)
    # the same value given both ways is one option
    twice = fxprune.compress(model, 0.5, plan=AllocationPlan(0.5, allocation="global",
                                                             round_to=4),
                             allocation="global", example_inputs=X, verify=False)
    _same(ref, twice)
    assert meta.VERIFY not in mixed.meta and meta.VERIFY not in twice.meta


def test_option_errors():
    model = _model()
    with pytest.raises(InputError, match="allocation is given twice"):
        fxprune.compress(model, plan=AllocationPlan(0.5, allocation="global"),
                         allocation="clr", example_inputs=X)
    with pytest.raises(InputError, match="ratio is given twice"):
        fxprune.compress(model, 0.3, plan=AllocationPlan(0.5), example_inputs=X)
    with pytest.raises(TypeError, match="unexpected keyword argument 'alocation'.*'allocation'"):
        fxprune.compress(model, 0.5, alocation="global", example_inputs=X)
    with pytest.raises(InputError, match="plan= must be an AllocationPlan"):
        fxprune.compress(model, plan={"ratio": 0.5}, example_inputs=X)
    with pytest.raises(InputError, match="verify must be True or False"):
        fxprune.compress(model, 0.5, verify="no", example_inputs=X)
    with pytest.raises(InputError, match="max_ratio is given twice"):
        SoftPruner(model, plan=AllocationPlan(0.5, max_ratio=0.5), max_ratio=0.7,
                   example_inputs=X)
    with pytest.raises(InputError, match="target_latency"):
        SoftPruner(copy.deepcopy(model), plan=AllocationPlan(target_latency=0.5),
                   example_inputs=X)


def test_checks_are_public_and_keep_their_messages():
    assert check_ratio(0) == 0.0 and check_target("target_flops", None) is None
    with pytest.raises(InputError, match=r"ratio must be in \[0, 1\)"):
        check_ratio(1.0)
    with pytest.raises(InputError, match="target_params must be the fraction of the original"):
        check_target("target_params", 0.0)
    with pytest.raises(InputError, match="give ratio or target_flops, not both"):
        check_amount(0.5, target_flops=0.5)
    a = check_amount(target_params=0.5)
    assert (a.ratio, a.target, a.metric, a.latency, a.amount) == (None, 0.5, "params", None, 0.0)
    assert AllocationPlan().empty and not AllocationPlan(ratios={"a": 0.5}).empty
    assert AllocationPlan(0.0).prunes() is False and AllocationPlan(target_flops=0.9).prunes()
    assert LatencyOptions(batch=8).kwargs() == {"batch": 8, "threads": None, "device": None}


@pytest.mark.parametrize("criterion,plan", [
    ("l2", AllocationPlan(0.4, allocation="global", round_to=4)),
    ("l1", AllocationPlan(0.5, allocation="clr", clr_cost="macs", clr_lambda=2.0,
                          max_ratio=0.8)),
    ("fpgm_mix", AllocationPlan(0.4)),  # the criterion's own count rule under "uniform"
    ("l2", AllocationPlan(target_flops=0.6, ratios={"layer1.0.conv1": 0.5})),
])
def test_softpruner_and_compress_choose_the_same_channels(criterion, plan):
    """One plan, two entry points: the same per-group ratios, keep-sets and compact model.
    (SoftPruner once passed neither clr_cost nor the criterion's count rule.)"""
    model = _model()
    small = fxprune.compress(model, plan=plan, criterion=criterion, example_inputs=X,
                             verify=False)
    pruner = SoftPruner(copy.deepcopy(model), plan=plan, method="soft", criterion=criterion,
                        example_inputs=X)
    assert pruner.ratios == small.meta[ALLOCATION]["ratios"]
    assert pruner.allocation == {k: v for k, v in small.meta[ALLOCATION].items()
                                 if k != "ratios"}
    compact = pruner.finalize()
    assert compact.meta[meta.MANIFEST] == small.meta[meta.MANIFEST]
    # the same options as SoftPruner's keywords
    kw = {k: getattr(plan, k) for k in ("ratio", "allocation", "ratios", "target_flops",
                                        "clr_lambda", "clr_cost", "round_to")}
    again = SoftPruner(copy.deepcopy(model), method="soft", criterion=criterion,
                       example_inputs=X, max_ratio=plan.max_ratio or 0.9, **kw)
    assert again.ratios == pruner.ratios and again.keep == pruner.keep
