"""Dependency analysis: propagate channel ids through the graph and group coupled channels.

Reads:  a GraphModule from :func:`fxprune.trace` and its example inputs
Writes: ``node.meta["fxprune.ids"]``, ``gm.meta["fxprune.groups"]``, ``gm.meta["fxprune.analysis"]``

The graph is run once on the example inputs (eval mode, no grad). Next to every value the pass
computes an *id tensor* (see :mod:`fxprune.channels`) with the node's rule. Rules couple channels
(``ctx.union``), allocate new channel spaces (``ctx.new_ids``), bind parameter axes to channels
(``ctx.bind``) and freeze channels they cannot handle. Coupling is resolved afterwards by a
vectorized union-find, first over channels (units), then over channel spaces (groups); both are
near-linear in the number of channels.
"""

from __future__ import annotations

__all__ = ["analyze", "Analysis", "PropCtx", "Unsupported"]

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from . import meta
from ._perf import gc_paused
from ._state import untouched
from .channels import FIRST_ID, FREE, FROZEN, at_axis, axis_ids, fit
from .counts import SIZE_DEPS, size_deps, size_uses
from .errors import (
    FxPruneError,
    InputError,
    Located,
    UnsupportedOpError,
    node_location,
    short_error,
)
from .groups import resolve_tables
from .hooks import opaque_reason
from .inputs import check_example_inputs, check_flags, resolve_ignore
from .rules import op_name, rule_for
from .trace import EXAMPLE_INPUTS

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


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
    (:func:`fxprune.rewrite.scatter_channels`), and the add's output is a new full-width stream.
    """

    node: str
    branch_arg: int
    branch_ids: Tensor
    norm: str | None
    role: str = "branch"
    chain: tuple[str, ...] = ()


@dataclass
class Analysis:
    """The result of :func:`analyze`: channel ids, coupling, groups and bindings."""

    gm: fx.GraphModule
    n_ids: int
    unit: Tensor  # [n_ids] unit root of each id (min id of its component)
    group_of: Tensor  # [n_ids] group index of each id (-1: reserved ids)
    unit_index: Tensor  # [n_ids] index of the id's unit inside its group
    frozen: Tensor  # [n_ids] bool
    groups: tuple[meta.Group, ...]
    bindings: list[Binding]
    consumers: dict[str, list[int]]  # node name -> positional input indices it consumes
    approx: list[tuple[str, Tensor, str]]  # (node, ids, reason)
    unsupported: dict[str, list[str]]  # op name -> locations
    space_owner: list[tuple[int, int, str]] = field(default_factory=list)  # (start, n, node)
    scatters: list[ScatterAdd] = field(default_factory=list)
    residual: str = "coupled"
    pins: dict[str, tuple[int | str, ...]] = field(default_factory=dict)  # see fxprune.counts

    def ids(self, node: fx.Node) -> Any:
        return meta.get_ids(node)


class _State:
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

    def __init__(self, state: _State, node: fx.Node, module: nn.Module | None, args: tuple,
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

    def frozen_ids(self, shape: Iterable[int], reason: str) -> Tensor:
        """Fresh ids for a value whose channels must not change (axis 1, or the last axis)."""
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


class _Propagator(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, state: _State, ignored: set[str], strict: bool,
                 progress: Progress | None):
        super().__init__(gm)
        self.s = state
        self.ignored = ignored
        self.strict = strict
        self.progress = progress
        self.n_nodes = len(gm.graph.nodes)
        self.i = 0

    def run_node(self, n: fx.Node) -> Any:
        # Interpreter.run_node, with the arguments fetched once for the op and its rule
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self.current_args = args
            if n.op == "call_module":
                out = self.module_map[str(n.target)](*args, **kwargs)
            else:
                out = getattr(self, n.op)(n.target, args, kwargs)
        ids = self._ids_for(n, out, args, kwargs)
        meta.set_ids(n, ids)
        n.meta[meta.SHAPE] = _shape_of(out)
        if isinstance(out, (int, float, bool, slice, torch.Size)) or (
                isinstance(out, tuple) and all(isinstance(v, int) for v in out)):
            n.meta[meta.VALUE] = out
        self.i += 1
        if self.progress is not None and self.i % 50 == 0:
            self.progress("analyze", self.i, self.n_nodes)
        return out

    def _ids_for(self, n: fx.Node, out: Any, args: tuple, kwargs: dict) -> Any:
        if n.op == "placeholder":
            return _structure(out, lambda t: PropCtx(self.s, n, None, (), {}, t).frozen_ids(
                t.shape, "graph input"))
        if n.op == "output":
            ctx = PropCtx(self.s, n, None, (), {}, None)
            pins, _sizes = size_uses(n, None)  # a count returned by forward is a number
            if pins:
                self.s.pins[n.name] = pins
            for ids in ctx.tensor_input_ids():
                ctx.freeze(ids, "reaches the graph output")
            return None
        if n.op == "get_attr":
            return _attr_ids(self.s, n, out)
        mod = self.module_map[str(n.target)] if n.op == "call_module" else None
        ctx = PropCtx(self.s, n, mod, args, kwargs, out)
        if not _has_tensor(out) and n.op != "call_module":
            # x.size(), x.shape and arithmetic on them: recomputed after pruning, but remember
            # which channel axes the value depends on
            n.meta[SIZE_DEPS] = size_deps(n)
            if n.target is torch._assert:  # it held on the original counts: check those
                pins, _sizes = size_uses(n, None)
                if pins:
                    self.s.pins[n.name] = pins
            return None
        rule = rule_for(n, self.module_map)
        self._check_size_args(ctx, n, rule)
        ids = None
        if rule is not None:
            try:
                ids = rule.propagate(ctx)
                if not _valid(ids, out):
                    raise Unsupported(f"rule {type(rule).__name__} gave ids that do not fit")
            except Unsupported as e:
                ids = self._unsupported(ctx, n, str(e))
        else:
            ids = self._unsupported(ctx, n, None)
        if n.op == "call_module" and self._is_ignored(str(n.target)):
            _structure_apply(ids, lambda t: ctx.freeze(t, f"ignored module '{n.target}'"))
        if n.op == "call_module" and rule is not None:
            self._check_opaque(ctx, n, ids)
        return ids

    def _check_opaque(self, ctx: PropCtx, n: fx.Node, ids: Any) -> None:
        """Keep the channels of a module with hooks or parametrizations fxprune cannot slice."""
        target = str(n.target)
        bound = {param for (t, param, _dim) in self.s.bound if t == target}
        why = opaque_reason(self.module_map[target], target, bound)
        if why is None:
            return
        for t in ctx.tensor_input_ids():
            ctx.freeze(t, why)
        _structure_apply(ids, lambda t: ctx.freeze(t, why))

    def _check_size_args(self, ctx: PropCtx, n: fx.Node, rule: Any) -> None:
        """Channel counts passed to a tensor op (see :mod:`fxprune.counts`).

        A count used as a number is pinned by the rewrite. A count read from one tensor and
        used as a size of another couples nothing we can track: keep both widths (e.g.
        ``y.reshape(B, N, C)`` with ``C = x.shape[-1]``).
        """
        pins, deps = size_uses(n, None if rule is None else rule.is_size_arg)
        if pins:
            self.s.pins[n.name] = pins
        if not deps:
            return
        inputs = {a.name for a in n.all_input_nodes if isinstance(meta.get_ids(a), Tensor)}
        foreign = [(src, axis) for src, axis in deps if src not in inputs]
        if not foreign:
            return
        by_name = {x.name: x for x in self.module.graph.nodes}
        for src, _axis in foreign:
            ctx.freeze(meta.get_ids(by_name[src]),
                       f"its size is read to shape another tensor at {n.name}")
        for ids in ctx.tensor_input_ids():
            ctx.freeze(ids, f"shaped with the size of another tensor at {n.name}")

    @property
    def module_map(self) -> dict[str, nn.Module]:
        mm = getattr(self, "_mm", None)
        if mm is None:
            mm = self._mm = dict(self.module.named_modules())
        return mm

    def _is_ignored(self, qualname: str) -> bool:
        return any(qualname == p or qualname.startswith(p + ".") for p in self.ignored)

    def _unsupported(self, ctx: PropCtx, n: fx.Node, why: str | None) -> Any:
        name = op_name(n, self.module_map)
        label = name if why is None else f"{name} ({why})"
        self.s.unsupported.setdefault(label, []).append(node_location(n))
        for ids in ctx.tensor_input_ids():
            ctx.freeze(ids, f"input of unsupported op {name}")
        return _structure(ctx.out, lambda t: ctx.frozen_ids(t.shape, f"output of unsupported op "
                                                                     f"{name}"))


def _shape_of(x: Any) -> Any:
    if isinstance(x, Tensor):
        return tuple(x.shape)
    if isinstance(x, (list, tuple)) and any(isinstance(v, Tensor) for v in x):
        return tuple(_shape_of(v) for v in x)
    return None


def _has_tensor(x: Any) -> bool:
    if isinstance(x, Tensor):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_tensor(v) for v in x)
    if isinstance(x, dict):
        return any(_has_tensor(v) for v in x.values())
    return False


def _structure(x: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, (list, tuple)):
        return tuple(_structure(v, fn) for v in x)
    return None


def _structure_apply(ids: Any, fn: Callable[[Tensor], None]) -> None:
    if isinstance(ids, Tensor):
        fn(ids)
    elif isinstance(ids, (list, tuple)):
        for v in ids:
            _structure_apply(v, fn)


def _valid(ids: Any, out: Any) -> bool:
    if isinstance(out, Tensor):
        return isinstance(ids, Tensor) and fit(ids, out.shape) is not None
    if isinstance(out, (list, tuple)):
        return (isinstance(ids, tuple) and len(ids) == len(out)
                and all(_valid(i, o) for i, o in zip(ids, out)))
    return ids is None


def _attr_ids(s: _State, n: fx.Node, value: Any) -> Any:
    """A tensor attribute with one non-trivial axis (a layer scale) opens a channel space.

    Attributes with several non-trivial axes (positional embeddings, weights used by traced
    functional code) are frozen: coupling a channel to them keeps it.
    """
    if not isinstance(value, Tensor):
        return None
    big = [d for d, size in enumerate(value.shape) if size > 1]
    if not big:
        return torch.full((1,) * value.dim(), FREE, dtype=torch.long)
    if len(big) > 1:
        return torch.full((1,) * value.dim(), FROZEN, dtype=torch.long)
    ctx = PropCtx(s, n, None, (), {}, value)
    axis = big[0]
    ids1d = ctx.new_ids(value.shape[axis], key=("attr", str(n.target), axis))
    ctx.bind("", axis, ids1d, "channel", target=str(n.target))
    return at_axis(ids1d, axis, value.dim())


def _resolve(gm: fx.GraphModule, s: _State) -> Analysis:
    t = resolve_tables(s)
    return Analysis(gm=gm, **t, bindings=s.bindings, consumers=s.consumers, approx=s.approx,
                    unsupported=s.unsupported, scatters=s.scatters, residual=s.residual,
                    pins=s.pins,
                    space_owner=list(zip(s.space_start, s.space_size, s.space_node)))


# --- entry point ------------------------------------------------------------------------------

@gc_paused
def analyze(
    gm: fx.GraphModule,
    *,
    ignore: Any = None,
    strict: bool = False,
    residual: str = "coupled",
    progress: Progress | None = None,
) -> Analysis:
    """Propagate channel ids through ``gm`` and partition all channels into coupled groups.

    Args:
        gm: a GraphModule from :func:`fxprune.trace`.
        ignore: modules whose output channels are kept (instances, names/globs, or types).
            Channels reaching the graph output are always kept.
        strict: raise :class:`UnsupportedOpError` listing every op without a channel rule
            instead of freezing the affected channels with a warning.
        residual: ``"coupled"`` (one keep-set per residual group: the stream narrows) or
            ``"scatter"`` (residual-output convs keep their own channels and are added into a
            full-width stream with ``index_add``; the SFP/FPGM convention).
        progress: optional callback ``(stage, done, total)``.

    Returns:
        An :class:`Analysis`; its groups are also stored in ``gm.meta["fxprune.groups"]``.
    """
    inputs = gm.meta.get(EXAMPLE_INPUTS)
    if inputs is None:
        raise InputError("analyze() needs a GraphModule made by fxprune.trace (no example inputs)")
    check_flags(strict=strict)
    ignored = resolve_ignore(gm, ignore)
    if residual not in ("coupled", "scatter"):
        raise InputError(f"residual must be 'coupled' or 'scatter', got {residual!r}")
    state = _State()
    state.residual = residual
    state.modules = dict(gm.named_modules())
    prop = _Propagator(gm, state, ignored, strict, progress)
    check_example_inputs(gm, inputs)
    try:
        # the run must not change the user's modules (gm shares them): flags, buffers, ties
        with untouched(gm, eval_mode=True), torch.no_grad():
            prop.run(*inputs)
    except FxPruneError:
        raise
    except Exception as e:
        node = _current_node(prop)
        why = _input_error(prop)
        shapes = ", ".join(str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
                           for x in inputs)
        raise InputError(
            f"running the model on the example inputs failed at {node}: "
            f"{why or short_error(e)}\n"
            f"Hint: check that example_inputs have the shape, dtype and device the model expects "
            f"(given: {shapes}; e.g. example_inputs=torch.randn(1, 3, 224, 224))."
        ) from e
    _freeze_partial_ties(gm, state)
    if state.unsupported:
        lines = "\n".join(f"  {op}  at {', '.join(locs[:3])}" + (" ..." if len(locs) > 3 else "")
                          for op, locs in sorted(state.unsupported.items()))
        n = len(state.unsupported)
        if strict:
            raise UnsupportedOpError(
                f"{n} op(s) have no channel rule:\n{lines}\nHint: register a rule with "
                "@fxprune.register_rule(...), or pass strict=False to keep their channels "
                "unpruned.", sorted(state.unsupported))
        warnings.warn(f"{n} op(s) have no channel rule; their channels are kept unpruned:\n"
                      f"{lines}\nHint: register a rule with @fxprune.register_rule(...) to "
                      "prune them.", stacklevel=2)
    analysis = _resolve(gm, state)
    gm.meta[meta.GROUPS] = analysis.groups
    gm.meta[meta.ANALYSIS] = analysis
    logger.info("analyzed %d nodes: %d channels in %d groups", len(gm.graph.nodes),
                state.n_ids - FIRST_ID, len(analysis.groups))
    return analysis


def _freeze_partial_ties(gm: fx.GraphModule, state: _State) -> None:
    """A tensor shared by several users of the graph can be cut only if every user binds the
    cut axis (conv and conv, norm and norm). When one user cannot slice it (a module without a
    rule, a multi-axis attribute), the tensor's bound channels are kept."""
    users: dict[int, list[str]] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            mod = state.modules.get(str(n.target))
            if mod is None:
                continue
            named = [*mod.named_parameters(remove_duplicate=False),
                     *mod.named_buffers(remove_duplicate=False)]
            for rel, t in named:
                users.setdefault(id(t), []).append(f"{n.target}.{rel}")
        elif n.op == "get_attr":
            t = state.tensor_of(str(n.target), "")
            if t is not None:
                users.setdefault(id(t), []).append(str(n.target))
    shared = {k: sorted(set(v)) for k, v in users.items() if len(set(v)) > 1}
    if not shared:
        return
    bound = {(f"{b.target}.{b.param}" if b.param else b.target, b.dim) for b in state.bindings}
    for b in state.bindings:
        t = state.tensor_of(b.target, b.param)
        paths = shared.get(id(t)) if t is not None else None
        missing = [p for p in paths or () if (p, b.dim) not in bound]
        if missing:
            state.freeze(b.ids, f"tensor shared with '{missing[0]}', which cannot slice it")


def _input_error(prop: _Propagator) -> str | None:
    """The failing op's own explanation of why it rejects its inputs (see Rule.input_error)."""
    nodes = list(prop.module.graph.nodes)
    if prop.i >= len(nodes):
        return None
    n = nodes[prop.i]
    rule = rule_for(n, prop.module_map)
    if rule is None:
        return None
    mod = prop.module_map.get(str(n.target)) if n.op == "call_module" else None
    try:
        return rule.input_error(mod, getattr(prop, "current_args", ()))
    except Exception:  # noqa: BLE001 - the original error is reported instead
        return None


def _current_node(prop: _Propagator) -> str:
    nodes = list(prop.module.graph.nodes)
    if prop.i < len(nodes):
        return node_location(nodes[prop.i])
    return "<end of graph>"
