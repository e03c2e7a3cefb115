"""Criteria: hand-set weights with a known answer, closed forms against references, and the
oracle on real models for every built-in criterion."""

from __future__ import annotations

import math
import random

import pytest
import timm
import torch
import torch.nn as nn

import fxprune
from fxprune.criteria import CriterionCtx, get_criterion
from fxprune.errors import InputError
from fxprune.ir import meta
from fxprune.models import create_model
from fxprune.passes import fpgm, rnf
from fxprune.passes.bn_scale import norm_scales
from fxprune.passes.taylor import calibration_grads
from fxprune.testing import prune_and_check

C = torch.full((4,), 10.0)
E = torch.eye(4)
# F4 is the central (geometric-median-like) filter, though not the smallest: l1 prunes F1.
CENTRAL = torch.stack([C + 3 * E[0], C - 3 * E[0], C + 3 * E[1], C - 2 * E[1],
                       C + torch.tensor([0.0, 0.0, 0.5, 0.5])])
# angles 0/40/60/120 degrees, norms 1/1/10/1: only the cosine distance sees index 2 as central
ANGLES = torch.tensor([[n * math.cos(math.radians(a)), n * math.sin(math.radians(a)), 0.0, 0.0]
                       for a, n in zip((0, 40, 60, 120), (1, 1, 10, 1))])
X_TINY = torch.rand(4, 1, 4, 4)


class Tiny(nn.Module):
    """conv1 (filters of 1x2x2 = 4 weights) -> [bn] -> relu -> conv2 -> spatial mean."""

    def __init__(self, filters: torch.Tensor, bn: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(1, len(filters), 2, bias=False)
        self.bn = nn.BatchNorm2d(len(filters)) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(len(filters), 3, 1)
        with torch.no_grad():
            self.conv1.weight.copy_(filters.reshape(-1, 1, 2, 2))

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).mean(dim=(2, 3))


def pruned_filters(model: nn.Module, ratio: float, criterion, **kw) -> set[int]:
    small = fxprune.compress(model.eval(), ratio, criterion=criterion, example_inputs=X_TINY,
                             **kw)
    kept = small.meta[meta.MANIFEST]["conv1.weight"][0]
    return set(range(model.conv1.out_channels)) - set(kept)


# ---------------------------------------------------------------- hand-set answers

def test_l1_prunes_smallest_fpgm_prunes_central():
    model = Tiny(CENTRAL)
    assert pruned_filters(model, 0.2, "l1") == {1}
    assert pruned_filters(model, 0.2, "fpgm") == {4}
    assert pruned_filters(model, 0.2, "fpgm_l1") == {4}
    assert pruned_filters(model, 0.4, "fpgm") == {3, 4}


def test_fpgm_duplicate_filter_is_pruned():
    filters = torch.stack([C + 3 * E[0], C - 3 * E[1], C + 3 * E[2], C - 3 * E[3],
                           C + 3 * E[0]])  # 0 and 4 duplicate each other
    assert pruned_filters(Tiny(filters), 0.2, "fpgm") == {4}  # ties keep the lower index


def test_fpgm_distance_parameter_is_real():
    model = Tiny(ANGLES)
    assert pruned_filters(model, 0.25, "fpgm") == {1}
    assert pruned_filters(model, 0.25, "fpgm_cosine") == {2}
    assert pruned_filters(model, 0.25, fpgm.make("cosine")) == {2}
    assert pruned_filters(model, 0.25, "l1") == {0}


def test_fpgm_mix_norm_stage_then_distances_among_survivors():
    model = Tiny(CENTRAL)
    # 5 filters, mix 0.25: int(5 * 0.25) = 1 by norm, then int(5 * 0.2) = 1 by distance
    assert pruned_filters(model, 0.45, fpgm.make("l2", mix=0.25)) == {1, 4}
    s = fpgm.distance_sums(CENTRAL, "l2", mix=0.25)
    assert s[1] < s[[0, 2, 3, 4]].min()  # the norm stage ranks below every survivor
    survivors = CENTRAL[[0, 2, 3, 4]]
    ref = torch.cdist(survivors.double(), survivors.double()).sum(1)
    assert torch.equal(torch.argsort(s[[0, 2, 3, 4]]), torch.argsort(ref))


def test_fpgm_make_rejects_bad_arguments():
    with pytest.raises(InputError, match="distance"):
        fpgm.make("l3")
    with pytest.raises(InputError, match="mix"):
        fpgm.make("l2", mix=1.0)


def test_rnf_keeps_the_central_filters():
    line = torch.tensor([[-10.0, 0, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0],
                         [10, 0, 0, 0]])
    assert pruned_filters(Tiny(line), 0.4, "rnf") == {0, 4}
    assert pruned_filters(Tiny(line), 0.8, "rnf") == {0, 1, 3, 4}
    assert pruned_filters(Tiny(line), 0.2, "fpgm") == {2}  # the opposite direction


def rnf_iterative(w: torch.Tensor, m: int) -> set[int]:
    """CLR-RNF's procedure: grow k until the k-NN lists of all filters share >= m filters."""
    d = torch.cdist(w.double(), w.double())
    d.fill_diagonal_(-1.0)
    nbrs = torch.argsort(d, dim=1, stable=True).tolist()

    def inter(k: int) -> set[int]:
        return set.intersection(*(set(row[:k]) for row in nbrs))

    k = m
    while len(inter(k)) < m:
        k += 1
    found = inter(k)
    if len(found) == m:
        return found
    base = inter(k - 1)
    return base | set(sorted(found - base)[: m - len(base)])


