"""Criteria as their authors ran them: residual scores without a producer-count bias, FPGM-mix
counts and pruned sets against a port of the authors' mask code, cosine FPGM on zero filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.ir import meta
from fxprune.models import create_model
from fxprune.passes import fpgm

# ---------------------------------------------------------------- residual groups

STAGES = ((0, 16), (16, 32), (32, 64))


def stream_pruned_fraction(name: str, criterion: str, seed: int) -> list[float]:
    """Option-A CIFAR ResNet, coupled: the one residual group of 64 units (channels 0-15 are
    fed by the stem and every stage's conv2s, 32-63 by stage 3's only)."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    a = fxprune.analyze(fxprune.trace(model, (torch.randn(1, 3, 32, 32),)))
    keep = fxprune.select(a, fxprune.score(a, criterion), 0.4)
    g = max(a.groups, key=lambda g: len(g.producers))
    assert g.size == 64
    kept = set(keep[g.id].indices)
    return [1 - sum(i in kept for i in range(lo, hi)) / (hi - lo) for lo, hi in STAGES]


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
@pytest.mark.parametrize("criterion", ["l1", "fpgm"])
def test_residual_scores_do_not_favour_units_with_more_producers(name, criterion):
    runs = np.array([stream_pruned_fraction(name, criterion, seed) for seed in range(3)])
    # summed scores prune stage-3-only channels: [0, 0, 0.75]; averaged, every range ~0.4
    assert np.all(runs > 0.1), runs
    assert np.all(np.abs(runs.mean(axis=0) - 0.4) < 0.12), runs


# ---------------------------------------------------------------- FPGM-mix, the authors' way

def authors_fpgm_mix(w: torch.Tensor, rate_norm: float, rate_dist: float) -> set[int]:
    """Port of ``Mask.get_filter_codebook`` + ``get_filter_similar`` (FPGM ``pruning_cifar10.py``,
    distance bug included: always L2 norms and Euclidean distances): the filters both masks zero.
    """
    n = w.shape[0]
    flat = w.reshape(n, -1).double()
    n_norm = int(n * (1 - rate_norm))  # their expression, float rounding included
    n_dist = int(n * rate_dist)
    by_norm = np.argsort(flat.norm(dim=1).numpy(), kind="stable")
    small, large = by_norm[:n_norm], by_norm[n_norm:]
    survivors = flat[torch.as_tensor(large)]
    sums = torch.cdist(survivors, survivors).abs().sum(dim=0).numpy()
    similar = np.argsort(sums, kind="stable")[:n_dist]
    return {int(i) for i in small} | {int(large[i]) for i in similar}


class OneConv(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, n, 3, bias=False)
        self.bn = nn.BatchNorm2d(n)
        self.conv2 = nn.Conv2d(n, 4, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).mean(dim=(2, 3))


@pytest.mark.parametrize("n", [10, 16, 20, 32, 64])
def test_fpgm_mix_counts_and_sets_match_the_authors(n):
    model = OneConv(n).eval()
    want = authors_fpgm_mix(model.conv1.weight.detach(), rate_norm=0.9, rate_dist=0.3)
    assert len(want) == {10: 3, 16: 5, 20: 7, 32: 12, 64: 25}[n]  # not floor(0.4 n)
    x = torch.randn(1, 3, 8, 8)
    for crit in ("fpgm_mix", fpgm.make("l2", mix=0.1)):
        small = fxprune.compress(model, 0.4, criterion=crit, example_inputs=x)
        kept = set(small.meta[meta.MANIFEST]["conv1.weight"][0])
        assert set(range(n)) - kept == want, (n, crit)


def test_fpgm_mix_count_rule():
    rule = fpgm.mix_count(0.1)
    assert [rule(n, 0.4) for n in (10, 16, 20, 32, 64)] == [3, 5, 7, 12, 25]
    assert [fpgm.norm_stage_count(n, 0.1) for n in (10, 16, 20, 32, 64)] == [0, 1, 1, 3, 6]
    assert rule(16, 0.05) == 0 and rule(16, 0.0) == 0  # below the norm stage: floor(n * ratio)
    # only under a uniform rate: global allocation sets its own counts
    a = fxprune.analyze(fxprune.trace(OneConv(16).eval(), (torch.randn(1, 3, 8, 8),)))
    s = fxprune.score(a, "fpgm_mix")
    gid = next(g.id for g in a.groups if g.size == 16)
    assert fxprune.allocate(a, s, 0.4, count_rule=rule)[gid] == 5 / 16
    assert fxprune.allocate(a, s, 0.4)[gid] == 0.4


# ---------------------------------------------------------------- cosine FPGM

def test_fpgm_cosine_prunes_an_all_zero_filter_first():
    torch.manual_seed(1)
    model = OneConv(6).eval()
    with torch.no_grad():
        model.conv1.weight[2] = 0.0
    s = fpgm.distance_sums(model.conv1.weight, "cosine")
    assert int(s.argmin()) == 2 and float(s[2]) < 0
    small = fxprune.compress(model, 1 / 6, criterion="fpgm_cosine",
                             example_inputs=torch.randn(1, 3, 8, 8))
    assert 2 not in small.meta[meta.MANIFEST]["conv1.weight"][0]
    # the zero filter does not inflate the others' sums either
    others = [0, 1, 3, 4, 5]
    ref = fpgm.distance_sums(model.conv1.weight[others], "cosine")
    torch.testing.assert_close(s[others], ref)
    mixed = fpgm.distance_sums(model.conv1.weight, "cosine", mix=0.5)  # zero: norm stage
    assert int(mixed.argmin()) == 2
