"""Linear layers: the last axis is consumed (weight dim 1) and a new feature space is made.

A ``flatten`` before a Linear repeats each channel's id once per spatial position, so the
Linear's input slice for channel ``c`` is the block of ``H*W`` columns that carry its id.
"""

from __future__ import annotations

__all__ = ["LinearRule", "FunctionalWeightRule"]

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxprune.ir.channels import at_axis
from fxprune.rules import Rule, register_rule
from fxprune.rules.util import align


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

    def input_error(self, module: nn.Module | None, args: tuple) -> str | None:
        x = args[0] if args else None
        if module is None or not isinstance(x, torch.Tensor):
            return None
        if x.dim() == 0 or x.shape[-1] != module.in_features:
            return (f"{type(module).__name__}({module.in_features}, {module.out_features}) "
                    f"expects inputs whose last axis has {module.in_features} features, got "
                    f"shape {tuple(x.shape)}")
        return None

    def update_module(self, new: nn.Module, old: nn.Module) -> None:
        new.out_features, new.in_features = new.weight.shape


def _param_target(ctx, i: int, name: str) -> str | None:  # type: ignore[no-untyped-def]
    """The attribute path of argument ``i`` if it is a parameter read by ``get_attr``."""
    node = ctx.arg_node(i, name)
    if node is None:
        return None
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        from fxprune.ir.propctx import Unsupported

        raise Unsupported("weight computed in the graph (make its module a leaf)")
    return str(node.target)


@register_rule(F.linear, torch.linear if hasattr(torch, "linear") else F.linear,
               F.conv1d, F.conv2d, F.conv3d)
class FunctionalWeightRule(Rule):
    """F.linear / F.conv2d on parameters read with get_attr (ungrouped): like the modules."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        from fxprune.ir.propctx import Unsupported

        w_target = _param_target(ctx, 1, "weight")
        b_target = _param_target(ctx, 2, "bias")
        w = ctx.arg(1, "weight")
        x = align(ctx.ids(0, "input"), ctx.out.dim())
        is_linear = ctx.node.target in (F.linear, getattr(torch, "linear", F.linear))
        if not is_linear and int(ctx.arg(6, "groups", 1) or 1) != 1:
            raise Unsupported("grouped functional conv")
        axis = x.dim() - 1 if is_linear else 1
        in1d = ctx.channel_ids(x, axis, w.shape[1], "functional weight input")
        ctx.bind("", 1, in1d, "in", target=w_target)
        ctx.consume(0)
        out1d = ctx.new_ids(w.shape[0], key=(w_target, "out"))
        ctx.bind("", 0, out1d, "out", target=w_target)
        if b_target is not None:
            ctx.bind("", 0, out1d, "out", target=b_target)
        return at_axis(out1d, axis, x.dim())
