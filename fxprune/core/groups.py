"""Union-find over channel ids: units (coupled channels) and groups (coupled spaces).

Reads:  the propagation state (edges between ids, frozen ids, bindings, spaces)
Writes: nothing; returns the tables that :class:`fxprune.core.analyze.Analysis` holds

Both levels are vectorized hook-and-jump connected components, near-linear in the number of
channel ids.
"""

from __future__ import annotations

__all__ = ["components", "resolve_tables", "node_group"]

from collections import Counter
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from fxprune.ir import meta
from fxprune.ir.channels import FIRST_ID


def components(n: int, edges: Tensor) -> Tensor:
    """Root (min member) of every element's connected component; vectorized hook-and-jump."""
    parent = torch.arange(n, dtype=torch.long)
    if edges.numel() == 0:
        return parent
    u, v = edges[0], edges[1]
    while True:
        pu, pv = parent[u], parent[v]
        lo, hi = torch.minimum(pu, pv), torch.maximum(pu, pv)
        changed = lo != hi
        if not bool(changed.any()):
            return parent
        parent.scatter_reduce_(0, hi[changed], lo[changed], reduce="amin")
        while True:  # pointer jumping until every element points at a root
            pp = parent[parent]
            if torch.equal(pp, parent):
                break
            parent = pp


def resolve_tables(s: Any) -> dict[str, Any]:
    """Units, groups and frozen flags from the propagation state ``s``."""
    n = s.n_ids
    edges = torch.cat(s.edges, dim=1) if s.edges else torch.zeros(2, 0, dtype=torch.long)
    unit = components(n, edges)

    frozen = torch.zeros(n, dtype=torch.bool)
    for ids, _reason in s.frozen:
        frozen[unit[ids]] = True
    frozen = frozen[unit]

    # Second level: spaces that share a unit form one group.
    starts = torch.tensor(s.space_start, dtype=torch.long)
    sizes = torch.tensor(s.space_size, dtype=torch.long)
    space_of = torch.repeat_interleave(torch.arange(len(starts)), sizes)
    real = torch.arange(FIRST_ID, n)
    sp_edges = torch.stack([space_of[real], space_of[unit[real]]])
    space_root = components(len(starts), sp_edges)
    group_root = space_root[space_of]  # per id

    group_of = torch.full((n,), -1, dtype=torch.long)
    unit_index = torch.full((n,), -1, dtype=torch.long)
    roots_sorted, inverse = torch.unique(group_root[FIRST_ID:], return_inverse=True)
    group_of[FIRST_ID:] = inverse
    # unit index inside the group: rank of the unit root among the group's unit roots
    is_root = unit == torch.arange(n)
    order_key = group_of * n + torch.arange(n)
    root_ids = torch.nonzero(is_root & (group_of >= 0)).flatten()
    root_ids = root_ids[torch.argsort(order_key[root_ids])]
    grp_of_roots = group_of[root_ids]
    counts = torch.bincount(grp_of_roots, minlength=len(roots_sorted))
    offsets = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(root_ids)) - offsets[grp_of_roots]
    root_rank = torch.full((n,), -1, dtype=torch.long)
    root_rank[root_ids] = rank
    unit_index[FIRST_ID:] = root_rank[unit[FIRST_ID:]]

    groups = _build_groups(s, unit, group_of, unit_index, frozen, counts, space_of, starts,
                           sizes)
    return {"n_ids": n, "unit": unit, "group_of": group_of, "unit_index": unit_index,
            "frozen": frozen, "groups": groups}


