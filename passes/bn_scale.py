"""Network slimming criterion: |gamma| of the normalization after the producer (Liu et al. 2017).

In the group view a normalization's affine scale is a per-channel member. The rule, which reads
only ``group.members`` (no op types): a member is a norm scale when its role is ``"channel"``,
its parameter is named ``weight``, it is 1-D, and the same module also contributes a 1-D
``"channel"`` member named ``bias`` to the group. That matches BatchNorm/GroupNorm/LayerNorm
with affine parameters and excludes depthwise filters (not 1-D), layer-scale ``gamma``
vectors (not named ``weight``) and PReLU slopes (no ``bias``).

A unit's score is ``|gamma|``; with several norms in a group (a residual add) each norm's
scores are divided by their mean and averaged over the norms that cover the unit, as
:func:`fxprune.criteria.producer_scores` does for filters. A group without a norm scale
falls back to the ``l1`` criterion.
"""

from __future__ import annotations

__all__ = ["bn_scale", "norm_scales"]

import torch.nn as nn
from torch import Tensor

from fxprune.criteria import CriterionCtx, average_members, register_criterion
from fxprune.ir.meta import Group, ParamSlice
from fxprune.passes.l1 import l1


def _param(root: nn.Module, m: ParamSlice) -> Tensor | None:
    if not m.param:
        return None
    try:
        return root.get_parameter(m.path)
    except AttributeError:  # a buffer (running stats) or a missing attribute
        return None


def norm_scales(group: Group, root: nn.Module) -> list[ParamSlice]:
    """The members of ``group`` that are normalization scales (see the module docstring)."""
    one_d = {(m.target, m.param) for m in group.members
             if m.role == "channel" and (p := _param(root, m)) is not None and p.dim() == 1}
    return [m for m in group.members
            if m.role == "channel" and m.param == "weight" and (m.target, "weight") in one_d
            and (m.target, "bias") in one_d]


@register_criterion("bn_scale")
def bn_scale(group: Group, ctx: CriterionCtx) -> Tensor:
    """Network slimming (Liu et al. 2017): |gamma| of the following norm, else l1; data-free."""
    members = norm_scales(group, ctx.root)
    if not members:
        return l1(group, ctx)
    return average_members(group, ((m, m.tensor(ctx.root).abs()) for m in members))
