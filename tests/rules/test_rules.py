"""One oracle test per rule family: tiny module -> prune -> oracle exact, fewer params."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.testing import prune_and_check


def my_identity(x):
    """A user function fx keeps opaque (wrapped): it needs a registered rule to be pruned."""
    return x.clone()


torch.fx.wrap("my_identity")


def cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Head(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class Residual(nn.Module):
    """Residual add: both branches and the stream share one group."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.a = cbr(16, 16)
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        return self.head(F.relu(x + self.b(self.a(x))))


class Concat(nn.Module):
    """Concatenation with offsets, then a consumer."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 8), cbr(3, 12), cbr(20, 16)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.c(torch.cat([self.a(x), self.b(x)], dim=1)))


class SplitChunk(nn.Module):
    """split, chunk and slicing along channels."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 24)
        self.b, self.c, self.d = cbr(8, 8), cbr(16, 8), cbr(12, 8)
        self.head = Head(24)

    def forward(self, x):
        y = self.a(x)
        p, q = torch.split(y, [8, 16], dim=1)
        r, s = y.chunk(2, dim=1)
        t = y[:, 4:16]
        return self.head(torch.cat([self.b(p) + self.c(q), self.d(t) + r[:, :8], s[:, 4:]], 1))


class Depthwise(nn.Module):
    """Depthwise conv (multiplier 1 and 2) inside an inverted residual."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.expand = cbr(8, 32, 1)
        self.dw = cbr(32, 32, 3, groups=32)
        self.dw2 = nn.Conv2d(32, 64, 3, padding=1, groups=32)
        self.project = nn.Sequential(nn.Conv2d(64, 8, 1), nn.BatchNorm2d(8))
        self.head = Head(8)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.project(self.dw2(self.dw(self.expand(x)))))


class Grouped(nn.Module):
    """Grouped conv (ResNeXt): every group keeps the same channel count."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 32, 1)
        self.g = cbr(32, 32, 3, groups=4)
        self.c = cbr(32, 16, 1)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.c(self.g(self.a(x))))


class SEGate(nn.Module):
    """Squeeze-excitation: x * sigmoid(conv(relu(conv(mean(x)))))."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 32)
        self.reduce = nn.Conv2d(32, 8, 1)
        self.expand = nn.Conv2d(8, 32, 1)
        self.b = cbr(32, 16)
        self.head = Head(16)

    def forward(self, x):
        x = self.a(x)
        s = x.mean((2, 3), keepdim=True)
        x = x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))
        return self.head(self.b(x))


class SpatialGate(nn.Module):
    """A 1-channel gate broadcast over channels must not couple them."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.gate = nn.Conv2d(16, 1, 1)
        self.b = cbr(16, 16)
        self.head = Head(16)

    def forward(self, x):
        x = self.a(x)
        return self.head(self.b(x * torch.sigmoid(self.gate(x))))


class FlattenLinear(nn.Module):
    """flatten -> Linear: each channel owns a block of H*W input features."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(16, 8)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.b(self.a(x)), 4)
        return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))


class Transposed(nn.Module):
    """ConvTranspose2d (decoder) and upsampling."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.b = cbr(12 + 16, 8)
        self.head = Head(8)

    def forward(self, x):
        y = self.a(x)
        z = self.up(F.relu(self.down(y)))
        z = F.interpolate(self.up2(z), size=y.shape[-2:])
        return self.head(self.b(torch.cat([z, y], 1)))


class Shuffle(nn.Module):
    """Channel shuffle (ShuffleNet): view/transpose/view keeps blocks rectangular."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.b = cbr(16, 16)
        self.head = Head(16)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.b(x))


class PadShortcut(nn.Module):
    """Option-A shortcut: zero channels appended with F.pad, literal pad amount."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16))
        self.head = Head(16)

    def forward(self, x):
        x = self.a(x)
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 8))
        return self.head(F.relu(self.b(x) + short))


class LayerScaleChannelsLast(nn.Module):
    """ConvNeXt-style: dw conv, permute to channels-last, Linear MLP, layer scale, permute."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 16)
        self.gamma = nn.Parameter(torch.rand(16))
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(y))) * self.gamma
        return self.head(x + y.permute(0, 3, 1, 2))


class SharedModule(nn.Module):
    """A module called twice must be sliced the same way at both calls."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.shared = cbr(16, 16)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.shared(self.shared(self.a(x))))


