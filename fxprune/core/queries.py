"""Questions about an analyzed graph that several stages ask (the latency target, the
inspection report, the graph export)."""

from __future__ import annotations

__all__ = ["node_group"]

from collections import Counter
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.ir import meta


def _flat_ids(ids: Any) -> list[Tensor]:
    if isinstance(ids, Tensor):
        return [ids.reshape(-1)]
    if isinstance(ids, (list, tuple)):
        return [t for v in ids for t in _flat_ids(v)]
    return []


def node_group(analysis: Analysis, node: fx.Node) -> int | None:
    """The most common non-negative group id of a node's output channels (None if none)."""
    flat = _flat_ids(meta.get_ids(node))
    if not flat:
        return None
    ids = torch.cat(flat)
    ids = ids[(ids >= 0) & (ids < analysis.n_ids)]
    if not ids.numel():
        return None
    g = analysis.group_of[ids]
    g = g[g >= 0]
    if not g.numel():
        return None
    return int(Counter(g.tolist()).most_common(1)[0][0])
