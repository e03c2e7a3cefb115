"""CLR as the authors ran it (lmbxmu/CLR-RNF ``cifar.py``), against a port of their structure
search: the same kept filters per layer on the same weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.core.clr import authors_costs, ranked_groups
from fxprune.ir import meta
from fxprune.models import create_model

# the authors' hard-coded tables (cifar.py: flops_cfg / flops_lambda) and README settings
VGG16_COSTS = [1.0, 18.15625, 9.07812, 18.07812, 9.03906, 18.03906, 18.03906, 9.01953, 18.01953,
               18.01953, 4.50488, 4.50488, 4.50488]
RESNET56_COSTS = [1.0] + [0.9052] * 8 + [0.67278] + [0.89297] * 8 + [0.66667] + [0.88685] * 8
RESNET110_COSTS = [1.0] + [0.9052] * 17 + [0.67278] + [0.89297] * 17 + [0.66667] + [0.88685] * 17
X = torch.randn(1, 3, 32, 32)


def authors_clr_keep(weights: list[torch.Tensor], costs: list[float], lam: float,
                     pr_target: float) -> list[int]:
    """Port of the structure search of ``graph_vgg``/``graph_resnet``: every weight of the ranked
    convs divided by ``cost**lam``, the ``int(T (1 - pr))``-th largest magnitude is the
    threshold, a layer's rate is the fraction of its weights strictly below it, and the layer
    keeps ``int(N (1 - rate))`` filters."""
    scaled = [torch.div(w, math.pow(c, lam)).reshape(-1) for w, c in zip(weights, costs)]
    pool = torch.cat(scaled)
    preserve = int(pool.numel() * (1 - pr_target))
    # their torch.topk(|pool|, preserve).values[-1], the preserve-th largest, found by selection
    threshold = torch.kthvalue(pool.abs(), pool.numel() - preserve + 1).values
    rates = [torch.sum(torch.lt(s.abs(), threshold)).item() / s.numel() for s in scaled]
    return [int(w.shape[0] * (1 - r)) for w, r in zip(weights, rates)]


class AuthorsVGG(nn.Module):
    """Their ``model/vgg_cifar.py`` VGG-16: conv (with bias) - BN - ReLU, max-pools, one Linear."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                  512, 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def convs(model: nn.Module, names: list[str]) -> list[torch.Tensor]:
    return [model.get_submodule(n).weight.detach() for n in names]


def kept_widths(small, names: list[str]) -> list[int]:
    return [small.get_submodule(n).out_channels for n in names]


def analyzed(model):
    return fxprune.analyze(fxprune.trace(model.eval(), (X,)))


def prunable(a) -> list:
    return [g for g in a.groups if g.prunable > 0 and g.size > 1]


def ranked_names(a) -> list[str]:
    return [m.target for _, m in ranked_groups(a, prunable(a))]


# ---------------------------------------------------------------- ranked layers and costs

def test_ranked_layers_are_every_vgg_conv_and_resnet_inner_convs():
    a = analyzed(create_model("vgg16_bn"))
    names = ranked_names(a)
    assert len(names) == 13 and all(isinstance(a.gm.get_submodule(n), nn.Conv2d) for n in names)
    a = analyzed(create_model("resnet56"))
    assert ranked_names(a) == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(9)]
    # scatter mode: the residual-output convs have groups of their own, still not ranked
    a = fxprune.analyze(fxprune.trace(create_model("resnet20").eval(), (X,)), residual="scatter")
    assert ranked_names(a) == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]


def test_authors_costs_reproduce_their_tables():
    a = analyzed(AuthorsVGG())
    costs = authors_costs(a, ranked_names(a))
    assert list(costs.values()) == VGG16_COSTS
    for name, table in (("resnet56", RESNET56_COSTS), ("resnet110", RESNET110_COSTS)):
        a = analyzed(create_model(name))
        assert list(authors_costs(a, ranked_names(a)).values()) == table, name


# ---------------------------------------------------------------- kept filters per layer

