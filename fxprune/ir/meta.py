"""Metadata keys and the immutable value types that passes exchange through ``node.meta``.

Every key is defined here once; code never indexes ``node.meta`` with a literal elsewhere.
Values are frozen dataclasses and tuples, because ``Graph.node_copy`` copies meta shallowly.
"""

from __future__ import annotations

__all__ = [
    "SHAPE",
    "IDS",
    "KEEPSETS",
    "VERIFY",
    "ALLOCATION",
    "RESIDUAL",
    "ATTENTION",
    "KEEP",
    "GROUPS",
    "ANALYSIS",
    "MANIFEST",
    "MANIFEST_WIDTHS",
    "SIZE_DEPS",
    "LATENCY",
    "ParamSlice",
    "Group",
    "KeepSet",
    "NodeKeep",
    "get_ids",
    "set_ids",
]

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

SHAPE = "fxprune.shape"  # node.meta: shape (or tuple of shapes) seen on the example inputs
VALUE = "fxprune.value"  # node.meta: the int/slice/size value a non-tensor node had (analysis)
IDS = "fxprune.ids"  # node.meta: channel-id tensor(s) of the node's value (analysis)
KEEP = "fxprune.keep"  # node.meta: NodeKeep, kept positions of the node's value (selection)
GROUPS = "fxprune.groups"  # gm.meta: tuple[Group, ...] (analysis)
ANALYSIS = "fxprune.analysis"  # gm.meta: the Analysis object (analysis)
VERIFY = "fxprune.verify"  # pruned gm.meta: VerifyReport (compress(verify=True))
ALLOCATION = "fxprune.allocation"  # pruned gm.meta: {"allocation", "ratios", "target"...}
RESIDUAL = "fxprune.residual"  # pruned gm.meta: the residual policy it was pruned with
ATTENTION = "fxprune.attention"  # pruned gm.meta: the attention policy ("dims" or "heads")
KEEPSETS = "fxprune.keepsets"  # gm.meta: {group id: KeepSet} (selection)
SIZE_DEPS = "fxprune.size_deps"  # node.meta: channel axes a Python value is read from (analysis)
LATENCY = "fxprune.latency"  # pruned gm.meta: {layer name: predicted ms} (target_latency)
MANIFEST = "fxprune.manifest"  # pruned gm.meta: {"param.path": {dim: kept indices}} (rewrite)
# pruned gm.meta: {"param.path": {dim: the original width}}, for each manifest entry (rewrite)
MANIFEST_WIDTHS = "fxprune.manifest_widths"


@dataclass(frozen=True, eq=False)
class ParamSlice:
    """One axis of one parameter (or buffer) whose entries belong to a group's units.

    ``units[i]`` is the unit (index into the group) that entry ``i`` along ``dim`` belongs to, or
    -1 when that entry belongs to another group. ``role`` is ``"out"`` (a filter of a producer:
    conv/linear output), ``"in"`` (an input slice of a consumer) or ``"channel"`` (a per-channel
    parameter: norm affine, depthwise filter, layer scale).
    """

    node: str
    target: str
    param: str
    dim: int
    role: str
    units: Tensor

    @property
    def path(self) -> str:
        return f"{self.target}.{self.param}" if self.param else self.target

    def tensor(self, root: torch.nn.Module) -> Tensor:
        """The parameter (or buffer) with ``dim`` moved first: shape ``[len, ...]`` (detached)."""
        return _get_attr(root, self.path).detach().movedim(self.dim, 0)


def _get_attr(root: torch.nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True, eq=False)
class Group:
    """A set of coupled channels: ``size`` units that are kept or removed together.

    A *unit* is one coupled channel: e.g. channel 5 of every conv feeding the same residual add.
    ``divisor`` is the number of channels each unit stands for in the group's widest space
    (>1 for grouped convs, whose units are positions repeated in every conv group).
    """

    id: int
    size: int
    width: int
    divisor: int
    members: tuple[ParamSlice, ...]
    producers: tuple[str, ...]
    frozen_units: tuple[int, ...]
    frozen_why: tuple[Any, ...] = ()  # reasons; str() formats them (lazily: see errors.Located)
    approx: str | None = None

    @property
    def frozen_reason(self) -> str | None:
        """Why units are frozen (up to three reasons, with where), or None."""
        return "; ".join(str(r) for r in self.frozen_why[:3]) or None

    @property
    def prunable(self) -> int:
        return self.size - len(self.frozen_units)

    def reduce(self, member: ParamSlice, per_entry: Tensor) -> Tensor:
        """Sum per-entry values of a member into a ``[size]`` vector of per-unit values."""
        out = torch.zeros(self.size, dtype=per_entry.dtype)
        mask = member.units >= 0
        return out.index_add_(0, member.units[mask], per_entry[mask])


@dataclass(frozen=True)
class KeepSet:
    """The units a group keeps (sorted)."""

    group: int
    size: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class NodeKeep:
    """Kept positions of a node's value: ``((axis, old_size, kept positions), ...)``."""

    axes: tuple[tuple[int, int, tuple[int, ...]], ...]


def get_ids(node: fx.Node) -> Any:
    return node.meta.get(IDS)


def set_ids(node: fx.Node, ids: Any) -> None:
    node.meta[IDS] = ids


def record_of(model: Any) -> dict[str, Any]:
    """A pruned model's fxprune record, live: a GraphModule's ``meta``, else the
    ``fxprune_meta`` of a model of its own class (``keep_class=True``, or a root that stayed
    opaque); an empty, unattached dict when it has neither."""
    record = getattr(model, "meta", None)
    if isinstance(record, dict):
        return record
    record = getattr(model, "__dict__", {}).get("fxprune_meta")
    return record if isinstance(record, dict) else {}
