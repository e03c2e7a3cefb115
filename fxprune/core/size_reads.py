"""Channel counts read as Python numbers: where they go (analysis) and pinning them (rewrite).

``x.shape``, ``x.size()``, ``x.size(d)``, ``x.numel()``, ``torch.numel(x)`` and ``len(x)`` are
*size reads*. Analysis records, for every Python value computed from size reads, which channel
axes it depends on (``node.meta["fxprune.size_deps"]``). Where such a value enters a tensor op,
the op's rule says what the argument is (:meth:`fxprune.rules.Rule.is_size_arg`):

* a **size** (reshape/view sizes, ``zeros`` sizes, split sizes, slice bounds, pad amounts):
  it is recomputed after pruning (or patched by the rule). A size read from *another* tensor
  couples nothing fxprune can track, so both tensors keep their channels (analysis freezes them).
* anything else is a **number** (``y * (1 / y.shape[1])``, ``y / math.sqrt(y.size(1))``,
  ``torch.full(..., fill_value=c)``, a count returned by ``forward``): after pruning it would
  change, and so would the output. The oracle's semantics are that pruned channels are zeroed,
  which does not change the count, so the rewrite *pins* it: every size read along an axis
  that loses channels is replaced by its original value (``numel`` by
  ``numel // pruned sizes * original sizes``, so the batch size stays dynamic); the
  arithmetic that follows is emitted again, or folded to a constant.

[INF] A pinned count is the one seen on the example inputs. A pruned axis that also carries
non-channel positions (``x.flatten(1)`` of a feature map) pins its spatial factor too.
"""

from __future__ import annotations

__all__ = ["direct_count", "scaled_count", "arg_deps", "SIZE_DEPS", "size_deps", "flat_deps",
           "size_uses", "pin_args"]

import builtins
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from fxprune.ir import meta

SIZE_DEPS = meta.SIZE_DEPS

Deps = frozenset  # of (tensor node name, axis)


def _size_read(n: fx.Node) -> tuple[fx.Node, str, int | None] | None:
    """``(tensor node, kind, axis)`` if ``n`` reads sizes of a tensor with channel ids.

    kind: ``"shape"`` (the whole size tuple), ``"axis"`` (one axis), ``"numel"``.
    """
    args = n.args
    src = args[0] if args and isinstance(args[0], fx.Node) else None
    if src is None or not isinstance(meta.get_ids(src), Tensor):
        return None
    nd = meta.get_ids(src).dim()
    if (n.target is getattr and len(args) > 1 and args[1] == "shape") or (
            n.target == "size" and len(args) == 1 and not n.kwargs):
        return src, "shape", None
    if n.target == "size":
        d = args[1] if len(args) > 1 else n.kwargs.get("dim")
        return (src, "axis", d % nd) if isinstance(d, int) and nd else None
    if n.target in ("numel", torch.numel) and len(args) == 1:
        return src, "numel", None
    if n.target is builtins.len and len(args) == 1 and nd:
        return src, "axis", 0
    return None


def direct_count(a: Any) -> tuple[fx.Node, int] | None:
    """``(tensor node, axis)`` if ``a`` is exactly one channel count: ``x.shape[d]``,
    ``x.size(d)`` or an unpacked ``B, N, C = x.shape`` (not arithmetic on it)."""
    if not isinstance(a, fx.Node):
        return None
    read = _size_read(a)
    if read is not None and read[1] == "axis":
        return read[0], int(read[2])  # type: ignore[arg-type]
    if a.target is operator.getitem and len(a.args) == 2 and isinstance(a.args[1], int):
        inner = a.args[0]
        read = _size_read(inner) if isinstance(inner, fx.Node) else None
        if read is not None and read[1] == "shape":
            nd = meta.get_ids(read[0]).dim()
            return (read[0], a.args[1] % nd) if nd else None
    return None


