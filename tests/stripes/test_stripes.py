"""Stripe-wise pruning (SWP): every emitted form against the masked dense conv, the Filter
Skeleton hooks, and whole-model finalize against the thresholded model."""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.errors import InputError
from fxprune.models import create_model
from fxprune.stripes import (
    STRIPES,
    CroppedConv2d,
    SkeletonConv2d,
    StripeConv2d,
    StripePruner,
    finalize,
    insert_skeletons,
)
from fxprune.stripes.forms import dense_form, live_rectangle, stripe_form
from fxprune.stripes.probe import choose, clear_cache

PATTERNS = ["all_dead", "one", "rect_centred", "rect_corner", "scattered", "full"]


def pattern(name: str, o: int, k: int, gen: torch.Generator) -> torch.Tensor:
    live = torch.zeros(o, k, k, dtype=torch.bool)
    if name == "one":
        live[o // 2, k - 1, 0] = True
    elif name == "rect_centred":
        live[:, k // 2, :] = True  # a 1 x K row through the centre
    elif name == "rect_corner":
        live[1:o - 1, : max(1, k // 2), k // 2:] = True  # not centred: CroppedConv2d
    elif name == "scattered":
        live = torch.rand(o, k, k, generator=gen) < 0.3
        live[0, 0, 0] = True
    elif name == "full":
        live[:] = True
    return live


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_forms_equal_masked_dense_conv(k: int, stride: int) -> None:
    gen = torch.Generator().manual_seed(k * 10 + stride)
    for name, batch, cl, bias in itertools.product(PATTERNS, [1, 3], [False, True],
                                                   [False, True]):
        o, c = 6, 5
        conv = nn.Conv2d(c, o, k, stride=stride, padding=k // 2, bias=bias)
        live = pattern(name, o, k, gen)
        masked = F.conv2d  # the reference: the dense conv with the dead stripes zeroed
        w = conv.weight.detach() * live.unsqueeze(1)
        for h, wd in [(9, 8), (8, 11)]:
            x = torch.randn(batch, c, h, wd, generator=gen)
            if cl:
                x = x.to(memory_format=torch.channels_last)
            ref = masked(x, w, conv.bias, stride, k // 2)
            for form in (dense_form(conv, live), stripe_form(conv, live)):
                if cl:
                    form = form.to(memory_format=torch.channels_last)
                with torch.no_grad():
                    y = form(x)
                assert y.shape == ref.shape, (name, type(form).__name__)
                torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5,
                                           msg=f"{name} {type(form).__name__} b{batch} cl{cl}")


def test_dense_form_drops_dead_positions() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    gen = torch.Generator().manual_seed(0)
    row = dense_form(conv, pattern("rect_centred", 6, 3, gen))
    assert type(row) is nn.Conv2d and row.kernel_size == (1, 3) and row.padding == (0, 1)
    centre = torch.zeros(6, 3, 3, dtype=torch.bool)
    centre[:, 1, 1] = True
    one = dense_form(conv, centre)
    assert type(one) is nn.Conv2d and one.kernel_size == (1, 1) and one.padding == (0, 0)
    corner = dense_form(conv, pattern("rect_corner", 6, 3, gen))
    assert isinstance(corner, CroppedConv2d) and corner.kernel_size == (1, 2)
    assert live_rectangle(torch.zeros(3, 3, dtype=torch.bool)) is None


def test_stripe_form_layout_is_position_grouped() -> None:
    conv = nn.Conv2d(4, 3, 3, padding=1, bias=False)
    live = torch.zeros(3, 3, 3, dtype=torch.bool)
    live[2, 0, 0] = live[0, 0, 0] = live[1, 2, 1] = True
    s = stripe_form(conv, live)
    assert s.positions == ((0, 0), (2, 1)) and s.counts == (2, 1)
    assert s.index.tolist() == [0, 2, 1]
    torch.testing.assert_close(s.weight[1, :, 0, 0], conv.weight[2, :, 0, 0])


def test_insert_skeletons_lists_ineligible_convs() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.Conv2d(8, 8, 2),
        nn.Conv2d(8, 8, 3, padding=0), nn.Conv2d(8, 8, (1, 3), padding=(0, 1)),
        nn.Conv2d(8, 8, 5, stride=2, padding=2))
    x = torch.randn(1, 3, 16, 16)
    before = model(x)
    names, skipped = insert_skeletons(model)
    assert names == ["0", "6"]
    assert set(skipped) == {"1", "2", "3", "4", "5"}
    assert "groups" in skipped["1"] and "dilation" in skipped["2"] and "padding" in skipped["4"]
    assert isinstance(model[0], SkeletonConv2d) and model[0].fs.shape == (8, 3, 3)
    assert "0.fs" in model.state_dict() and "6.fs" in model.state_dict()
    torch.testing.assert_close(model(x), before)  # fs = 1: the same function
    with pytest.raises(InputError, match="no conv"):
        StripePruner(nn.Sequential(nn.Conv2d(3, 3, 2)))


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_hooks_regularize_threshold_and_zero_the_following_bn() -> None:
    torch.manual_seed(0)
    model = _tiny()
    pruner = StripePruner(model, alpha=1e-2, delta=0.5)
    assert pruner.norms == {"0": "1", "3": "4"}
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if not n.endswith("fs")],
                          lr=0.0)
    pruner.attach(opt)  # adds the skeletons to the optimizer
    assert any(p is model[0].fs for g in opt.param_groups for p in g["params"])
    with torch.no_grad():
        model[0].fs[2] = 0.3  # filter 2: every stripe below delta
        model[0].fs[5, 0, 0] = -0.2
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    g5 = model[0].fs.grad[5].clone()
    grad = model[0].fs.grad.clone()
    alive = model[0].fs.detach().abs() > 0.5
    opt.step()  # lr 0: only the hook changes parameters
    expected = (grad + 1e-2 * torch.sign(torch.ones(8, 3, 3))) * alive
    torch.testing.assert_close(model[0].fs.grad[alive], expected[alive])
    assert model[0].fs.grad[2].abs().sum() == 0 and model[0].fs.grad[5, 0, 0] == 0
    assert g5[0, 0] != 0
    assert (model[0].fs[2] == 0).all() and model[0].fs[5, 0, 0] == 0
    assert model[1].weight[2] == 0 and model[1].bias[2] == 0
    assert model[1].weight[5] != 0
    assert pruner.steps == 1 and pruner.state_dict()["alpha"] == 1e-2


def _random_skeletons(pruner: StripePruner, seed: int, p_live: float = 0.4) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in pruner._convs().values():
        with torch.no_grad():
            fs = torch.rand(m.fs.shape, generator=gen)
            m.fs.copy_((torch.rand(m.fs.shape, generator=gen) < p_live) * (fs + 0.02))
            m.fs[: m.fs.shape[0] // 4] = 0  # a quarter of the filters have no live stripe
    pruner.apply_masks()


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            with torch.no_grad():
                m.bias.add_(torch.randn(m.num_features, generator=gen) * 0.2)


@pytest.mark.parametrize("kernel", ["dense", "stripe", "probe"])
def test_resnet20_finalize_equals_thresholded_model(kernel: str) -> None:
    model = create_model("resnet20").eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 32, 32)
    pruner = StripePruner(model, example_inputs=(x,))
    assert len(pruner.names) == 19 and not pruner.skipped
    _random_skeletons(pruner, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    small = pruner.finalize(kernel=kernel, round_to=None)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"finalize modified the model: {k}"
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
        x1 = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(small(x1), model(x1), rtol=1e-4, atol=1e-5)
    rep = small.meta[STRIPES]
    assert len(rep) == 19
    # block conv1 filters with no live stripe are removed, with the next conv's inputs
    assert small.get_submodule("layer1.0.conv1").out_channels == 12
    assert small.get_submodule("layer1.0.conv2").in_channels == 12
    assert rep["layer1.0.conv1"].filters == (12, 16)
    kinds = {type(small.get_submodule(n)) for n in rep}
    if kernel == "stripe":
        assert kinds == {StripeConv2d}
    if kernel == "dense":
        assert StripeConv2d not in kinds
    for r in rep.values():
        if r.kernel == "stripe" and kernel == "probe":
            assert r.reason.startswith("probe")
    with tempfile.TemporaryDirectory() as d:
        fxprune.save(small, Path(d) / "swp.pt")
        again = fxprune.load(Path(d) / "swp.pt")
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x), rtol=0, atol=0)


def test_vgg_channel_cleanup_and_positions_channels_last() -> None:
    cfg = [16, 16, "M", 32, 32]
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)),
                   nn.ReLU()]
        c = int(v)
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))
    model.eval()
    _randomize_bn(model, 3)
    pruner = StripePruner(model)
    _random_skeletons(pruner, 2)
    with torch.no_grad():  # conv 3: only the middle row lives -> a 1x3 conv
        model[3].fs[:, 0] = 0
        model[3].fs[:, 2] = 0
        model[3].fs[:, 1] = 1.0
    pruner.apply_masks()
    x = torch.randn(3, 3, 16, 16).to(memory_format=torch.channels_last)
    small = finalize(model, (x,), kernel="dense", round_to=None)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert small.get_submodule("3").kernel_size == (1, 3)
    assert small.get_submodule("0").out_channels <= 12  # a quarter of the filters went
    assert small.get_submodule("3").in_channels == small.get_submodule("0").out_channels
    last = small.get_submodule("10").out_channels
    assert last <= 24 and small.get_submodule("15").in_features == last  # the classifier too
    rounded = finalize(model, (x,), kernel="dense", round_to=8)  # dead filters kept for width
    with torch.no_grad():
        torch.testing.assert_close(rounded(x), model(x), rtol=1e-4, atol=1e-5)
    for name in ("0", "3", "7", "10"):
        width = rounded.get_submodule(name).out_channels
        assert width % 8 == 0 and width >= small.get_submodule(name).out_channels
    with torch.no_grad():  # conv 7: only an off-centre 2x2 block lives -> CroppedConv2d
        model[7].fs[:, 2, :] = 0
        model[7].fs[:, :, 0] = 0
        model[7].fs[:, :2, 1:] = 0.5
    pruner.apply_masks()
    cropped = finalize(model, (x,), kernel="dense", round_to=None)
    assert isinstance(cropped.get_submodule("7"), CroppedConv2d)
    with tempfile.TemporaryDirectory() as d:
        fxprune.save(cropped, Path(d) / "c.pt")
        again = fxprune.load(Path(d) / "c.pt")
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-5)