class ConstantCat(nn.Module):
    """A constant tensor (new_zeros with a literal width) concatenated to channels."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.b = cbr(16, 8)
        self.head = Head(8)

    def forward(self, x):
        y = self.a(x)
        z = y.new_zeros((y.shape[0], 8, y.shape[2], y.shape[3]))
        return self.head(self.b(torch.cat([y, z], 1)))


class IntIndex(nn.Module):
    """x[:, 0:1] and x[:, 3] select channels; the selected channels stay, indices move."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.b = cbr(16, 8)
        self.head = Head(8)

    def forward(self, x):
        y = self.a(x)
        g = torch.sigmoid(y[:, 3]).unsqueeze(1)
        return self.head(self.b(y * g + y[:, 0:1]))


class Expand(nn.Module):
    """expand of a 1-channel map to the width of a stream."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.m = nn.Conv2d(16, 1, 1)
        self.b = cbr(16, 8)
        self.head = Head(8)

    def forward(self, x):
        y = self.a(x)
        return self.head(self.b(y + self.m(y).expand(-1, 16, -1, -1)))


class FunctionalWeights(nn.Module):
    """F.conv2d / F.linear on parameters (get_attr): sliced through their bindings."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 3, 3, 3))
        self.b1 = nn.Parameter(torch.randn(16))
        self.w2 = nn.Parameter(torch.randn(8, 16 * 4 * 4))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        y = F.adaptive_avg_pool2d(y, 4).flatten(1)
        return self.fc(F.relu(F.linear(y, self.w2)))


class SpatialCat(nn.Module):
    """cat along width: both inputs must keep the same channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 16), cbr(3, 16), cbr(16, 8)
        self.head = Head(8)

    def forward(self, x):
        return self.head(self.c(torch.cat([self.a(x), self.b(x)], dim=3)))


EXACT = [Residual, Concat, SplitChunk, Depthwise, Grouped, SEGate, SpatialGate, FlattenLinear,
         Transposed, Shuffle, PadShortcut, LayerScaleChannelsLast, SharedModule, ConstantCat,
         IntIndex, Expand, FunctionalWeights, SpatialCat]


@pytest.mark.parametrize("cls", EXACT, ids=[c.__name__ for c in EXACT])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_rule_family_exact(cls, ratio):
    prune_and_check(cls(), torch.randn(2, 3, 16, 16), ratio)


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_criteria_on_residual(criterion):
    prune_and_check(Residual(), torch.randn(2, 3, 16, 16), 0.5, criterion=criterion)


def _groups(model, x):
    gm = fxprune.trace(model, x)
    return gm, fxprune.analyze(gm)


def test_residual_group_couples_all_members():
    gm, a = _groups(Residual(), torch.randn(1, 3, 16, 16))
    g = next(g for g in a.groups if any(m.target == "b.0" for m in a.groups[g.id].members))
    targets = {m.target for m in g.members}
    assert {"stem.0", "b.0", "a.0", "head.fc"} <= targets
    assert g.size == 16 and not g.frozen_units


def test_spatial_gate_keeps_stream_prunable():
    _, a = _groups(SpatialGate(), torch.randn(1, 3, 16, 16))
    stream = next(g for g in a.groups if any(m.target == "a.0" and m.role == "out"
                                             for m in g.members))
    assert stream.size == 16 and stream.prunable == 16


def test_grouped_conv_units_are_positions():
    _, a = _groups(Grouped(), torch.randn(1, 3, 16, 16))
    g = next(g for g in a.groups if any(m.target == "a.0" and m.role == "out"
                                        for m in g.members))
    assert g.size == 8 and g.divisor == 4  # 32 channels = 4 groups x 8 positions


def test_int_index_freezes_selected_channel():
    _, a = _groups(IntIndex(), torch.randn(1, 3, 16, 16))
    g = next(g for g in a.groups if any(m.target == "a.0" and m.role == "out"
                                        for m in g.members))
    assert set(g.frozen_units) == {0, 3}  # y[:, 3] and the one-channel slice y[:, 0:1]


def test_groupnorm_and_layernorm_are_reported_approximate():
    class Norms(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.gn = nn.GroupNorm(4, 16)
            self.b = nn.Conv2d(16, 16, 3, padding=1)
            self.ln = nn.LayerNorm(16)
            self.head = Head(16)

        def forward(self, x):
            y = self.b(F.relu(self.gn(self.a(x))))
            y = self.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.head(y)

    x = torch.randn(2, 3, 16, 16)
    model = Norms()
    pruned = prune_and_check(model, x, 0.5, expect="approximate")
    assert pruned.get_submodule("gn").num_channels % 4 == 0
    # the statistics-aware oracle still catches a wrong rewrite of an approximate op
    with torch.no_grad():
        pruned.get_submodule("ln").weight[0] += 1.0
    assert fxprune.verify(model, pruned, x).status.startswith("mismatch")


class GroupedStdConv(nn.Module):
    """A weight-standardized conv (timm ScaledStdConv2d, non-zero gain) with ``groups``."""

    def __init__(self, groups: int):
        super().__init__()
        from timm.layers import ScaledStdConv2d

        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.std = ScaledStdConv2d(16, 16, 3, groups=groups)
        nn.init.uniform_(self.std.gain, 0.5, 1.5)
        self.head = Head(16)

    def forward(self, x):
        return self.head(F.silu(self.std(F.silu(self.a(x)))))


@pytest.mark.parametrize(("groups", "expect"), [(1, "approximate"), (4, "approximate"),
                                                (16, "exact")])
def test_weight_standardized_conv_with_groups(groups, expect):
    """Each filter standardizes over its in_channels/groups inputs: pruning them changes the
    statistics unless each group has one input (depthwise: the filter goes with its input;
    nf_regnet_b0's grouped convs were treated as exact and failed the statistics-aware
    oracle)."""
    torch.manual_seed(0)
    pruned = prune_and_check(GroupedStdConv(groups), torch.randn(2, 3, 8, 8), 0.5,
                             expect=expect)
    assert pruned.std.in_channels == 8


class SamePools(nn.Module):
    """timm's 'same'-padded pools (NASNet, PNASNet): spatial only, channels pass through."""

    def __init__(self):
        super().__init__()
        from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

        self.a = cbr(3, 16)
        self.mp, self.ap = MaxPool2dSame(3, stride=2), AvgPool2dSame(3, stride=1)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.ap(self.mp(self.a(x))))