def scaled_count(a: Any) -> tuple[fx.Node, int, int] | None:
    """``(tensor node, axis, k)`` if ``a`` is one channel count times a literal ``k``:
    :func:`direct_count` (``k = 1``) or ``k * x.shape[d]`` / ``x.shape[d] * k`` (Swin's patch
    merging: ``view(B, -1, 4 * C)``)."""
    direct = direct_count(a)
    if direct is not None:
        return direct[0], direct[1], 1
    if not isinstance(a, fx.Node) or a.target is not operator.mul or len(a.args) != 2:
        return None
    x, y = a.args
    k, c = (x, y) if isinstance(x, int) else (y, x)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        return None
    direct = direct_count(c)
    return None if direct is None else (direct[0], direct[1], k)


def size_deps(n: fx.Node) -> Any:
    """Which (tensor node, axis) pairs with varying channel ids a Python value depends on.

    ``x.shape`` / ``x.size()`` give one set per axis (a tuple); ``x.size(d)``, ``x.shape[d]``,
    ``len(x)`` one set; ``x.numel()`` the set of all axes; arithmetic unions its arguments'.
    """
    def varying(src: fx.Node, axis: int) -> Deps:
        ids = meta.get_ids(src)
        if isinstance(ids, Tensor) and axis < ids.dim() and ids.shape[axis] > 1:
            return frozenset({(src.name, axis)})
        return frozenset()

    read = _size_read(n)
    if read is not None:
        src, kind, axis = read
        nd = meta.get_ids(src).dim()
        if kind == "shape":
            return tuple(varying(src, d) for d in range(nd))
        if kind == "axis":
            return varying(src, axis)  # type: ignore[arg-type]
        return frozenset().union(*[varying(src, d) for d in range(nd)])
    args = n.args
    if n.target is operator.getitem and args and isinstance(args[0], fx.Node):
        deps = args[0].meta.get(SIZE_DEPS)
        if isinstance(deps, tuple) and isinstance(args[1], (int, slice)):
            return deps[args[1]]
    out: set[tuple[str, int]] = set()
    for a in n.all_input_nodes:
        out |= flat_deps(a.meta.get(SIZE_DEPS))
    return frozenset(out)


def flat_deps(deps: Any) -> set[tuple[str, int]]:
    if deps is None:
        return set()
    if isinstance(deps, frozenset):
        return set(deps)
    return set().union(*[flat_deps(d) for d in deps]) if deps else set()


def arg_deps(a: Any) -> set[tuple[str, int]]:
    """The (tensor node, channel axis) pairs an argument's counts are read from."""
    return _arg_deps(a)


def _arg_deps(a: Any) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()

    def visit(x: fx.Node) -> fx.Node:
        if meta.get_ids(x) is None:
            found.update(flat_deps(x.meta.get(SIZE_DEPS)))
        return x

    fx.node.map_arg(a, visit)
    return found


def size_uses(n: fx.Node, is_size_arg: Callable[[fx.Node, int | str], bool] | None
              ) -> tuple[tuple[int | str, ...], set[tuple[str, int]]]:
    """Split the count-derived arguments of a tensor op ``n`` into numbers and sizes.

    Returns ``(keys of the arguments to pin, the channel axes read by size arguments)``;
    keys are positions (ints) and keyword names.
    """
    pins: list[int | str] = []
    sizes: set[tuple[str, int]] = set()
    items = [*enumerate(n.args), *n.kwargs.items()]
    for key, a in items:
        deps = _arg_deps(a)
        if not deps:
            continue
        if is_size_arg is not None and is_size_arg(n, key):
            sizes |= deps
        else:
            pins.append(key)
    return tuple(pins), sizes


# --- rewrite ----------------------------------------------------------------------------------

