"""fxprune's oracle on models pruned by slicing (as Torch-Pruning does): kept indices are
located by value, then the model must pass :func:`fxprune.verify`'s checks."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn as nn

from fxprune.bench.oracle import kept_indices, verify_sliced

HAS_TP = importlib.util.find_spec("torch_pruning") is not None


def test_kept_indices_on_two_cut_axes():
    w = torch.randn(8, 6, 3, 3)
    rows, cols = [0, 3, 4, 7], [1, 2, 5]
    assert kept_indices(w, w[rows][:, cols]) == {0: rows, 1: cols}
    assert kept_indices(w, w.clone()) == {}
    assert kept_indices(torch.ones(8), torch.ones(4)) is None  # values cannot tell
    assert kept_indices(w, torch.randn(4, 6, 3, 3)) is None  # not a slice of w
    assert kept_indices(w[:4], w[[1, 0]]) == {0: [1, 0]}  # order as found, not sorted
    assert kept_indices(w, w[:, :, :2, :2]) == {2: [0, 1], 3: [0, 1]}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y))) + y  # residual: c1 and c2 outputs coupled
        return self.fc(y.mean((2, 3)))


def _net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = Net().eval()
    for b in (m.b1, m.b2):  # non-trivial statistics, so a wrong slice shows in the output
        b.running_mean.uniform_(-1, 1)
        b.running_var.uniform_(0.5, 2)
    return m, torch.randn(2, 3, 8, 8)


def _slice(m: nn.Module, keep: list[int], keep_in: list[int] | None = None) -> nn.Module:
    """A hand-pruned copy: the residual stream keeps ``keep`` (c2/fc read ``keep_in``)."""
    p = copy.deepcopy(m)
    keep_in = keep if keep_in is None else keep_in
    with torch.no_grad():
        for conv, rows, cols in ((p.c1, keep, None), (p.c2, keep, keep_in)):
            w = conv.weight[rows]
            conv.weight = nn.Parameter(w if cols is None else w[:, cols])
            conv.bias = nn.Parameter(conv.bias[rows])
        for bn in (p.b1, p.b2):
            for name in ("weight", "bias"):
                setattr(bn, name, nn.Parameter(getattr(bn, name)[keep]))
            bn.running_mean, bn.running_var = bn.running_mean[keep], bn.running_var[keep]
        p.fc.weight = nn.Parameter(p.fc.weight[:, keep_in])
    return p


def test_a_correct_slice_is_exact():
    m, x = _net()
    r = verify_sliced(m, _slice(m, [0, 2, 5, 7]), (x,))
    assert r["verdict"] == "exact", r
    assert r["max_abs_err"] < 1e-5


def test_a_statistic_from_other_channels_is_incompatible():
    """The running mean of channel 1 where channel 0 is kept: located, and contradicting."""
    m, x = _net()
    p = _slice(m, [0, 2, 5, 7])
    p.b2.running_mean = m.b2.running_mean[[1, 2, 5, 7]].clone()
    assert verify_sliced(m, p, (x,))["verdict"] == "incompatible"


def test_inconsistent_slices_are_incompatible():
    """c1 keeps channels 0, 2, 5, 7 but c2 and fc read 1, 3, 4, 6: not one coupled choice."""
    m, x = _net()
    r = verify_sliced(m, _slice(m, [0, 2, 5, 7], keep_in=[1, 3, 4, 6]), (x,))
    assert r["verdict"] == "incompatible", r


def test_a_wrong_constant_is_a_mismatch():
    """Right shapes, but a BatchNorm bias (zeros: not locatable by value) changed."""
    m, x = _net()
    p = _slice(m, [0, 2, 5, 7])
    p.b2.bias = nn.Parameter(torch.full((4,), 0.5))
    r = verify_sliced(m, p, (x,))
    assert r["verdict"] == "mismatch" and r["max_abs_err"] > 1e-3, r


def test_cutting_a_frozen_channel_is_unverified():
    """Cutting the logits (frozen: they reach the output) is not something the oracle checks."""
    m, x = _net()
    p = copy.deepcopy(m)
    p.fc.weight = nn.Parameter(p.fc.weight[:2].detach())
    p.fc.bias = nn.Parameter(p.fc.bias[:2].detach())
    r = verify_sliced(m, p, (x,))
    assert r["verdict"] == "unverified" and "output" in r["verdict_note"], r


@pytest.mark.skipif(not HAS_TP, reason="torch-pruning is not installed (the bench extra)")
def test_torch_pruning_result_is_exact():
    import torch_pruning as tp

    m, x = _net()
    original = copy.deepcopy(m)
    tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                         pruning_ratio=0.5, ignored_layers=[m.fc]).step()
    assert m.c1.out_channels == 4
    assert verify_sliced(original, m, (x,))["verdict"] == "exact"
