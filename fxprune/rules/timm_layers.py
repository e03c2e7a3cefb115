"""Rules for layers that timm (and torchvision) keep opaque or implement outside torch.nn.

Each class (or function) is registered under the rule of the torch op it behaves like; those
that do not exist in the installed timm/torchvision version are skipped.
"""

from __future__ import annotations

__all__: list[str] = []

import importlib

import torch.nn as nn

from fxprune.ir.channels import at_axis
from fxprune.rules import Rule, register_rule
from fxprune.rules.conv import ConvRule
from fxprune.rules.elementwise import Passthrough, Spatial
from fxprune.rules.linear import LinearRule
from fxprune.rules.norm import ChannelParams, GroupNormRule, LayerNormRule


def _classes(*paths: str) -> list[type]:
    out = []
    for path in paths:
        mod, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
        out.append(cls)
    return out


class _StdConvRule(ConvRule):
    """Weight-standardized conv: each filter's statistics span its ``in_channels / groups``
    inputs, so pruning them is approximate (exact only when that is one channel: depthwise)."""

    approx = "weight standardization spans the pruned input channels"

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        out = super().propagate(ctx)
        m = ctx.module
        gain = getattr(m, "gain", None)
        if gain is not None and gain.shape[0] == m.out_channels:
            ctx.bind("gain", 0, out.reshape(-1), "out")
        x = ctx.ids(0, "input")
        if m.in_channels // m.groups > 1 and x.shape[1] > 1:
            ctx.approximate(x, self.approx)
        return out


register_rule(*_classes("timm.layers.Conv2dSame", "timm.layers.conv2d_same.Conv2dSame"))(
    ConvRule())
register_rule(*_classes("timm.layers.StdConv2d", "timm.layers.StdConv2dSame",
                        "timm.layers.ScaledStdConv2d", "timm.layers.ScaledStdConv2dSame"))(
    _StdConvRule())
register_rule(*_classes(
    "timm.layers.BatchNormAct2d", "timm.layers.SyncBatchNormAct",
    "timm.layers.FrozenBatchNormAct2d", "timm.layers.norm_act.FrozenBatchNorm2d",
    "torchvision.ops.misc.FrozenBatchNorm2d", "torchvision.ops.FrozenBatchNorm2d",
    "timm.layers.BlurPool2d", "timm.layers.SplitBatchNorm2d"))(ChannelParams(axis=1))
register_rule(*_classes("timm.layers.GroupNormAct", "timm.layers.GroupNorm1Act",
                        "timm.layers.GroupNorm", "timm.layers.GroupNorm1"))(GroupNormRule())
register_rule(*_classes("timm.layers.LayerNorm2d", "timm.layers.LayerNormAct2d",
                        "timm.layers.LayerNorm2dFp32", "timm.layers.LayerNormAct2dFp32",
                        "timm.layers.RmsNorm2d", "timm.layers.RmsNormAct2d",
                        "timm.layers.RmsNorm2dFp32", "timm.layers.RmsNormAct2dFp32",
                        "timm.layers.SimpleNorm2d", "timm.layers.SimpleNorm2dFp32"))(
    LayerNormRule(axis=1))
register_rule(*_classes("timm.layers.LayerNorm", "timm.layers.LayerNormAct",
                        "timm.layers.LayerNormFp32", "timm.layers.LayerNormActFp32",
                        "timm.layers.RmsNorm", "timm.layers.RmsNormAct",
                        "timm.layers.RmsNormFp32", "timm.layers.RmsNormActFp32",
                        "timm.layers.SimpleNorm", "timm.layers.SimpleNormFp32"))(
    LayerNormRule(axis=-1))
@register_rule(*_classes("timm.models.vgg.ConvMlp"))
class ConvMlpRule(Rule):
    """timm VGG's conv MLP head (fc1 conv, act, fc2 1x1 conv): outer channels are prunable."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        m = ctx.module
        x = ctx.ids(0, "input")
        ctx.bind("fc1.weight", 1, ctx.channel_ids(x, 1, m.fc1.in_channels, "ConvMlp input"),
                 "in")
        ctx.consume(0)
        out1d = ctx.new_ids(m.fc2.out_channels, key=(str(ctx.node.target), "out"))
        ctx.bind("fc2.weight", 0, out1d, "out")
        if m.fc2.bias is not None:
            ctx.bind("fc2.bias", 0, out1d, "out")
        return at_axis(out1d, 1, ctx.out.dim())

    def update_module(self, new: nn.Module, old: nn.Module) -> None:
        new.fc1.in_channels = new.fc1.weight.shape[1]
        new.fc2.out_channels = new.fc2.weight.shape[0]


register_rule(*_classes("timm.layers.Linear", "timm.layers.linear.Linear"))(LinearRule())
register_rule(*_classes("timm.layers.AvgPool2dSame", "timm.layers.pool2d_same.AvgPool2dSame",
                        "timm.layers.pool2d_same.MaxPool2dSame"))(Spatial(2))


class PerSampleScaleRule(Passthrough):
    """Stochastic depth / DropPath: scales whole samples (or the batch); channels pass through."""


register_rule(*_classes("torchvision.ops.stochastic_depth", "torchvision.ops.StochasticDepth",
                        "torchvision.ops.misc.StochasticDepth",
                        "torchvision.ops.stochastic_depth.StochasticDepth",
                        "timm.layers.DropPath", "timm.layers.drop_path",
                        "timm.layers.drop.DropPath", "timm.layers.drop.drop_path"))(
    PerSampleScaleRule())
