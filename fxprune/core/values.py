"""Helpers of the analysis over a node's value and its channel ids, which may be a tensor or a
(nested) tuple of them: shapes, structure-preserving maps, validity, and how two id tensors
relate (the same channels; one repeated k times). Part of :mod:`.analyze`."""

from __future__ import annotations

__all__ = ["same_ids", "repeats", "shape_of", "has_tensor", "structure", "structure_apply", "valid"]

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.ir.channels import FIRST_ID, axis_ids, fit


def same_ids(ids: Any, src_ids: Any) -> bool:
    """Whether two id tensors are equal (broadcast), so any count read from one fits the
    other: ``attn.reshape(B, -1, N, value.shape[-1])`` where ``attn`` has ``value``'s ids."""
    if not (isinstance(ids, Tensor) and isinstance(src_ids, Tensor)) or ids.dim() != \
            src_ids.dim():
        return False
    try:
        a, b = torch.broadcast_tensors(ids, src_ids)
    except RuntimeError:
        return False
    return torch.equal(a, b)


def repeats(ids: Any, p: int, src_ids: Any, axis: int, size: int, k: int) -> bool:
    """Whether axis ``p`` of ``ids`` holds each channel of ``src_ids``'s ``axis`` exactly
    ``k`` times and nothing else: then its count stays ``k`` times the other's whatever is
    pruned."""
    if not (isinstance(ids, Tensor) and isinstance(src_ids, Tensor) and p < ids.dim()
            and ids.shape[p] == k * size):
        return False
    a, b = axis_ids(src_ids, axis, size), axis_ids(ids, p, k * size)
    if a is None or b is None or bool((a < FIRST_ID).any()):
        return False
    return torch.equal(a.repeat(k).sort().values, b.sort().values)


def shape_of(x: Any) -> Any:
    if isinstance(x, Tensor):
        return tuple(x.shape)
    if isinstance(x, (list, tuple)) and any(isinstance(v, Tensor) for v in x):
        return tuple(shape_of(v) for v in x)
    return None


def has_tensor(x: Any) -> bool:
    if isinstance(x, Tensor):
        return True
    if isinstance(x, (list, tuple)):
        return any(has_tensor(v) for v in x)
    if isinstance(x, dict):
        return any(has_tensor(v) for v in x.values())
    if hasattr(x, "__dict__") and not isinstance(x, (nn.Module, type)):
        return any(has_tensor(v) for v in vars(x).values())  # an object carrying tensors
    return False


def structure(x: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, (list, tuple)):
        return tuple(structure(v, fn) for v in x)
    return None


def structure_apply(ids: Any, fn: Callable[[Tensor], None]) -> None:
    if isinstance(ids, Tensor):
        fn(ids)
    elif isinstance(ids, (list, tuple)):
        for v in ids:
            structure_apply(v, fn)


def valid(ids: Any, out: Any) -> bool:
    if isinstance(out, Tensor):
        return isinstance(ids, Tensor) and fit(ids, out.shape) is not None
    if isinstance(out, (list, tuple)):
        return (isinstance(ids, tuple) and len(ids) == len(out)
                and all(valid(i, o) for i, o in zip(ids, out)))
    return ids is None
