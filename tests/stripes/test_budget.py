"""SWP with a budget (SoftPruner(method="swp", target_flops=F)) and the 1x1 switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxprune
from fxprune import InputError
from fxprune.models import create_model
from fxprune.stripes import StripePruner
from fxprune.stripes.budget import stripe_scores
from fxprune.train import SoftPruner


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_budget_reaches_the_target_and_finalize_is_exact(target):
    torch.manual_seed(0)
    model = create_model("resnet20", in_chans=1, num_classes=4)
    dense = fxprune.count(create_model("resnet20", in_chans=1, num_classes=4),
                          (torch.randn(1, 1, 16, 16),)).macs
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 4, (16,))
    pruner = SoftPruner(model, method="swp", target_flops=target, example_inputs=(x[:1],),
                        kernel="stripe", epochs=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    handle = pruner.attach(opt)
    seen = []
    for _ in range(3):
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        pruner.epoch_end()
        seen.append(pruner.kept_macs)
    assert seen[0] > seen[1] >= seen[2]  # a ramp, not one cut
    assert seen[-1] == pytest.approx(target, rel=0.02)  # the stripe convention
    small = pruner.finalize()
    handle.remove()
    # the finalized model counts a little below the stripe convention: a filter with no live
    # stripe also removes the next conv's input channel
    assert 0.94 * target <= fxprune.count(small, (x[:1],)).macs / dense <= 1.01 * target
    model.eval()
    small.eval()
    with torch.no_grad():  # the stripes oracle: the finalized model is the masked one
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert pruner.state_dict()["method_state"]["budget"]  # checkpoints keep the removed stripes


def test_stripe_scores_ignore_each_filters_scale():
    torch.manual_seed(0)
    model = create_model("resnet20", in_chans=1, num_classes=4)
    sp = StripePruner(model)
    conv = model.layer1[0].conv1
    before = stripe_scores(conv)
    with torch.no_grad():
        conv.weight[3].mul_(50.0)  # BatchNorm after the conv: the same function
    torch.testing.assert_close(stripe_scores(conv), before)
    assert sp.names


def test_regularize_1x1_false_leaves_projection_skeletons_alone():
    torch.manual_seed(0)
    model = create_model("resnet20_b", in_chans=1, num_classes=4)
    sp = StripePruner(model, alpha=0.5, regularize_1x1=False)
    convs = {n: m for n, m in model.named_modules() if hasattr(m, "fs")}
    ones = [n for n, m in convs.items() if tuple(m.kernel_size) == (1, 1)]
    assert ones  # the option-B projections
    for m in convs.values():
        m.fs.grad = torch.zeros_like(m.fs)
    sp.step()
    for n, m in convs.items():
        assert bool((m.fs.grad == 0).all()) == (n in ones), n
    assert StripePruner(create_model("resnet20_b", in_chans=1, num_classes=4)).regularize_1x1


def test_budget_target_is_checked():
    with pytest.raises(InputError, match="target_flops"):
        SoftPruner(create_model("resnet20", in_chans=1, num_classes=4), method="swp",
                   target_flops=1.5, example_inputs=(torch.randn(1, 1, 16, 16),))
