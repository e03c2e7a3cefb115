"""The channel axis of a tensor attribute (``get_attr``): a layer scale or bias opens a channel
space on its one non-trivial axis; a positional embedding used only elementwise takes its axis
from the operands beside its first use; anything else is frozen. Part of :mod:`.analyze`."""

from __future__ import annotations

__all__ = ["attr_ids", "settle_attrs", "bind_attr"]

from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from fxprune.ir import meta
from fxprune.ir.channels import FREE, FROZEN, at_axis
from fxprune.ir.propctx import AnalysisState, PropCtx
from fxprune.rules import rule_for
from fxprune.rules.util import channel_axes_beside


def attr_ids(s: AnalysisState, n: fx.Node, value: Any) -> Any:
    """A tensor attribute with one non-trivial axis (a layer scale) opens a channel space.

    An attribute with several non-trivial axes that is only used elementwise (a positional
    embedding added to the tokens) takes its channel axis from the other operands of its first
    use (:func:`settle_attrs`). Other attributes with several non-trivial axes (weights read
    by traced functional code) are frozen: coupling a channel to them keeps it.
    """
    if not isinstance(value, Tensor):
        return None
    big = [d for d, size in enumerate(value.shape) if size > 1]
    if not big:
        return torch.full((1,) * value.dim(), FREE, dtype=torch.long)
    if not (value.is_floating_point() or value.is_complex()):
        # an index table (Swin's relative_position_index), not per-channel values
        return torch.full((1,) * value.dim(), FROZEN, dtype=torch.long)
    if len(big) == 1:
        return bind_attr(s, n, value, big[0])
    from fxprune.rules.elementwise import Broadcast

    if n.users and all(isinstance(rule_for(u, s.modules), Broadcast) for u in n.users):
        s.deferred[n.name] = value  # its first elementwise use tells the axis
    return torch.full((1,) * value.dim(), FROZEN, dtype=torch.long)


def settle_attrs(s: AnalysisState, user: fx.Node) -> None:
    """Give the deferred attributes among ``user``'s arguments their channel axis."""
    for a in user.args:
        if not isinstance(a, fx.Node) or a.name not in s.deferred:
            continue
        value = s.deferred.pop(a.name)
        # the axis along which the other operands of its first use carry channels
        axes = channel_axes_beside(a, [user], tuple(value.shape), same_size=True)
        if len(axes) == 1:
            meta.set_ids(a, bind_attr(s, a, value, axes.pop()))


def bind_attr(s: AnalysisState, n: fx.Node, value: Tensor, axis: int) -> Tensor:
    ctx = PropCtx(s, n, None, (), {}, value)
    ids1d = ctx.new_ids(value.shape[axis], key=("attr", str(n.target), axis))
    ctx.bind("", axis, ids1d, "channel", target=str(n.target))
    return at_axis(ids1d, axis, value.dim())
