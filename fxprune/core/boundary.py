"""The inputs of a graph's opaque modules, collected while it runs (for the oracle).

Reads:  a module tree and the paths of the modules a trace kept opaque
Writes: nothing: a list filled while the block runs
"""

from __future__ import annotations

__all__ = ["boundary_inputs"]

import contextlib
from collections.abc import Iterator
from typing import Any

import torch.nn as nn
from torch import Tensor
from torch.utils._pytree import tree_flatten


@contextlib.contextmanager
def boundary_inputs(root: nn.Module, paths: Any) -> Iterator[list[Any]]:
    """Collect the tensor arguments of every call of the modules at ``paths`` (the opaque
    regions' inputs: a detector's features before its RPN and ROI heads) while the block
    runs; the oracle compares them as outputs."""
    got: list[Any] = []
    handles = []
    for path in paths:
        try:
            mod = root.get_submodule(path)
        except AttributeError:
            continue

        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            got.append([t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)])

        handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()