class _Pinner:
    """Emits pinned copies of count expressions into the new graph (memoized per old node)."""

    def __init__(self, graph: fx.Graph, new_of: dict[fx.Node, fx.Node], kept: Tensor):
        self.graph = graph
        self.new_of = new_of
        self.kept = kept
        self.memo: dict[fx.Node, Any] = {}

    def _pruned(self, src: fx.Node, axis: int) -> bool:
        from fxprune.ir.channels import kept_along

        ids = meta.get_ids(src)
        if not isinstance(ids, Tensor) or axis >= ids.dim() or ids.shape[axis] == 1:
            return False
        return not bool(kept_along(ids, self.kept, axis).all())

    def value(self, old: fx.Node) -> Any:
        if old in self.memo:
            return self.memo[old]
        out = self._value(old)
        self.memo[old] = out
        return out

    def _value(self, old: fx.Node) -> Any:
        new = self.new_of[old]
        if meta.get_ids(old) is not None or not flat_deps(old.meta.get(SIZE_DEPS)):
            return new
        read = _size_read(old)
        if read is not None:
            return self._read(old, new, *read)
        if all(self.value(a) is self.new_of[a] for a in old.all_input_nodes):
            return new  # nothing below it is pinned
        args = fx.node.map_arg(old.args, self.value)
        kwargs = fx.node.map_arg(old.kwargs, self.value)
        if old.target is operator.getitem and isinstance(args[0], tuple) and isinstance(
                args[1], (int, slice)):
            return args[0][args[1]]
        if not _has_node((args, kwargs)) and meta.VALUE in old.meta:
            return old.meta[meta.VALUE]
        copy = self.graph.create_node(old.op, old.target, args, kwargs)
        copy.meta = {k: v for k, v in new.meta.items() if k != meta.IDS}
        return copy

    def _read(self, old: fx.Node, new: fx.Node, src: fx.Node, kind: str, axis: int | None
              ) -> Any:
        shape = src.meta[meta.SHAPE]
        pruned = [d for d in range(len(shape)) if self._pruned(src, d)]
        if kind == "axis":
            return shape[axis] if axis in pruned else new
        if not pruned:
            return new
        if kind == "shape":
            return tuple(shape[d] if d in pruned else
                         self.graph.call_function(operator.getitem, (new, d))
                         for d in range(len(shape)))
        # numel: the pruned tensor's numel, scaled back to the original sizes of pruned axes
        src_new = self.new_of[src]
        now: Any = None
        orig = 1
        for d in pruned:
            size = self.graph.call_method("size", (src_new, d))
            now = size if now is None else self.graph.call_function(operator.mul, (now, size))
            orig *= shape[d]
        per = self.graph.call_function(operator.floordiv, (new, now))
        return self.graph.call_function(operator.mul, (per, orig))


def _has_node(a: Any) -> bool:
    found = []
    fx.node.map_arg(a, lambda x: found.append(x) or x)
    return bool(found)


def pin_args(graph: fx.Graph, pins: dict[str, tuple[int | str, ...]],
             old_of: dict[fx.Node, fx.Node], kept: Tensor) -> None:
    """Replace count-derived number arguments of the pinned nodes by their pinned values.

    ``old_of`` maps the new graph's nodes to the analyzed ones; count arithmetic left without
    users is removed from both.
    """
    if not pins:
        return
    new_of = {old: new for new, old in old_of.items()}
    before = set(graph.nodes)
    pinner = _Pinner(graph, new_of, kept)
    for old, new in list(new_of.items()):
        keys = pins.get(old.name)
        if not keys:
            continue
        args, kwargs = list(new.args), dict(new.kwargs)
        with graph.inserting_before(new):
            for key in keys:
                src = old.args[key] if isinstance(key, int) else old.kwargs[key]
                value = fx.node.map_arg(src, pinner.value)
                if isinstance(key, int):
                    args[key] = value
                else:
                    kwargs[key] = value
        new.args, new.kwargs = tuple(args), kwargs
    for n in reversed(list(graph.nodes)):
        if n.users or n.op not in ("call_function", "call_method"):
            continue
        old = old_of.get(n)
        if n not in before or (old is not None and meta.get_ids(old) is None and flat_deps(
                old.meta.get(SIZE_DEPS)) and _pure(old)):
            graph.erase_node(n)
            old_of.pop(n, None)


def _pure(n: fx.Node) -> bool:
    """Size reads and Python arithmetic on them (safe to drop when unused)."""
    if _size_read(n) is not None:
        return True
    mod = getattr(n.target, "__module__", None)
    return n.op == "call_function" and (mod in ("_operator", "operator", "math") or n.target in (
        builtins.getattr, builtins.len, builtins.int, builtins.float, builtins.round))
