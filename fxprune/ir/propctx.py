"""The propagation context of the dependency analysis: what a channel rule sees.

Reads:  nothing on its own; :mod:`fxprune.core.analyze` creates one :class:`PropCtx` per node
Writes: the analysis' bookkeeping (``AnalysisState``): id spaces, couplings, freezes, bindings

A rule gets a :class:`PropCtx` with the node, its concrete inputs and output, and the methods
to couple channels (``union``), allocate channel spaces (``new_ids``), bind parameter axes
(``bind``), freeze channels (``freeze``, ``opaque_ids``) and mark inputs it consumes.
"""

from __future__ import annotations

__all__ = ["PropCtx", "Unsupported", "Binding", "ScatterAdd"]

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.errors import Located
from fxprune.ir import meta
from fxprune.ir.channels import FIRST_ID, FREE, FROZEN, at_axis, axis_ids


class Unsupported(Exception):
    """Raised by a rule for a configuration it does not handle; the op is then frozen."""


@dataclass
class Binding:
    node: str
    target: str
    param: str
    dim: int
    ids: Tensor
    role: str


@dataclass(frozen=True)
class ScatterAdd:
    """``residual="scatter"``: ``stream + branch`` where the branch keeps its own channels.

    The rewrite emits ``index_add(stream + const, 1, kept, branch)``; ``const`` holds what the
    removed channels of ``norm`` emit for a zero input (BatchNorm folded), so the result is
    exact against the oracle that zeroes the pruned filters' outputs.

    ``role="stream"``: the *other* operand is a conv's own channels too (the stem's
    ``conv -> BN -> ReLU [-> max-pool]`` feeding the first block): ``chain`` names the
    per-channel ops between that conv and the add; the rewrite scatters the operand into a
    full-width tensor holding what ``chain`` makes of the removed channels' zeros
    (:func:`fxprune.core.rewrite.scatter_channels`), and the add's output is a new full-width
    stream.
    """

    node: str
    branch_arg: int
    branch_ids: Tensor
    norm: str | None
    role: str = "branch"
    chain: tuple[str, ...] = ()




class AnalysisState:
    """Mutable bookkeeping while propagating (ids allocation, edges, freezes)."""

    def __init__(self) -> None:
        self.n_ids = FIRST_ID
        self.space_start: list[int] = [FROZEN, FREE]
        self.space_size: list[int] = [1, 1]
        self.space_node: list[str] = ["<frozen>", "<free>"]
        self.edges: list[Tensor] = []
        self.frozen: list[tuple[Tensor, str | Located]] = []
        self.bindings: list[Binding] = []
        self.bound: dict[tuple[str, str, int], Tensor] = {}
        self.keyed: dict[Any, Tensor] = {}
        self.consumers: dict[str, list[int]] = {}
        self.approx: list[tuple[str, Tensor, str]] = []
        self.unsupported: dict[str, list[str]] = {}
        self.residual = "coupled"
        self.attention = "dims"
        self.equal_chunks = False  # chunk pieces keep the same positions (keep_class)
        self.deferred: dict[str, Tensor] = {}  # attributes waiting for their channel axis
        self.scatters: list[ScatterAdd] = []
        self.modules: dict[str, nn.Module] = {}
        self.tied: dict[tuple[int, int], Tensor] = {}  # (id(tensor), dim) -> ids of that axis
        self.pins: dict[str, tuple[int | str, ...]] = {}

    def new_ids(self, n: int, owner: str) -> Tensor:
        start = self.n_ids
        self.n_ids += n
        self.space_start.append(start)
        self.space_size.append(n)
        self.space_node.append(owner)
        return torch.arange(start, start + n, dtype=torch.long)

    def union(self, a: Tensor, b: Tensor) -> None:
        a, b = torch.broadcast_tensors(a, b)
        a, b = a.reshape(-1), b.reshape(-1)
        m = (a != b) & (a != FREE) & (b != FREE)
        if not bool(m.any()):
            return
        a, b = a[m], b[m]
        fa, fb = a == FROZEN, b == FROZEN
        if bool(fa.any()) or bool(fb.any()):
            self.frozen.append((torch.cat([b[fa], a[fb]]), "coupled with a frozen value"))
            keep = ~(fa | fb)
            a, b = a[keep], b[keep]
        if a.numel():
            self.edges.append(torch.stack([a, b]))

    def tensor_of(self, target: str, param: str) -> Tensor | None:
        """The tensor bound as ``target.param`` (``param=""``: the attribute ``target``)."""
        path = f"{target}.{param}" if param else target
        owner, _, attr = path.rpartition(".")
        mod = self.modules.get(owner)
        t = getattr(mod, attr, None) if mod is not None else None
        return t if isinstance(t, Tensor) else None

    def tie(self, target: str, param: str, dim: int, ids1d: Tensor) -> None:
        """A tensor shared by several modules (a tied Parameter) is one tensor: every use of
        its axis ``dim`` is bound to the same channels."""
        t = self.tensor_of(target, param)
        if t is None:
            return
        prev = self.tied.get((id(t), dim))
        if prev is None:
            self.tied[(id(t), dim)] = ids1d
        elif prev is not ids1d:
            self.union(prev, ids1d)

    def freeze(self, ids: Tensor, reason: str | Located) -> None:
        flat = ids.reshape(-1)
        flat = flat[flat >= FIRST_ID]
        if flat.numel():
            self.frozen.append((flat.unique(), reason))


