"""Channels on any axis: (B, C), (B, T, C), channels-last (B, H, W, C) and NCHW <-> NHWC round
trips; functional norms; stochastic depth / DropPath. Every case is checked by the oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.testing import prune_and_check


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


@pytest.mark.parametrize("shape", [(1, 16), (1, 5, 16), (1, 3, 4, 16)],
                         ids=["BC", "BTC", "BHWC"])
def test_mlp_hidden_width_on_any_layout(shape):
    torch.manual_seed(0)
    pruned = prune_and_check(MLP(), torch.randn(shape), 0.5)
    assert tuple(pruned.fc1.weight.shape) == (32, 16)
    assert tuple(pruned.fc2.weight.shape) == (16, 32)


def _frozen_reasons(model: nn.Module, x: torch.Tensor) -> str:
    a = fxprune.analyze(fxprune.trace(model, x))
    return " | ".join(str(g.frozen_reason) for g in a.groups if g.frozen_reason)


class ChannelsLastMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 10)

    def forward(self, x):  # x: (B, H, W, C)
        return self.fc2(F.gelu(self.fc1(x)).mean((1, 2)))


def test_channels_last_mean_is_not_a_reduction_over_channels():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 16)
    assert "reduces over channels" not in _frozen_reasons(ChannelsLastMean(), x)
    pruned = prune_and_check(ChannelsLastMean(), x, 0.5)
    assert tuple(pruned.fc1.weight.shape) == (32, 16)


class AfterUnknownOp(nn.Module):
    """An op without a rule keeps its own input and output, not the Linear widths after it."""

    def __init__(self):
        super().__init__()
        self.fc0, self.mlp = nn.Linear(16, 16), MLP()

    def forward(self, x):  # (B, T, C)
        return self.mlp(torch.flip(self.fc0(x), [1]))  # no rule for flip


def test_unknown_op_freezes_only_its_own_values():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    assert "unsupported op" in _frozen_reasons(AfterUnknownOp(), x)
    pruned = prune_and_check(AfterUnknownOp(), x, 0.5)
    assert tuple(pruned.fc0.weight.shape) == (16, 16)  # its output feeds the unknown op
    assert tuple(pruned.mlp.fc1.weight.shape) == (32, 16)


class LayerNorm2dTv(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: permute, F.layer_norm over the last axis, permute."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    """conv -> LayerNorm2d (functional, after a permute) -> channels-last MLP -> permute back,
    a residual add, DropPath/stochastic depth on the branch."""

    def __init__(self, drop: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = LayerNorm2dTv(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.ln = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
        self.drop = drop
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():  # non-trivial affine parameters
            for m in (self.norm, self.ln):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.norm(self.stem(x))
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.ln(y)))).permute(0, 3, 1, 2)
        return self.head(x + self.drop(y))


def _drops() -> dict[str, nn.Module]:
    import timm.layers
    import torchvision.ops

    class Functional(nn.Module):
        def forward(self, x):
            return torchvision.ops.stochastic_depth(x, 0.2, "row", self.training)

    return {"tv_module": torchvision.ops.StochasticDepth(0.2, "row"),
            "tv_function": Functional(), "timm_DropPath": timm.layers.DropPath(0.2)}


@pytest.mark.parametrize("name", ["tv_module", "tv_function", "timm_DropPath"])
def test_channels_last_block_with_functional_layer_norm_and_drop_path(name):
    torch.manual_seed(0)
    model = ConvNeXtish(_drops()[name])
    x = torch.randn(2, 3, 6, 6)
    reasons = _frozen_reasons(model, x)
    assert "unsupported" not in reasons, reasons
    pruned = prune_and_check(model, x, 0.5, expect="approximate")
    assert pruned.stem.out_channels == 4 and tuple(pruned.norm.weight.shape) == (4,)
    assert tuple(pruned.fc1.weight.shape) == (16, 4)
    assert pruned.meta["fxprune.manifest"]  # the rewrite recorded its cuts
    pruned.train()(x)  # stochastic depth still runs on the pruned widths


class FunctionalGroupNorm(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.w = nn.Parameter(torch.rand(8) + 0.5)
        self.bias = nn.Parameter(torch.rand(8) - 0.5)

    def forward(self, x):
        return self.b(F.relu(F.group_norm(self.a(x), self.groups, self.w, self.bias)))


@pytest.mark.parametrize(("groups", "expect"), [(2, "approximate"), (8, "exact")])
def test_functional_group_norm(groups, expect):
    torch.manual_seed(0)
    pruned = prune_and_check(FunctionalGroupNorm(groups), torch.randn(2, 3, 5, 5), 0.5,
                             expect=expect)
    assert pruned.a.out_channels == 4 and tuple(pruned.w.shape) == (4,)


class FunctionalLayerNormNoAffine(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = MLP()

    def forward(self, x):
        return self.mlp(F.layer_norm(x, (16,)))


def test_functional_layer_norm_without_affine_keeps_the_input_only():
    torch.manual_seed(0)
    pruned = prune_and_check(FunctionalLayerNormNoAffine(), torch.randn(1, 5, 16), 0.5)
    assert tuple(pruned.mlp.fc1.weight.shape) == (32, 16)


class TokensThroughConv1d(nn.Module):
    """(B, T, C) tokens -> transpose -> Conv1d over channels -> transpose back -> MLP."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 24)
        self.conv = nn.Conv1d(24, 24, 3, padding=1)
        self.mlp = nn.Sequential(nn.Linear(24, 48), nn.GELU(), nn.Linear(48, 16))

    def forward(self, x):
        h = self.inp(x)
        h = h + self.conv(F.relu(h).transpose(1, 2)).transpose(1, 2)
        return self.mlp(h)


