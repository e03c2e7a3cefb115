"""Selection: turn per-unit scores into immutable keep-sets.

Reads:  ``gm.meta["fxprune.analysis"]`` (groups), per-group scores
Writes: ``node.meta["fxprune.keep"]`` (:class:`NodeKeep`) and returns ``{group id: KeepSet}``

Every group keeps ``size - floor(size * ratio)`` units (at least one, and at least its frozen
units), optionally rounded so that the kept channel count is a multiple of ``round_to``.
Frozen units are always kept; the rest are ranked by score (ties keep the lower index).
"""

from __future__ import annotations

__all__ = ["select", "set_keepsets", "kept_mask", "keep_count"]

import math

import torch
import torch.fx as fx
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.errors import InputError
from fxprune.ir import meta
from fxprune.ir.channels import FIRST_ID, pruned_axes


def keep_count(group: meta.Group, ratio: float, round_to: int | None = None) -> int:
    """How many units a group keeps at ``ratio`` (before frozen units are forced in)."""
    n = group.size
    keep = n - math.floor(n * ratio + 1e-9)
    if round_to and round_to > 1:
        step = round_to // math.gcd(round_to, group.divisor)
        if step > 1 and n >= step:
            keep = max(step, int(round(keep / step)) * step)
            keep = min(keep, n - n % step if n % step else n)
    return max(1, min(n, keep))


def select(analysis: Analysis, scores: dict[int, Tensor], ratio: float | dict[int, float],
           round_to: int | None = None) -> dict[int, meta.KeepSet]:
    """Pick the kept units of every group and annotate every node with its kept positions."""
    keep: dict[int, meta.KeepSet] = {}
    for g in analysis.groups:
        r = ratio.get(g.id, 0.0) if isinstance(ratio, dict) else ratio
        if not 0.0 <= r < 1.0:
            raise InputError(f"ratio for group {g.id} must be in [0, 1), got {r}")
        keep[g.id] = _select_group(g, scores.get(g.id), r, round_to)
    return set_keepsets(analysis, keep)


def set_keepsets(analysis: Analysis, keep: dict[int, meta.KeepSet]) -> dict[int, meta.KeepSet]:
    """Install given keep-sets (one per group) as the selection: every value keeps at least one
    channel (a unit is re-admitted where it would not, in ``keep`` itself), every node is
    annotated, and the keep-sets are stored for :func:`fxprune.rewrite`. Returns ``keep``.

    :func:`select` ends here; training-time pruning (:mod:`fxprune.train`) calls it with
    keep-sets it chose itself (sampled, switched between criteria).
    """
    missing = [g.id for g in analysis.groups if g.id not in keep]
    if missing:
        raise InputError(f"keep-sets missing for groups {missing[:8]}")
    mask = kept_mask(analysis, keep)
    mask = _no_empty_axes(analysis, keep, mask)
    annotate(analysis.gm, mask)
    analysis.gm.meta[meta.KEEPSETS] = dict(keep)
    return keep


def _select_group(g: meta.Group, score: Tensor | None, ratio: float,
                  round_to: int | None) -> meta.KeepSet:
    n = g.size
    frozen = set(g.frozen_units)
    k = max(keep_count(g, ratio, round_to), len(frozen))
    if k >= n or len(frozen) == n:
        return meta.KeepSet(g.id, n, tuple(range(n)))
    s = score.double().clone() if score is not None else torch.zeros(n, dtype=torch.float64)
    if s.numel() != n:
        raise InputError(f"criterion returned {s.numel()} scores for group {g.id} of size {n}")
    s = torch.nan_to_num(s, nan=-math.inf)
    if frozen:
        s[list(frozen)] = math.inf
    order = torch.argsort(-s, stable=True)  # ties keep the lower index
    return meta.KeepSet(g.id, n, tuple(sorted(order[:k].tolist())))


def kept_mask(analysis: Analysis, keep: dict[int, meta.KeepSet]) -> Tensor:
    """A bool per channel id: is it kept under these keep-sets?"""
    sizes = [g.size for g in analysis.groups]
    offsets = torch.tensor([0, *sizes], dtype=torch.long).cumsum(0)
    flat = torch.zeros(int(offsets[-1]), dtype=torch.bool)
    for gid, ks in keep.items():
        idx = torch.tensor(ks.indices, dtype=torch.long) + offsets[gid]
        flat[idx] = True
    mask = torch.ones(analysis.n_ids, dtype=torch.bool)
    real = torch.arange(FIRST_ID, analysis.n_ids)
    g = analysis.group_of[real]
    mask[real] = flat[offsets[g] + analysis.unit_index[real]] | analysis.frozen[real]
    return mask


def _axis_ids(gm: fx.GraphModule) -> list[Tensor]:
    """Id tensors of every value that carries real channels (a 1-channel value included)."""
    out = []
    for n in gm.graph.nodes:
        ids = meta.get_ids(n)
        for t in ids if isinstance(ids, tuple) else (ids,):
            if isinstance(t, Tensor) and bool((t >= FIRST_ID).any()):
                out.append(t)
    return out


def _no_empty_axes(analysis: Analysis, keep: dict[int, meta.KeepSet], mask: Tensor) -> Tensor:
    """Every value keeps at least one channel (slices, split pieces, 1-channel convs coupled
    into a larger group): re-admit one unit where it would not."""
    for _ in range(8):
        changed = False
        for t in _axis_ids(analysis.gm):
            if bool(mask[t].any()):
                continue
            flat = t.reshape(-1)
            first = int(flat[flat >= FIRST_ID][0])
            g, u = int(analysis.group_of[first]), int(analysis.unit_index[first])
            ks = keep[g]
            keep[g] = meta.KeepSet(g, ks.size, tuple(sorted({*ks.indices, u})))
            changed = True
            mask = kept_mask(analysis, keep)
        if not changed:
            break
    return mask


def annotate(gm: fx.GraphModule, mask: Tensor) -> None:
    """Write each node's kept positions (along axes that lose channels) into node.meta."""
    for n in gm.graph.nodes:
        ids = meta.get_ids(n)
        if not isinstance(ids, Tensor) or ids.numel() <= 1:
            n.meta.pop(meta.KEEP, None)
            continue
        axes = [(d, int(ids.shape[d]), tuple(pos.tolist()))
                for d, pos in pruned_axes(ids, mask)]
        if axes:
            n.meta[meta.KEEP] = meta.NodeKeep(tuple(axes))
        else:
            n.meta.pop(meta.KEEP, None)
