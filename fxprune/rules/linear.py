"""Linear layers: the last axis is consumed (weight dim 1) and a new feature space is made.

A ``flatten`` before a Linear repeats each channel's id once per spatial position, so the
Linear's input slice for channel ``c`` is the block of ``H*W`` columns that carry its id.
"""

from __future__ import annotations

__all__ = ["LinearRule"]

import torch.nn as nn

from ..channels import at_axis
from . import Rule, register_rule
from ._util import align


@register_rule(nn.Linear)
class LinearRule(Rule):
    """Linear: consumes the last axis, makes a new feature space (other axes pass through)."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        m = ctx.module
        x = align(ctx.ids(0, "input"), ctx.out.dim())
        nd = x.dim()
        others_vary = any(s > 1 for s in x.shape[:-1])
        if others_vary and x.shape[-1] == 1:
            # channels live on another axis (e.g. a Linear over the spatial axis): pass through
            return x
        in1d = ctx.channel_ids(x, nd - 1, m.in_features, "linear input")
        ctx.bind("weight", 1, in1d, "in")
        ctx.consume(0)
        out1d = ctx.new_ids(m.out_features, key=(str(ctx.node.target), "out"))
        ctx.bind("weight", 0, out1d, "out")
        if m.bias is not None:
            ctx.bind("bias", 0, out1d, "out")
        return at_axis(out1d, nd - 1, nd)

    def update_module(self, new: nn.Module, old: nn.Module) -> None:
        new.out_features, new.in_features = new.weight.shape