class PropCtx:
    """What a rule sees: the node, its concrete inputs/output, and the id bookkeeping."""

    def __init__(self, state: AnalysisState, node: fx.Node, module: nn.Module | None, args: tuple,
                 kwargs: dict, out: Any):
        self._s = state
        self.node = node
        self.module = module
        self.args = args
        self.kwargs = kwargs
        self.out = out

    # --- inputs -----------------------------------------------------------------------------
    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        """The concrete value of positional argument ``i`` (or keyword ``name``)."""
        if i < len(self.args):
            return self.args[i]
        if name is not None and name in self.kwargs:
            return self.kwargs[name]
        return default

    def arg_node(self, i: int, name: str | None = None) -> Any:
        if i < len(self.node.args):
            return self.node.args[i]
        if name is not None:
            return self.node.kwargs.get(name)
        return None

    def ids(self, i: int = 0, name: str | None = None) -> Any:
        """Ids of positional input ``i`` (None if it is not a tensor-valued node)."""
        a = self.arg_node(i, name)
        return meta.get_ids(a) if isinstance(a, fx.Node) else None

    def ids_of(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return meta.get_ids(a)
        if isinstance(a, (list, tuple)):
            return type(a)(self.ids_of(x) for x in a)
        return None

    def tensor_input_ids(self) -> list[Tensor]:
        found: list[Tensor] = []

        def visit(a: Any) -> None:
            if isinstance(a, fx.Node):
                v = meta.get_ids(a)
                if isinstance(v, Tensor):
                    found.append(v)
            elif isinstance(a, (list, tuple)):
                for x in a:
                    visit(x)
            elif isinstance(a, dict):
                for x in a.values():
                    visit(x)

        visit(self.node.args)
        visit(self.node.kwargs)
        return found

    # --- id bookkeeping ---------------------------------------------------------------------
    def new_ids(self, n: int, key: Any = None) -> Tensor:
        """Allocate a new channel space of ``n`` ids (the same ids again for the same key)."""
        if key is not None and key in self._s.keyed:
            return self._s.keyed[key]
        ids = self._s.new_ids(n, self.node.name)
        if key is not None:
            self._s.keyed[key] = ids
        return ids

    def opaque_ids(self, shape: Iterable[int], reason: str) -> Tensor:
        """One fresh, frozen id for every element of a value whose layout is unknown.

        A graph input or the output of an op without a rule keeps its size on every axis, and
        which axis holds its channels is for its consumers to say: a conv reads axis 1, a
        Linear the last axis. The id tensor is constant (every dim 1), so each consumer binds
        its own channel axis to this frozen id (kept whole) and makes its outputs' channels
        prunable, whatever the layout ((B, C), (B, T, C), (B, H, W, C) or (B, C, H, W)).
        """
        nd = len(tuple(shape))
        ids = self._s.new_ids(1, self.node.name).reshape((1,) * nd)
        self.freeze(ids, reason)
        return ids

    def frozen_ids(self, shape: Iterable[int], reason: str) -> Tensor:
        """Fresh frozen ids on axis 1 (the last axis of a 1-D value): a conv's channel axis.

        For a value of unknown layout use :meth:`opaque_ids`.
        """
        shape = tuple(shape)
        if not shape:
            return torch.tensor(FROZEN)
        axis = 1 if len(shape) > 1 else 0
        ids = at_axis(self._s.new_ids(shape[axis], self.node.name), axis, len(shape))
        self.freeze(ids, reason)
        return ids

    def union(self, a: Tensor, b: Tensor) -> None:
        """Couple two id tensors elementwise (with broadcasting)."""
        self._s.union(a, b)

    def freeze(self, ids: Tensor, reason: str) -> None:
        self._s.freeze(ids, Located(reason, self.node))

    def channel_ids(self, ids: Tensor, axis: int, size: int, what: str) -> Tensor:
        """1-D ids along ``axis``; freezes and returns fresh frozen ids if they vary elsewhere."""
        v = axis_ids(ids, axis, size)
        if v is None:
            self.freeze(ids, f"{what}: channel ids vary along more than one axis")
            v = self._s.new_ids(size, self.node.name)
            self.freeze(v, what)
        return v

    def bind(self, param: str, dim: int, ids1d: Tensor, role: str, target: str | None = None
             ) -> None:
        """Declare that entries of ``target.param`` along ``dim`` belong to channels ``ids1d``."""
        tgt = str(self.node.target) if target is None else target
        self._s.tie(tgt, param, dim, ids1d)
        key = (tgt, param, dim)
        prev = self._s.bound.get(key)
        if prev is not None:  # shared module called twice: its slices must agree
            self._s.union(prev, ids1d)
            return
        self._s.bound[key] = ids1d
        self._s.bindings.append(Binding(self.node.name, tgt, param, dim, ids1d, role))

    def consume(self, *arg_indices: int) -> None:
        """Mark inputs whose channels this op mixes with weights (the oracle zeroes them here)."""
        self._s.consumers.setdefault(self.node.name, []).extend(arg_indices)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return self._s.modules

    @property
    def residual(self) -> str:
        """The residual policy: ``"coupled"`` or ``"scatter"``."""
        return self._s.residual

    @property
    def attention(self) -> str:
        """What a reshape splitting a channel axis into ``(heads, dims)`` prunes: ``"dims"``
        (the same dims of every head) or ``"heads"`` (whole heads)."""
        return self._s.attention

    @property
    def equal_chunks(self) -> bool:
        """Do the pieces of a ``chunk`` stay equal (``compress(..., keep_class=True)``: the
        model's own ``x.chunk(2, 1)`` must still split the pruned tensor where the graph
        does)?"""
        return self._s.equal_chunks

    def scatter(self, branch_arg: int, branch_ids: Tensor, norm: str | None) -> None:
        """Record a residual add whose branch keeps its own channels (see ScatterAdd)."""
        self._s.scatters.append(ScatterAdd(self.node.name, branch_arg, branch_ids, norm))
        if norm is None:
            self.consume(branch_arg)
        else:
            self._s.consumers.setdefault(norm, []).append(0)

    def scatter_stream(self, arg: int, ids: Tensor, chain: tuple[str, ...]) -> None:
        """Record a residual add's stream operand that is a conv's own channels, reached through
        the per-channel ops ``chain`` (see ScatterAdd); the oracle zeroes the conv's removed
        channels where ``chain`` starts."""
        self._s.scatters.append(ScatterAdd(self.node.name, arg, ids, None, "stream", chain))
        if chain:
            self._s.consumers.setdefault(chain[0], []).append(0)
        else:
            self.consume(arg)

    def approximate(self, ids: Tensor, reason: str) -> None:
        """Pruning these channels changes this op's statistics (e.g. LayerNorm over C)."""
        self._s.approx.append((self.node.name, ids, f"{reason} at {self.node.name}"))
