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


def _ramped(target, steps, **options):
    """ResNet-20 trained 3 epochs of ``steps`` SGD steps under the SWP budget; returns (model,
    inputs, dense MACs, kept MACs after each epoch, finalized model). The pruner's checkpoint
    state is in ``small.meta["swp_state"]``."""
    torch.manual_seed(0)
    model = create_model("resnet20", in_chans=1, num_classes=4)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 4, (16,))
    dense = fxprune.count(model, (x[:1],)).macs
    pruner = SoftPruner(model, method="swp", target_flops=target, example_inputs=(x[:1],),
                        epochs=3, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    handle = pruner.attach(opt)
    seen = []
    for _ in range(3):
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        pruner.epoch_end()
        seen.append(pruner.kept_macs)
    small = pruner.finalize()
    handle.remove()
    small.meta["swp_state"] = pruner.state_dict()["method_state"]
    return model, x, dense, seen, small


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_budget_reaches_the_target_and_finalize_is_exact(target):
    torch.manual_seed(0)
    model, x, dense, seen, small = _ramped(target, 2, kernel="stripe")
    assert seen[0] > seen[1] >= seen[2]  # a ramp, not one cut
    assert seen[-1] == pytest.approx(target, rel=0.02)  # the stripe convention
    # the finalized model counts a little below the stripe convention: a filter with no live
    # stripe also removes the next conv's input channel
    assert 0.94 * target <= fxprune.count(small, (x[:1],)).macs / dense <= 1.01 * target
    model.eval()
    small.eval()
    with torch.no_grad():  # the stripes oracle: the finalized model is the masked one
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert small.meta["swp_state"]["budget"]  # checkpoints keep the removed stripes


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


@pytest.mark.parametrize("granularity,target", [("shape", 0.5), ("shape", 0.3),
                                               ("shape+filter", 0.5)])
def test_shape_budget_is_realized_by_the_dense_kernel(granularity, target):
    """granularity="shape": whole kernel row/column pairs go ("shape+filter": also whole
    filters of block-inner convs), so the finalized model's plain dense convs measure what the
    budget counted, and it equals the masked model."""
    model, x, dense, seen, small = _ramped(target, 1, granularity=granularity, kernel="dense")
    assert seen[0] > seen[1] >= seen[2]
    # pairs are coarse: at or a little below; filters are finer
    assert (0.85 if granularity == "shape" else 0.97) * target <= seen[-1] <= target
    assert fxprune.count(small, (x[:1],)).macs / dense == pytest.approx(seen[-1], abs=0.01)
    reports = small.meta["fxprune.stripes"]
    forms = {r.form for r in reports.values()}
    assert forms <= {"Conv2d 3x3", "Conv2d 1x3", "Conv2d 3x1", "Conv2d 1x1"}, forms
    cut = {n for n, r in reports.items() if r.filters[0] < r.filters[1]}
    if granularity == "shape":
        assert forms - {"Conv2d 3x3"} and not cut
    else:  # only the convs that alone produce their channels lose filters
        assert cut and all(n.endswith(".conv1") for n in cut), cut
    model.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert small.meta["swp_state"]["granularity"] == granularity


def test_shape_budget_removes_the_pair_with_the_least_energy():
    from fxprune.stripes.shape import box_fraction, shape_live

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    model = torch.nn.Sequential(conv)
    StripePruner(model)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[:, :, :, 0].mul_(0.1)  # columns 0 and 2 are weak in every filter...
        conv.weight[:, :, :, 2].mul_(0.1)
        conv.weight[0, :, 0, :].mul_(0.5)  # ...rows differ less, and in one filter only
    live = {"0": torch.ones(6, 3, 3, dtype=torch.bool)}
    out = shape_live({"0": conv}, live, {"0": 900.0}, 1000.0, 0.5)["0"]
    assert bool(out[:, :, 1].all()) and not bool(out[:, :, [0, 2]].any())  # 3x3 -> 3x1
    assert box_fraction(out) == pytest.approx(1 / 3)
    # a bigger cut continues to 1x1, never below
    out = shape_live({"0": conv}, live, {"0": 900.0}, 1000.0, 0.01)["0"]
    assert out.sum() == 6 and bool(out[:, 1, 1].all())


def test_granularity_is_checked():
    with pytest.raises(InputError, match="granularity"):
        StripePruner(create_model("resnet20", in_chans=1, num_classes=4), granularity="row")


def test_exclusive_consumers_are_the_block_inner_convs():
    from fxprune.stripes.shape import exclusive_consumers

    model = create_model("resnet20_b", in_chans=1, num_classes=4)
    sp = StripePruner(model)
    cons = exclusive_consumers(model, (torch.randn(1, 1, 16, 16),), sp.names)
    assert set(cons) == {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)}
    src = cons["layer2.1.conv1"]["layer2.1.conv2"]
    assert src.tolist() == list(range(32))  # conv2's input i is conv1's filter i


def test_budget_ramp_ends_where_the_settle_epochs_begin():
    torch.manual_seed(0)
    model = create_model("resnet20", in_chans=1, num_classes=4)
    x = torch.randn(4, 1, 16, 16)
    pruner = SoftPruner(model, method="swp", target_flops=0.5, example_inputs=(x[:1],),
                        granularity="shape+filter", kernel="dense", epochs=4, settle=2)
    seen = []
    for _ in range(4):
        pruner.epoch_end()
        seen.append(round(pruner.kept_macs, 2))
    # ramp over epochs - settle = 2 epochs: 0.75 after the first, the budget from the second
    assert seen[0] == pytest.approx(0.75, abs=0.02)
    assert all(s == pytest.approx(0.5, abs=0.01) for s in seen[1:]), seen


@pytest.mark.parametrize("name", ["vgg16_bn", "mobilenetv2"])
def test_shape_filter_budget_counts_what_finalize_removes(name):
    """The cost model equals fxprune.count on the finalized model on a plain net and on a
    depthwise one, where a filter whose channel runs through a depthwise conv (whose BN bias
    keeps it nonzero) is not counted as removable; a budget that cannot be reached warns."""
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=4).eval()
    x = torch.randn(2, 1, 32, 32)
    dense = fxprune.count(model, (x,)).macs
    sp = StripePruner(model, example_inputs=(x,), granularity="shape+filter", kernel="dense")
    if name == "mobilenetv2":
        with pytest.warns(UserWarning, match="nothing more is removable"):
            kept = sp.prune_to(0.5)
        assert kept > 0.6
    else:
        kept = sp.prune_to(0.5)
        assert kept == pytest.approx(0.5, abs=0.01)
    small = sp.finalize(kernel="dense", round_to=None)
    assert fxprune.count(small, (x,)).macs / dense == pytest.approx(kept, abs=1e-3)


def test_dead_stripes_stay_exactly_zero_between_steps():
    """After every optimizer step the removed stripes and dead filters' BatchNorm entries are
    exactly 0: momentum would leave tiny values that decay into float32 denormals, which slow
    a CPU convolution about 10x."""
    torch.manual_seed(0)
    model = create_model("resnet20", in_chans=1, num_classes=4)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))
    sp = StripePruner(model, example_inputs=(x[:1],), granularity="shape+filter")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    handle = sp.attach(opt)
    for i in range(6):
        if i == 1:
            sp.prune_to(0.6)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        conv = model.layer2[0].conv1
        dead = ~(conv.fs.abs() > sp.delta)
        if i >= 2:
            assert bool(dead.any())
            assert bool((conv.fs[dead] == 0).all())
            gone = dead.flatten(1).all(1)
            assert bool((model.layer2[0].bn1.weight[gone] == 0).all())
    handle.remove()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
