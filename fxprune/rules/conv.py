"""Convolutions: Conv1d/2d/3d (bias, groups, depthwise with multiplier) and ConvTranspose.

* ``groups == 1``: input channels are consumed (weight dim 1), output channels open a new space.
* depthwise (one input channel per group): output channel ``o`` carries input channel
  ``o // multiplier``, so the op is channelwise; its filters are per-channel parameters.
* grouped (``in/groups > 1``): every group must keep the same number of channels, so position
  ``j`` of every group is one unit (on both the input and the output side).
"""

from __future__ import annotations

__all__ = ["ConvRule", "ConvTransposeRule", "conv_input_error"]

import torch.nn as nn
from torch import Tensor

from fxprune.ir.channels import at_axis
from fxprune.rules import Rule, register_rule


def conv_input_error(m: nn.Module, args: tuple) -> str | None:
    """A conv's complaint about its input, with the shape it expects."""
    x = args[0] if args else None
    if not isinstance(x, Tensor):
        return None
    k = m.weight.dim() - 2
    name = f"{type(m).__name__}({m.in_channels}, {m.out_channels})"
    spatial = {1: "L", 2: "H, W", 3: "D, H, W"}.get(k, "...")
    want = (f"a batched {k + 2}-D input [N, {m.in_channels}, {spatial}] (or an unbatched "
            f"{k + 1}-D one)")
    if x.dim() not in (k + 1, k + 2):
        return f"{name} expects {want}, got a {x.dim()}-D input of shape {tuple(x.shape)}"
    c = x.shape[0 if x.dim() == k + 1 else 1]
    if c != m.in_channels:
        how = (f" (torch reads a {k + 1}-D input as one unbatched sample, channels first)"
               if x.dim() == k + 1 else "")
        return (f"{name} expects {want}, got shape {tuple(x.shape)}: {c} channels{how}")
    return None


def _channel_axis(ctx) -> int:  # type: ignore[no-untyped-def]
    """1, or 0 for an unbatched input (torch reads [C, *spatial] as one sample)."""
    return 0 if ctx.out.dim() == ctx.module.weight.dim() - 1 else 1


def _couple_groups(ctx, ids1d: Tensor, g: int) -> Tensor:  # type: ignore[no-untyped-def]
    """Couple position j of every group; return the ids of group 0."""
    v = ids1d.view(g, -1)
    ctx.union(v[:1], v)
    return v[0]


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvRule(Rule):
    """Conv: consumes input channels (or passes them through if depthwise), makes new ones."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        m = ctx.module
        x = ctx.ids(0, "input")
        cin, cout, g = m.in_channels, m.out_channels, m.groups
        axis = _channel_axis(ctx)
        in1d = ctx.channel_ids(x, axis, cin, "conv input")
        key = (str(ctx.node.target), "out")
        if g == 1:
            ctx.bind("weight", 1, in1d, "in")
            ctx.consume(0)
            out1d = ctx.new_ids(cout, key=key)
            role = "out"
        elif cin == g:  # depthwise, possibly with a channel multiplier
            out1d = in1d.repeat_interleave(cout // g)
            role = "channel"
        else:
            ctx.bind("weight", 1, _couple_groups(ctx, in1d, g), "in")
            ctx.consume(0)
            out1d = ctx.new_ids(cout, key=key)
            _couple_groups(ctx, out1d, g)
            role = "out"
        ctx.bind("weight", 0, out1d, role)
        if m.bias is not None:
            ctx.bind("bias", 0, out1d, role)
        return at_axis(out1d, axis, ctx.out.dim())

    def input_error(self, module: nn.Module | None, args: tuple) -> str | None:
        return conv_input_error(module, args) if module is not None else None

    def update_module(self, new: nn.Module, old: nn.Module) -> None:
        w = new.weight
        if old.groups == 1:
            new.in_channels = w.shape[1]
        elif old.groups == old.in_channels:
            mult = old.out_channels // old.in_channels
            new.groups = new.in_channels = w.shape[0] // mult
        else:
            new.in_channels = w.shape[1] * old.groups
        new.out_channels = w.shape[0]


@register_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeRule(Rule):
    """Transposed conv: weight is [in, out/groups, k...]; same coupling as a conv."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        m = ctx.module
        x = ctx.ids(0, "input")
        cin, cout, g = m.in_channels, m.out_channels, m.groups
        axis = _channel_axis(ctx)
        in1d = ctx.channel_ids(x, axis, cin, "conv-transpose input")
        key = (str(ctx.node.target), "out")
        if g == 1:
            ctx.bind("weight", 0, in1d, "in")
            ctx.consume(0)
            out1d = ctx.new_ids(cout, key=key)
            ctx.bind("weight", 1, out1d, "out")
        elif cin == g:
            out1d = in1d.repeat_interleave(cout // g)
            ctx.bind("weight", 0, in1d, "channel")
        else:
            ctx.bind("weight", 0, in1d, "in")  # in-groups are contiguous blocks of dim 0
            _couple_groups(ctx, in1d, g)
            ctx.consume(0)
            out1d = ctx.new_ids(cout, key=key)
            ctx.bind("weight", 1, _couple_groups(ctx, out1d, g), "out")
        if m.bias is not None:
            ctx.bind("bias", 0, out1d, "out" if cin != g else "channel")
        return at_axis(out1d, axis, ctx.out.dim())

    def input_error(self, module: nn.Module | None, args: tuple) -> str | None:
        return conv_input_error(module, args) if module is not None else None

    def update_module(self, new: nn.Module, old: nn.Module) -> None:
        w = new.weight
        new.in_channels = w.shape[0]
        if old.groups == old.in_channels and old.groups > 1:
            new.groups = w.shape[0]
        new.out_channels = w.shape[1] * new.groups