def test_zero_filter_into_nonzero_op_is_kept() -> None:
    """A dead filter whose channel becomes sigmoid(0) = 0.5 is not removed (stays exact)."""
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Sigmoid(),
                          nn.Conv2d(6, 4, 3, padding=1)).eval()
    pruner = StripePruner(model, kernel="dense")
    with torch.no_grad():
        model[0].fs[1] = 0
        model[0].bias[1] = 0
        model[0].fs[3] = 0
        model[0].bias[3] = 0.7  # dead stripes, live bias
    x = torch.randn(2, 3, 10, 10)
    small = pruner.finalize((x,))
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert small.get_submodule("0").out_channels == 6


def test_training_then_finalize_is_exact() -> None:
    torch.manual_seed(0)
    model = _tiny()
    pruner = StripePruner(model, alpha=0.2, delta=0.05, kernel="stripe")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    pruner.attach(opt)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert 0.0 < pruner.live_density() < 1.0
    kept = pruner.kept_macs((x[:1],))
    assert 0.0 < kept < 1.0
    pruner.apply_masks()
    model.eval()
    small = pruner.finalize((x[:2],))
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


class _Sleepy(nn.Module):
    def __init__(self, inner: nn.Module, delay: float):
        super().__init__()
        self.inner, self.delay = inner, delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        end = time.perf_counter() + self.delay  # busy: counts on wall and CPU clocks
        while time.perf_counter() < end:
            pass
        return self.inner(x)


def test_probe_never_picks_a_slower_stripe_kernel() -> None:
    clear_cache()
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    live = torch.zeros(4, 3, 3, dtype=torch.bool)
    live[:, 0, 0] = True
    x = torch.randn(1, 4, 8, 8)
    d, s = dense_form(conv, live), stripe_form(conv, live)
    slow = choose(d, _Sleepy(s, 2e-3), conv, live, x, repeats=3)
    assert slow.kernel == "dense" and slow.stripe_s > slow.dense_s
    clear_cache()
    fast = choose(_Sleepy(d, 2e-3), s, conv, live, x, repeats=3)
    assert fast.kernel == "stripe"
    assert choose(d, s, conv, live, x, policy="density", density=0.2).kernel == "stripe"
    assert choose(d, s, conv, live, x, policy="density", density=0.05).kernel == "dense"
    clear_cache()
