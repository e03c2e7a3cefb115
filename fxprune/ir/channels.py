"""Channel-id tensors: the abstract value that dependency analysis propagates through the graph.

Every tensor in the traced graph gets an *id tensor*: an int64 tensor with the same number of
dimensions as the value, each dimension either 1 (the ids do not vary along it) or the value's
size. Element ``ids[..., i, ...]`` names the channel that the value's elements at that position
belong to. Two reserved ids:

* ``FROZEN`` (0): the element belongs to something that must keep its width (graph inputs,
  graph outputs, unknown ops). Anything unified with it is frozen.
* ``FREE`` (1): the element is a broadcast copy that is not tied to any channel (``expand`` of a
  size-1 dim); it never couples channels and is always kept.

Real channel ids start at ``FIRST_ID``. Ids are allocated per *space* (the output channels of a
conv, the features of a linear, the entries of a parameter) and related by union-find.
"""

from __future__ import annotations

__all__ = [
    "FROZEN",
    "FREE",
    "FIRST_ID",
    "at_axis",
    "fit",
    "compress",
    "varying_axes",
    "axis_ids",
    "kept_along",
    "pruned_axes",
]

import torch
from torch import Tensor

FROZEN = 0
FREE = 1
FIRST_ID = 2


def at_axis(ids1d: Tensor, axis: int, ndim: int) -> Tensor:
    """Place a 1-D id vector on ``axis`` of an ``ndim``-dimensional id tensor."""
    shape = [1] * ndim
    shape[axis] = ids1d.numel()
    return ids1d.reshape(shape)


def fit(ids: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor | None:
    """Return ``ids`` if it is a valid id tensor for a value of ``shape``, else None."""
    if ids.dim() != len(shape):
        return None
    for i, s in zip(ids.shape, shape):
        if i != 1 and i != s:
            return None
    return ids


def compress(full: Tensor) -> Tensor:
    """Shrink every dimension along which ``full`` is constant to size 1."""
    out = full
    for d in range(full.dim()):
        if out.shape[d] > 1:
            first = out.narrow(d, 0, 1)
            if bool((out == first).all()):
                out = first
    return out.contiguous()


def varying_axes(ids: Tensor) -> list[int]:
    return [d for d, s in enumerate(ids.shape) if s > 1]


def axis_ids(ids: Tensor, axis: int, size: int) -> Tensor | None:
    """The 1-D ids along ``axis`` if the ids vary along no other axis (else None).

    A constant id tensor gives that id repeated ``size`` times.
    """
    others = [d for d in varying_axes(ids) if d != axis]
    if others:
        return None
    flat = ids.reshape(-1) if ids.shape[axis] > 1 else ids.reshape(-1)[:1]
    return flat.expand(size).clone() if flat.numel() == 1 else flat.clone()


def kept_along(ids: Tensor, kept: Tensor, axis: int) -> Tensor:
    """Bool per position along ``axis``: does any element there keep its channel?"""
    k = kept[ids]
    other = [d for d in range(ids.dim()) if d != axis]
    return k.any(dim=other) if other else k


def pruned_axes(ids: Tensor, kept: Tensor) -> list[tuple[int, Tensor]]:
    """``(axis, kept positions)`` for every axis of a value that loses channels."""
    out = []
    for d in range(ids.dim()):
        if ids.shape[d] > 1:
            pos = kept_along(ids, kept, d)
            if not bool(pos.all()):
                out.append((d, torch.nonzero(pos).flatten()))
    return out