def test_timm_same_pools_pass_channels_through():
    """``timm.layers.MaxPool2dSame`` does not exist (only ``timm.layers.pool2d_same.``): the
    rule was never registered and the pools froze their inputs."""
    pruned = prune_and_check(SamePools(), torch.randn(2, 3, 9, 9), 0.5)
    assert pruned.head.fc.in_features == 8


def test_unknown_op_freezes_and_warns_once():
    class Roll(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = cbr(3, 16), cbr(16, 16), cbr(16, 8)
            self.head = Head(8)

        def forward(self, x):
            y = torch.flip(self.a(x), dims=[1])
            y = torch.flip(y, dims=[1])
            return self.head(self.c(self.b(y)))

    x = torch.randn(2, 3, 16, 16)
    with pytest.warns(UserWarning, match=r"1 op\(s\) have no channel rule") as rec:
        pruned = fxprune.compress(Roll(), 0.5, example_inputs=x, verify=True)
    assert sum("channel rule" in str(w.message) for w in rec) == 1
    assert "torch.flip" in str(rec[0].message) and "flip_1" in str(rec[0].message)
    assert pruned.meta["fxprune.verify"].status == "exact"
    assert pruned.get_submodule("a.0").out_channels == 16  # frozen around the roll
    assert pruned.get_submodule("b.0").out_channels == 8  # the rest is pruned
    with pytest.raises(fxprune.UnsupportedOpError, match="torch.flip") as err:
        fxprune.compress(Roll(), 0.5, example_inputs=x, strict=True)
    assert err.value.ops == ["torch.flip"]


def test_register_rule_makes_op_prunable():
    from fxprune.rules.elementwise import Passthrough

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 16), cbr(16, 8)
            self.head = Head(8)

        def forward(self, x):
            return self.head(self.b(my_identity(self.a(x))))

    fxprune.register_rule(my_identity)(Passthrough())
    try:
        pruned = prune_and_check(Custom(), torch.randn(2, 3, 16, 16), 0.5, strict=True,
                                 roundtrip=False)
        assert pruned.get_submodule("a.0").out_channels == 8
    finally:
        fxprune.rules.RULES.pop(my_identity, None)