def test_transpose_round_trip_keeps_channels_exact():
    torch.manual_seed(0)
    pruned = prune_and_check(TokensThroughConv1d(), torch.randn(2, 7, 16), 0.5)
    assert pruned.conv.in_channels == pruned.conv.out_channels == 12
    assert tuple(pruned.get_submodule("mlp.0").weight.shape) == (24, 12)


def _tv_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 2), CNBlockConfig(16, None, 1)],
                    stochastic_depth_prob=0.1, num_classes=10)


def _tv_efficientnet() -> nn.Module:
    from functools import partial

    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    c = partial(MBConvConfig, width_mult=1.0, depth_mult=1.0)
    return EfficientNet([c(1, 3, 1, 16, 8, 1), c(6, 3, 2, 8, 16, 2), c(6, 5, 2, 16, 24, 1)],
                        dropout=0.2, stochastic_depth_prob=0.2, num_classes=10, last_channel=64)


@pytest.mark.parametrize(("build", "expect"), [(_tv_convnext, "approximate"),
                                               (_tv_efficientnet, "exact")],
                         ids=["convnext", "efficientnet"])
def test_torchvision_blocks_in_tiny_configs_have_every_rule(build, expect):
    """torchvision's own ConvNeXt (LayerNorm2d, layer scale, StochasticDepth) and EfficientNet
    (StochasticDepth) in tiny configurations: no op without a rule, MACs cut beyond 60%."""
    import warnings

    torch.manual_seed(0)
    model, x = build().eval(), torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no channel rule")
        fxprune.analyze(fxprune.trace(model, x))
    pruned = prune_and_check(model, x, 0.5, expect=expect)
    assert fxprune.count(pruned, x).macs < 0.4 * fxprune.count(model, x).macs


class ComputedNormSizes(nn.Module):
    """normalized_shape and num_groups read from the tensor: sizes, recomputed after pruning."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.w, self.bias = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.rand(8))

    def forward(self, x):
        y = self.a(x)
        y = F.group_norm(y, y.shape[1], self.w, self.bias)  # one channel per group
        z = y.permute(0, 2, 3, 1)
        z = F.layer_norm(z, z.shape[-1:], self.w, self.bias).permute(0, 3, 1, 2)
        return self.b(F.relu(y + z))


def test_norm_sizes_read_from_the_tensor_are_recomputed():
    torch.manual_seed(0)
    pruned = prune_and_check(ComputedNormSizes(), torch.randn(2, 3, 5, 5), 0.5,
                             expect="approximate")
    assert pruned.a.out_channels == 4 and tuple(pruned.w.shape) == (4,)


class PerSampleMask(nn.Module):
    """drop_path written out in a forward: a per-sample Bernoulli mask (p=1: deterministic)."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP()

    def forward(self, x):  # (B, T, C)
        h = F.gelu(self.mlp.fc1(x))
        keep = h.new_empty(h.shape[0], 1, 1).bernoulli_(1.0)
        return self.mlp.fc2(h * keep.div_(1.0))


def test_written_out_per_sample_mask_passes_channels():
    import warnings

    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no channel rule")  # bernoulli_ has one
        fxprune.analyze(fxprune.trace(PerSampleMask(), x))
    pruned = prune_and_check(PerSampleMask(), x, 0.5)
    assert tuple(pruned.mlp.fc1.weight.shape) == (32, 16)


class ChannelsLastConstant(nn.Module):
    """A literal-size channels-last tensor (B, H, W, C) added to and concatenated with the
    hidden width: its channel axis is the last one, not axis 1."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(48, 8)

    def forward(self, x):  # (B, 3, 4, 16)
        h = F.gelu(self.fc1(x))
        h = h + x.new_ones((x.shape[0], 3, 4, 32))
        return self.fc2(torch.cat([h, x.new_zeros((x.shape[0], 3, 4, 16))], -1))


def test_literal_size_channels_last_constant_follows_its_channel_axis():
    torch.manual_seed(0)
    pruned = prune_and_check(ChannelsLastConstant(), torch.randn(2, 3, 4, 16), 0.5)
    assert tuple(pruned.fc1.weight.shape) == (16, 16)
    assert pruned.fc2.weight.shape[1] < 48


class Shuffled(nn.Module):
    """torchvision's channel_shuffle: the last view is sized with ``x.size()`` of the tensor
    before the transpose: the same channels in another order, so nothing is frozen."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        from torchvision.models.shufflenetv2 import channel_shuffle

        return self.b(channel_shuffle(self.a(x).relu(), 2))


def test_channel_shuffle_sized_from_the_unshuffled_tensor_prunes():
    torch.manual_seed(0)
    pruned = prune_and_check(Shuffled(), torch.randn(2, 3, 6, 6), 0.5)
    assert pruned.a.weight.shape[0] == 4 and pruned.b.weight.shape[1] == 4
