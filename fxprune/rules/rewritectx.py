"""What a rule's ``rewrite_node`` sees (:class:`RewriteCtx`): the old node of each new one, and
the old and new shapes of a value. :func:`fxprune.rewrite` makes one per rewrite."""

from __future__ import annotations

__all__ = ["RewriteCtx"]

from typing import Any

import torch.fx as fx
from torch import Tensor

from fxprune.ir import meta
from fxprune.ir.channels import kept_along
from fxprune.rules.util import new_shape_of

VALUE = meta.VALUE


class RewriteCtx:
    """What a rule's ``rewrite_node`` sees: the old node of a new one, old/new shapes."""

    def __init__(self, old_of: dict[fx.Node, fx.Node], kept: Tensor):
        self._old = old_of
        self.kept = kept

    def old(self, node: fx.Node) -> fx.Node:
        return self._old[node]

    def arg_value(self, old: fx.Node, i: int, name: str | None = None) -> Any:
        """Argument ``i`` of an old node with node references replaced by their seen values."""
        v = old.args[i] if i < len(old.args) else old.kwargs.get(name) if name else None
        return fx.node.map_arg(v, lambda n: n.meta.get(VALUE, n))

    def old_shape(self, old: fx.Node) -> Any:
        return old.meta.get(meta.SHAPE)

    def new_shape(self, old: fx.Node) -> tuple[int, ...]:
        ids = meta.get_ids(old)
        return new_shape_of(ids, self.old_shape(old), self.kept)

    def kept_positions(self, old: fx.Node, axis: int) -> Tensor | None:
        """Bool per position along ``axis`` of the old value, or None if nothing is pruned."""
        ids = meta.get_ids(old)
        if not isinstance(ids, Tensor) or ids.dim() <= axis or ids.shape[axis] == 1:
            return None
        pos = kept_along(ids, self.kept, axis)
        return None if bool(pos.all()) else pos

    def patch_shape_args(self, node: fx.Node, first: int) -> None:
        """Replace literal sizes in ``node.args[first:]`` by the pruned sizes."""
        old = self.old(node)
        old_shape, new_shape = self.old_shape(old), self.new_shape(old)
        if old_shape == new_shape:
            return
        args = list(node.args)
        packed = len(args) == first + 1 and isinstance(args[first], (list, tuple))
        sizes = list(args[first]) if packed else args[first:]
        if len(sizes) != len(old_shape):
            return
        for i, s in enumerate(sizes):
            literal = isinstance(s, int) and s != -1 and s == old_shape[i]
            fixed = (isinstance(s, fx.Node) and old_shape[i] != new_shape[i]
                     and self._fixed_count(s) == old_shape[i])
            if literal or fixed:
                sizes[i] = new_shape[i]
        node.args = (*args[:first], tuple(sizes)) if packed else (*args[:first], *sizes)

    def _fixed_count(self, node: fx.Node) -> Any:
        """The seen value of a size computed without reading any pruned channel axis (a
        count from a config, ``self.all_head_size``, reached through ``size()[:-2] + (c,)``):
        after pruning it would still be the original count, so the caller patches it. None
        where the value follows a channel axis (recomputed after pruning) or is unknown."""
        old = self._old.get(node)
        if old is None or _has_deps(old.meta.get(meta.SIZE_DEPS)):
            return None
        v = old.meta.get(VALUE)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def patch_unflatten(self, node: fx.Node) -> None:
        old = self.old(node)
        new_shape = self.new_shape(old)
        args = list(node.args)
        dim = int(args[1])
        sizes = list(args[2])
        dim = dim if dim >= 0 else len(self.old_shape(old.args[0])) + dim
        for i, s in enumerate(sizes):
            if isinstance(s, int) and s != -1:
                sizes[i] = new_shape[dim + i]
        args[2] = tuple(sizes)
        node.args = tuple(args)


def _has_deps(deps: Any) -> bool:
    """Whether analysis tied a Python value to a channel axis (``fxprune.size_deps``)."""
    if isinstance(deps, (tuple, list)):
        return any(_has_deps(d) for d in deps)
    return bool(deps)