def test_rnf_closed_form_matches_iterative_intersection():
    rng = random.Random(0)
    for case in range(150):
        n, d = rng.randint(2, 14), rng.randint(1, 6)
        w = torch.randn(n, d, generator=torch.Generator().manual_seed(case))
        if case % 3 == 0:  # integer grids give tied distances and duplicate filters
            w = w.mul(1.5).round()
        m = rng.randint(1, n)
        s = (n - rnf.worst_ranks(w)).tolist()
        keep = set(sorted(range(n), key=lambda i: (-s[i], i))[:m])  # select's tie rule
        assert keep == rnf_iterative(w, m), (case, n, m)


def test_bn_scale_prunes_smallest_abs_gamma():
    model = Tiny(CENTRAL)
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.05, 1.0, 2.0, -3.0, 0.5]))
    assert pruned_filters(model, 0.2, "bn_scale") == {0}
    assert pruned_filters(model, 0.4, "bn_scale") == {0, 4}  # |-3| is large


def test_bn_scale_detection_rule_and_l1_fallback():
    model = Tiny(CENTRAL, bn=False).eval()
    a = fxprune.analyze(fxprune.trace(model, (X_TINY,)))
    g = next(g for g in a.groups if any(m.target == "conv1" for m in g.members))
    ctx = CriterionCtx(root=a.gm)
    assert norm_scales(g, a.gm) == []
    assert torch.equal(get_criterion("bn_scale")(g, ctx), get_criterion("l1")(g, ctx))
    r56 = create_model("resnet56").eval()
    a = fxprune.analyze(fxprune.trace(r56, (torch.randn(2, 3, 32, 32),)))
    g = next(g for g in a.groups if g.producers == ("layer1_0_conv1",))
    assert [(m.target, m.param) for m in norm_scales(g, a.gm)] == [("layer1.0.bn1", "weight")]


def test_taylor_prunes_the_disconnected_filter():
    model = Tiny(CENTRAL)
    with torch.no_grad():
        model.conv2.weight[:, 2] = 0.0  # filter 2's output never reaches the loss
    data = [torch.rand(4, 1, 4, 4) for _ in range(2)]
    assert pruned_filters(model, 0.2, "taylor", data=data) == {2}
    assert pruned_filters(model, 0.2, "l1") == {1}
    gen = (x for x in data)  # a one-shot iterator is read once (cached), and labels are ignored
    assert pruned_filters(model, 0.2, "taylor", data=gen) == {2}
    assert pruned_filters(model, 0.2, "taylor", data=[(x, 0) for x in data]) == {2}


def test_taylor_leaves_the_model_untouched():
    model = Tiny(CENTRAL).train()
    model.conv2.bias.requires_grad_(False)
    fxprune.compress(model, 0.4, criterion="taylor", data=[X_TINY], example_inputs=X_TINY)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    assert not model.conv2.bias.requires_grad and model.conv1.weight.requires_grad
    gm = fxprune.trace(model, (X_TINY,))
    grads = calibration_grads(gm, [X_TINY])
    assert gm.training and any(bool(g.abs().sum() > 0) for g in grads.values())


def test_taylor_needs_data():
    with pytest.raises(InputError, match="calibration data"):
        fxprune.compress(Tiny(CENTRAL), 0.4, criterion="taylor", example_inputs=X_TINY)
    with pytest.raises(InputError, match="no batches"):
        fxprune.compress(Tiny(CENTRAL), 0.4, criterion="taylor", data=[],
                         example_inputs=X_TINY)


def test_scores_are_deterministic_and_sized():
    model = create_model("resnet20").eval()
    a = fxprune.analyze(fxprune.trace(model, (torch.randn(2, 3, 32, 32),)))
    for name in ("fpgm", "fpgm_cosine", "fpgm_mix", "rnf", "bn_scale"):
        s1, s2 = fxprune.score(a, name), fxprune.score(a, name)
        for g in a.groups:
            if g.id in s1:
                assert s1[g.id].shape == (g.size,) and torch.equal(s1[g.id], s2[g.id]), name


# ---------------------------------------------------------------- the oracle on real models

CRITERIA = ["fpgm", "fpgm_l1", "fpgm_cosine", "fpgm_mix", "rnf", "bn_scale", "taylor"]
MODELS = {
    "resnet56": (lambda: create_model("resnet56"), (2, 3, 32, 32)),
    "test_resnet": (lambda: timm.create_model("test_resnet"), (1, 3, 64, 64)),
}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("criterion", CRITERIA)
def test_criterion_passes_oracle(model_name, criterion):
    make, shape = MODELS[model_name]
    x = torch.randn(*shape)
    kw = {"data": [torch.randn(*shape)]} if criterion == "taylor" else {}
    prune_and_check(make(), (x,), 0.5, criterion=criterion, **kw)


def test_factory_criterion_passes_oracle():
    prune_and_check(create_model("resnet56"), (torch.randn(2, 3, 32, 32),), 0.5,
                    criterion=fpgm.make("l1", mix=0.2))
