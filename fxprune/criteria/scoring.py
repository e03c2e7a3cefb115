"""Which of a group's slices a magnitude criterion reads, and how their scores combine.

fxprune's analysis binds every tensor a channel lives in to its unit (:attr:`Group.members`):
the producers' output filters (role ``"out"``), the consumers' input columns (``"in"``) and
per-channel parameters such as a norm's affine scale (``"channel"``). :class:`GroupScoring`
chooses

* ``members``: ``"producers"`` (the filters that make the channel: the classic filter-pruning
  criteria, fxprune's behaviour before group scoring), or ``"all"`` (filters, the consumers'
  input columns and the norms' affine scales: every weight that disappears with the channel,
  like Torch-Pruning's group importance);
* ``normalize``: each member's per-unit scores divided by their ``"mean"`` or ``"max"`` over the
  units it covers, or ``"none"`` (raw magnitudes: a large consumer then outweighs a small
  producer);
* ``reduction``: how a unit's scores from several members combine: ``"mean"`` (over the members
  that cover the unit), ``"sum"``, ``"max"``, or ``"first"`` (only the first member that covers
  it, in graph order: Torch-Pruning's ``group_reduction="first"``).

The default, ``GroupScoring()``, is ``producers``/``mean``/``mean``: exactly the scores of
:func:`fxprune.criteria.producer_scores` before this option existed. Biases and buffers (a
norm's running statistics) are never scored: they are not weights of the channel.
"""

from __future__ import annotations

__all__ = ["GroupScoring", "MEMBERS", "NORMALIZE", "REDUCTION", "combine", "scored_members"]

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.errors import InputError
from fxprune.ir.meta import Group, ParamSlice

MEMBERS = ("producers", "all")
NORMALIZE = ("mean", "max", "none")
REDUCTION = ("mean", "sum", "max", "first")


@dataclass(frozen=True)
class GroupScoring:
    """How a magnitude criterion scores a unit from its group's slices (module docstring)."""

    members: str = "producers"
    normalize: str = "mean"
    reduction: str = "mean"

    def __post_init__(self) -> None:
        for field, allowed in (("members", MEMBERS), ("normalize", NORMALIZE),
                               ("reduction", REDUCTION)):
            value = getattr(self, field)
            if value not in allowed:
                raise InputError(f"GroupScoring({field}={value!r}): expected one of "
                                 f"{', '.join(map(repr, allowed))}")

    @classmethod
    def parse(cls, spec: str | GroupScoring | None) -> GroupScoring:
        """``None`` (the default), a GroupScoring, or ``"members[/normalize[/reduction]]"``
        (the CLI's ``--group-scores all/none/sum``)."""
        if spec is None:
            return cls()
        if isinstance(spec, GroupScoring):
            return spec
        if not isinstance(spec, str):
            raise InputError(f"group scoring must be a GroupScoring or a string such as "
                             f"'all/mean/mean', got {type(spec).__name__}")
        parts = spec.split("/")
        if len(parts) > 3:
            raise InputError(f"group scoring '{spec}': expected members[/normalize[/reduction]]")
        return cls(*parts)


def _is_weight(root: nn.Module, m: ParamSlice) -> bool:
    """A parameter (not a buffer) that is not a bias."""
    if not m.param or m.param == "bias" or m.param.endswith(".bias"):
        return False
    try:
        root.get_parameter(m.path)
    except AttributeError:
        return False
    return True


def scored_members(group: Group, root: nn.Module, members: str) -> list[ParamSlice]:
    """The slices a criterion reads under ``members`` ("producers" or "all")."""
    if members == "all":
        chosen = [m for m in group.members if _is_weight(root, m)]
        if chosen:
            return chosen
    for roles in (("out",), ("channel",), ("in",)):
        chosen = [m for m in group.members if m.role in roles]
        if chosen:
            break
    else:
        return []
    # a producer's bias is not a second producer: score filters by their weights only
    weighted = {m.node for m in chosen if m.tensor(root).dim() > 1}
    return [m for m in chosen if m.node not in weighted or m.tensor(root).dim() > 1]


def _per_unit(group: Group, m: ParamSlice, entry_scores: Tensor, normalize: str
              ) -> tuple[Tensor, Tensor]:
    """The member's per-unit scores (mean over its entries per unit), normalized, and the units
    it covers. Entry counts differ per unit in a packed q/k/v projection (q/k units hold a q
    and a k row per head, v units a v row): a sum would favour the larger units."""
    s = group.reduce(m, entry_scores)
    entries = group.reduce(m, torch.ones_like(entry_scores))
    s = s / entries.clamp_min(1.0)
    present = entries > 0
    if normalize != "none" and bool(present.any()):
        ref = s[present].mean() if normalize == "mean" else s[present].max()
        if float(ref) > 0:
            s = s / ref
    return s, present


def combine(group: Group, parts: Iterable[tuple[ParamSlice, Tensor]],
            scoring: GroupScoring = GroupScoring()) -> Tensor:
    """Per-unit scores from per-entry scores of several members (see the module docstring)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    feeds = torch.zeros(group.size, dtype=torch.float64)
    best = torch.full((group.size,), -torch.inf, dtype=torch.float64)
    for m, entry_scores in parts:
        s, present = _per_unit(group, m, entry_scores.double(), scoring.normalize)
        if scoring.reduction == "first":
            s = torch.where(feeds > 0, 0.0, s)
        total += torch.where(present, s, 0.0)
        best = torch.where(present, torch.maximum(best, s), best)
        feeds += present
    if scoring.reduction == "max":
        return torch.where(feeds > 0, best, 0.0)
    if scoring.reduction == "mean":
        return total / feeds.clamp_min(1.0)
    return total  # "sum", or "first" (one member per unit contributed)