def test_vgg16_kept_filters_match_the_authors():
    """README: VGG-16, pr_target 0.86, lambda 0.5 (fxprune's VGG has no conv biases, so its
    own cost factors differ slightly from the table: pass the table, as a user would)."""
    model = create_model("vgg16_bn").eval()
    names = ranked_names(analyzed(model))
    want = authors_clr_keep(convs(model, names), VGG16_COSTS, 0.5, 0.86)
    small = fxprune.compress(model, 0.86, allocation="clr", clr_lambda=0.5,
                             clr_cost=VGG16_COSTS, example_inputs=X)  # counts: any criterion
    assert kept_widths(small, names) == want
    assert small.get_submodule("classifier.1").out_features == 512  # Linear: never ranked
    # their architecture (conv biases): the default cost convention is their table
    theirs = AuthorsVGG().eval()
    names = ranked_names(analyzed(theirs))
    want = authors_clr_keep(convs(theirs, names), VGG16_COSTS, 0.5, 0.86)
    small = fxprune.compress(theirs, 0.86, allocation="clr", clr_lambda=0.5,
                             example_inputs=X, verify=True)
    assert 0 in want  # on these random weights their code would crash (RNF with m = 0) ...
    assert kept_widths(small, names) == [max(1, k) for k in want]  # ... fxprune keeps one
    assert small.meta["fxprune.verify"].ok


@pytest.mark.parametrize("seed", [0, 1])
def test_resnet56_kept_filters_match_the_authors(seed):
    """README: ResNet-56, pr_target 0.56, lambda 10; only the blocks' conv1 lose filters."""
    torch.manual_seed(seed)
    model = create_model("resnet56").eval()
    names = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(9)]
    want = authors_clr_keep(convs(model, names), RESNET56_COSTS, 10.0, 0.56)
    small = fxprune.compress(model, 0.56, allocation="clr", clr_lambda=10,
                             criterion="rnf", example_inputs=X, verify=True)
    assert kept_widths(small, names) == want
    assert small.get_submodule("conv1").out_channels == 16  # the stream is not ranked
    assert all(small.get_submodule(n.replace("conv1", "conv2")).out_channels
               == model.get_submodule(n.replace("conv1", "conv2")).out_channels for n in names)
    assert small.meta["fxprune.allocation"]["clr_cost"] == "authors"


def test_clr_has_no_cap_unless_asked():
    model = create_model("resnet20").eval()
    with torch.no_grad():
        model.layer3[0].conv1.weight.mul_(1e-4)  # every weight below any threshold
    a = analyzed(model)
    s = fxprune.score(a, "l1")
    gid = next(g.id for g, m in ranked_groups(a, prunable(a)) if m.target == "layer3.0.conv1")
    assert fxprune.allocate(a, s, 0.3, allocation="clr")[gid] == 63 / 64  # keeps one
    assert fxprune.allocate(a, s, 0.3, allocation="clr", max_ratio=0.5)[gid] == 0.5


def test_clr_cost_mapping_macs_and_errors():
    model = create_model("resnet20").eval()
    a = analyzed(model)
    s = fxprune.score(a, "l1")
    names = ranked_names(a)
    table = dict(zip(names, [1.0] * len(names)))
    assert fxprune.allocate(a, s, 0.5, allocation="clr", clr_cost={"layer*": 1.0}) == \
        fxprune.allocate(a, s, 0.5, allocation="clr", clr_cost=table)
    macs = fxprune.allocate(a, s, 0.5, allocation="clr", clr_cost="macs")
    stream = max(a.groups, key=lambda g: len(g.producers))
    assert macs[stream.id] > 0  # fxprune's convention ranks the residual stream too
    assert fxprune.allocate(a, s, 0.5, allocation="clr")[stream.id] == 0.0
    with pytest.raises(fxprune.InputError, match="clr_cost"):
        fxprune.allocate(a, s, 0.5, allocation="clr", clr_cost="flops")
    with pytest.raises(fxprune.InputError, match="9 layers are ranked"):
        fxprune.allocate(a, s, 0.5, allocation="clr", clr_cost=[1.0, 2.0])
    with pytest.raises(fxprune.InputError, match="no cost for"):
        fxprune.allocate(a, s, 0.5, allocation="clr", clr_cost={"layer1.*": 1.0})
    with pytest.raises(fxprune.InputError, match="positive"):
        fxprune.allocate(a, s, 0.5, allocation="clr", clr_cost=[0.0] * 9)


def test_clr_authors_target_flops():
    model = create_model("resnet20").eval()
    small = fxprune.compress(model, target_flops=0.6, allocation="clr", example_inputs=X)
    base = fxprune.count(model, X).macs
    assert abs(fxprune.count(small, X).macs / base - 0.6) <= 0.006
    assert meta.ALLOCATION in small.meta