def _build_groups(s: Any, unit: Tensor, group_of: Tensor, unit_index: Tensor, frozen: Tensor,
                  counts: Tensor, space_of: Tensor, starts: Tensor, sizes: Tensor
                  ) -> tuple[meta.Group, ...]:
    n_groups = len(counts)
    members: list[list[meta.ParamSlice]] = [[] for _ in range(n_groups)]
    # all bindings at once: their ids concatenated, per-binding min/max group by segment
    bindings = s.bindings
    lens = [len(b.ids) for b in bindings]
    all_ids = torch.cat([b.ids for b in bindings]) if bindings else torch.zeros(0, dtype=torch.long)
    all_groups = group_of[all_ids]
    seg = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens, dtype=torch.long))
    lo = torch.zeros(len(lens), dtype=torch.long).scatter_reduce_(
        0, seg, all_groups, "amin", include_self=False).tolist()
    hi = torch.zeros(len(lens), dtype=torch.long).scatter_reduce_(
        0, seg, all_groups, "amax", include_self=False).tolist()
    units_of = torch.split(unit_index[all_ids], lens)
    groups_of = torch.split(all_groups, lens)
    for k, b in enumerate(bindings):
        if lo[k] == hi[k]:  # the common case: a binding inside one group
            if lo[k] >= 0:
                members[lo[k]].append(meta.ParamSlice(
                    b.node, b.target, b.param, b.dim, b.role, units_of[k]))
            continue
        gids = groups_of[k]
        uniq, pos = torch.unique(gids, return_inverse=True)
        # a consumer of a concatenation spans several groups: one row of units per group
        rows = torch.full((len(uniq), len(gids)), -1, dtype=torch.long)
        rows[pos, torch.arange(len(gids))] = unit_index[b.ids]
        for row, g in zip(rows, uniq.tolist()):
            if g >= 0:
                members[g].append(meta.ParamSlice(b.node, b.target, b.param, b.dim, b.role, row))
    # producers / width / divisor per group, from the spaces each group owns
    space_group = group_of[starts.clamp(min=FIRST_ID)].tolist()
    size_list = sizes.tolist()
    producers: list[list[str]] = [[] for _ in range(n_groups)]
    width = [0] * n_groups
    for sp in range(2, len(space_group)):
        g = space_group[sp]
        if g < 0:
            continue
        producers[g].append(s.space_node[sp])
        width[g] = max(width[g], size_list[sp])
    # frozen units per group: unique (group, unit) pairs, sorted, split by group
    fz = torch.nonzero(frozen).flatten()
    fz = fz[fz >= FIRST_ID]
    n = len(unit)
    pairs = torch.unique(group_of[fz] * n + unit_index[fz])
    per_group = torch.bincount(pairs // n, minlength=n_groups).tolist()
    frozen_units = [tuple(x.tolist()) for x in torch.split(pairs % n, per_group)]
    # reasons per group, in the order they were recorded (one lookup per freeze() call)
    reasons: list[dict[Any, None]] = [{} for _ in range(n_groups)]
    for ids, reason in s.frozen:
        for g in group_of[ids.reshape(-1)].unique().tolist():
            if g >= 0:
                reasons[g].setdefault(reason)
    approx_of: list[dict[str, None]] = [{} for _ in range(n_groups)]
    for _node, ids, why in s.approx:
        flat = ids.reshape(-1)
        flat = flat[flat >= FIRST_ID]
        for g in group_of[flat].unique().tolist():
            approx_of[g][why] = None
    out = []
    count_list = counts.tolist()
    for g in range(n_groups):
        size = count_list[g]
        div = max(1, width[g] // size) if size else 1
        out.append(meta.Group(
            id=g, size=size, width=width[g], divisor=div, members=tuple(members[g]),
            producers=tuple(dict.fromkeys(producers[g])),
            frozen_units=frozen_units[g],
            frozen_why=tuple(reasons[g])[:3],
            approx="; ".join(list(approx_of[g])[:3]) or None))
    return tuple(out)


def _flat_ids(ids: Any) -> list[Tensor]:
    if isinstance(ids, Tensor):
        return [ids.reshape(-1)]
    if isinstance(ids, (list, tuple)):
        return [t for v in ids for t in _flat_ids(v)]
    return []


def node_group(analysis: Any, node: fx.Node) -> int | None:
    """The most common non-negative group id of a node's output channels (None if none).

    ``analysis`` is an :class:`~fxprune.core.analyze.Analysis` (its ``n_ids`` and ``group_of``)."""
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
