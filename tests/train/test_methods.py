"""The training-time methods: SFP re-selection, FPGM's fixed selection, MFP switching, FPPMO."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import train_helpers as H  # noqa: E402  (tests/ is on sys.path: conftest.py)

import fxprune
from fxprune.passes.l1 import l1
from fxprune.train import SoftPruner


def neg_l1(group, ctx):
    """Prune the LARGEST filters (the opposite of l1): a second, disagreeing criterion."""
    return -l1(group, ctx)


class Branches(nn.Module):
    """Two 1x1-conv branches (4 filters each) -> ReLU -> pool -> concat -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, bias=False)
        self.b = nn.Conv2d(3, 4, 1, bias=False)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pa = torch.relu(self.a(x)).mean((2, 3))
        pb = torch.relu(self.b(x)).mean((2, 3))
        return self.fc(torch.cat([pa, pb], 1))


def set_branches(model: Branches, important_a: list[int], important_b: list[int]) -> None:
    """Filters 0, 1 large and 2, 3 small in both branches; only ``important_*`` filters reach
    the classifier."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in (model.a, model.b):
            conv.weight.copy_(torch.rand(4, 3, 1, 1, generator=g) + 0.1)
            conv.weight[:2] *= 4.0
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        for off, imp in ((0, important_a), (4, important_b)):
            for k, i in enumerate(imp):  # every important filter matters as much
                model.fc.weight[:, off + i] = torch.tensor([5.0, -5.0, 2.0]).roll(k)


def labelled(model: nn.Module, n: int = 2, logits: bool = False) -> list:
    """Batches labelled by the unpruned model itself (so the right mask has a low loss), with
    its class or (``logits=True``, for an MSE "distillation" attribute) its outputs."""
    g = torch.Generator().manual_seed(7)
    xs = [torch.rand(16, 3, 4, 4, generator=g) for _ in range(n)]
    with torch.no_grad():
        return [(x, model(x) if logits else model(x).argmax(1)) for x in xs]


X4 = torch.rand(1, 3, 4, 4)


def pruned_units(pruner: SoftPruner, conv: nn.Module) -> set[int]:
    for g in pruner.analysis.groups:
        if any(m.role == "out" and m.tensor(pruner.model).data_ptr() == conv.weight.data_ptr()
               for m in g.members):
            return set(range(g.size)) - set(pruner.keep[g.id].indices)
    raise AssertionError("conv not found")


# --- SFP ------------------------------------------------------------------------------------

def test_sfp_reselects_when_weights_change():
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, example_inputs=H.X8)
    conv = model.features[0]
    before = pruned_units(pruner, conv)
    assert len(before) == 4
    with torch.no_grad():  # the pruned filters "regrow" large, the kept ones shrink
        for i in range(8):
            conv.weight[i] = torch.randn(3, 3, 3) * (10.0 if i in before else 0.01)
    pruner.epoch_end()
    assert pruned_units(pruner, conv) == set(range(8)) - before
    assert pruner.masks_hold()


def test_sfp_interval_and_soft_with_any_criterion():
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, method="soft", criterion="fpgm", interval=2,
                        example_inputs=H.X8)
    ref = copy.deepcopy(model)
    a = fxprune.analyze(fxprune.trace(ref, H.X8))
    keep = fxprune.select(a, fxprune.score(a, "fpgm"), 0.5)
    assert pruner.keep == keep  # the same selection as the compiler's own pipeline
    for _ in range(5):
        pruner.epoch_end()
    assert pruner.stats["selections"] == 1 + 3  # construction, then after epochs 0, 2, 4
    pruner.epoch_end(force=True)
    assert pruner.stats["selections"] == 5


# --- FPGM -----------------------------------------------------------------------------------

@pytest.mark.parametrize("criterion", [None, "fpgm_mix"])
def test_fpgm_selection_fixed_across_epochs(criterion):
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, method="fpgm", criterion=criterion, example_inputs=H.X8)
    first = dict(pruner.keep)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    pruner.attach(opt)
    for _ in range(3):
        H.train_epoch(model, opt, H.batches(2), pruner,
                      after_step=lambda: None if pruner.masks_hold() else pytest.fail("mask"))
        assert pruner.keep == first
    for p in model.parameters():  # momentum of pruned entries stayed zero
        buf = opt.state[p].get("momentum_buffer")
        if buf is not None:
            assert bool((buf[p == 0] == 0).all()) or p.dim() == 1


# --- MFP ------------------------------------------------------------------------------------

def test_mfp_switches_to_the_criterion_with_the_best_loss():
    model = Branches()
    set_branches(model, [2, 3], [2, 3])  # the small filters matter: neg_l1 is right
    data = labelled(model)
    pruner = SoftPruner(model, 0.5, method="mfp", pool=["l1", neg_l1], data=data,
                        example_inputs=X4)
    assert pruner.method.chosen == "neg_l1"
    assert pruned_units(pruner, model.a) == {0, 1}
    hist = pruner.method.history[-1]["values"]
    assert hist[1] < hist[0]
    set_branches(model, [0, 1], [0, 1])  # now the large ones matter (as if retrained)
    data[:] = labelled(model)
    pruner.epoch_end()
    assert pruner.method.chosen == "l1"
    assert pruned_units(pruner, model.a) == {2, 3}
    assert pruner.masks_hold()
    small = pruner.finalize()
    torch.testing.assert_close(small(data[0][0]), model(data[0][0]), rtol=1e-4, atol=1e-5)


def test_mfp_layer_switch_beats_global_when_layers_disagree():
    losses = {}
    for switch in ("global", "layer"):
        model = Branches()
        set_branches(model, [2, 3], [0, 1])  # branch a needs neg_l1, branch b needs l1
        data = labelled(model, logits=True)
        pruner = SoftPruner(model, 0.5, method="mfp", pool=["l1", neg_l1], switch=switch,
                            data=data, loss_fn=F.mse_loss, example_inputs=X4)
        losses[switch] = pruner.method.history[-1]["value"]
        if switch == "layer":
            assert pruned_units(pruner, model.a) == {0, 1}
            assert pruned_units(pruner, model.b) == {2, 3}
            assert set(pruner.method.chosen.values()) == {"l1", "neg_l1"}
            restored = SoftPruner(Branches(), 0.5, method="mfp", pool=["l1", neg_l1],
                                  switch=switch, data=data, loss_fn=F.mse_loss,
                                  example_inputs=X4)
            restored.load_state_dict(pruner.state_dict())
            assert restored.method.chosen == pruner.method.chosen
    assert losses["layer"] < 1e-9 < losses["global"]


def test_mfp_default_pool_and_callable_attribute():
    model = H.make_model("vgg")
    calls = []

    def attribute(m: nn.Module) -> float:  # prefer networks with a small first-layer output
        calls.append(1)
        return float(m.features[0].weight.abs().sum())

    pruner = SoftPruner(model, 0.5, method="mfp", attribute=attribute, example_inputs=H.X8)
    assert pruner.method.chosen in ("l1", "l2", "fpgm", "fpgm_l1", "fpgm_cosine")
    assert 1 <= len(calls) <= 5  # identical candidate masks are evaluated once


# --- FPPMO ----------------------------------------------------------------------------------

def test_fppmo_probabilities_move_toward_better_masks():
    model = Branches()
    set_branches(model, [2, 3], [2, 3])  # pruning filters 0, 1 is free, 2, 3 hurts
    data = labelled(model, logits=True)
    original = copy.deepcopy(model.state_dict())
    pruner = SoftPruner(model, ratios={"a": 0.5}, method="fppmo", init="uniform", lam=4,
                        eta=0.2, data=data, loss_fn=F.mse_loss, example_inputs=X4, seed=1)
    (gid,) = pruner.method.theta  # only branch a has units to prune
    assert len(pruner.method.history) == 1  # a first step ran at construction (from 0.5 each)
    for _ in range(8):
        model.load_state_dict(original)  # as if training had let every filter regrow
        pruner.epoch_end()
    theta = pruner.method.theta[gid]
    assert float(theta[:2].min()) > 0.5 > float(theta[2:].max())
    assert float(theta.min()) >= 0.1 / 4 and float(theta.max()) <= 1 - 0.1 / 4
    small = pruner.finalize()  # deterministic: prune the highest probabilities
    assert pruned_units(pruner, model.a) == {0, 1}
    assert pruned_units(pruner, model.b) == set()
    torch.testing.assert_close(small(data[0][0]), model(data[0][0]), rtol=1e-4, atol=1e-5)


def test_fppmo_norm_init_and_seeded_sampling():
    runs = []
    for _ in range(2):
        model = H.make_model("vgg")
        pruner = SoftPruner(model, 0.5, method="fppmo", data=H.batches(1), seed=5,
                            example_inputs=H.X8)
        pruner.epoch_end()
        runs.append(pruner)
    a, b = runs
    assert a.keep == b.keep and a.method.history == b.method.history
    for gid, theta in a.method.theta.items():
        g = a.analysis.groups[gid]
        n = g.size - a.counts[gid]
        assert 0 < float(theta.sum()) <= g.size and n > 0
        assert torch.equal(theta, b.method.theta[gid])
    other = SoftPruner(H.make_model("vgg"), 0.5, method="fppmo", data=H.batches(1), seed=6,
                       example_inputs=H.X8)
    assert other.method.history[0]["values"] != a.method.history[0]["values"] or \
        other.keep != a.keep


# --- a method that is not a channel selection plugs in (the SWP hook points) ----------------

def test_custom_method_with_own_hooks_and_finalize():
    from fxprune.train import Method, register_method

    @register_method("_test_regularizer")
    class Regularizer(Method):
        """Adds an L1 gradient term to every BN gamma before each step; prunes no channel."""

        name = "_test_regularizer"
        default_criterion = None
        channel_selection = False
        options = {"alpha": 1e-3}

        def initial(self, pruner):
            return pruner.full_keep()

        def attach(self, pruner, optimizer):
            def pre(opt, args, kwargs):
                for m in pruner.model.modules():
                    if isinstance(m, nn.BatchNorm2d) and m.weight.grad is not None:
                        m.weight.grad.add_(self.opts["alpha"] * m.weight.detach().sign())
                self.calls = getattr(self, "calls", 0) + 1
            return [optimizer.register_step_pre_hook(pre)]

        def finalize(self, pruner, compact):
            compact.meta["test_regularizer"] = self.calls
            return compact

    model = H.make_model("vgg")
    pruner = SoftPruner(model, method="_test_regularizer", alpha=0.01, example_inputs=H.X8)
    assert pruner.kept_macs == pytest.approx(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = pruner.attach(opt)
    H.train_epoch(model, opt, H.batches(2), pruner)
    small = pruner.finalize()
    assert small.meta["test_regularizer"] == 2
    handle.remove()
    with pytest.raises(fxprune.InputError, match="no option"):
        SoftPruner(model, method="_test_regularizer", beta=1, example_inputs=H.X8)
