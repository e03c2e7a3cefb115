"""Dependency analysis: propagate channel ids through the graph and group coupled channels.

Reads:  a GraphModule from :func:`fxprune.trace` and its example inputs
Writes: ``node.meta["fxprune.ids"]``, ``gm.meta["fxprune.groups"]``, ``gm.meta["fxprune.analysis"]``

The graph is run once on the example inputs (eval mode, no grad). Next to every value the pass
computes an *id tensor* (see :mod:`fxprune.ir.channels`) with the node's rule, which sees the node
through a :class:`~fxprune.ir.propctx.PropCtx`. Rules couple channels
(``ctx.union``), allocate new channel spaces (``ctx.new_ids``), bind parameter axes to channels
(``ctx.bind``) and freeze channels they cannot handle. Coupling is resolved afterwards by a
vectorized union-find, first over channels (units), then over channel spaces (groups); both are
near-linear in the number of channels.
"""

from __future__ import annotations

__all__ = ["analyze", "Analysis", "PropCtx", "Unsupported", "Binding", "ScatterAdd"]

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.attrs import attr_ids, settle_attrs
from fxprune.core.groups import resolve_tables
from fxprune.core.size_reads import SIZE_DEPS, arg_deps, scaled_count, size_deps, size_uses
from fxprune.core.trace import EXAMPLE_INPUTS
from fxprune.core.values import (
    has_tensor,
    repeats,
    same_ids,
    shape_of,
    structure,
    structure_apply,
    valid,
)
from fxprune.errors import FxPruneError, InputError, UnsupportedOpError, node_location, short_error
from fxprune.ir import meta
from fxprune.ir.channels import FIRST_ID, axis_ids
from fxprune.ir.hooks import opaque_reason
from fxprune.ir.inputs import check_example_inputs, check_flags, copied, resolve_ignore
from fxprune.ir.perf import gc_paused
from fxprune.ir.propctx import AnalysisState, Binding, PropCtx, ScatterAdd, Unsupported
from fxprune.ir.state import untouched
from fxprune.rules import op_name, rule_for

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


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
    attention: str = "dims"
    pins: dict[str, tuple[int | str, ...]] = field(default_factory=dict)  # see fxprune.counts

    def ids(self, node: fx.Node) -> Any:
        return meta.get_ids(node)


class _Propagator(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, state: AnalysisState, ignored: set[str], strict: bool,
                 progress: Progress | None):
        super().__init__(gm)
        self.s = state
        self.ignored = ignored
        self.strict = strict
        self.progress = progress
        self.n_nodes = len(gm.graph.nodes)
        self.i = 0
        self._pending: list[tuple[fx.Node, int, int]] = []  # see _count_couplings

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
        n.meta[meta.SHAPE] = shape_of(out)
        if isinstance(out, (int, float, bool, slice, torch.Size)) or (
                isinstance(out, tuple) and all(isinstance(v, int) for v in out)):
            n.meta[meta.VALUE] = out
        self.i += 1
        if self.progress is not None and self.i % 50 == 0:
            self.progress("analyze", self.i, self.n_nodes)
        return out

    def _ids_for(self, n: fx.Node, out: Any, args: tuple, kwargs: dict) -> Any:
        if n.op == "placeholder":
            return structure(out, lambda t: PropCtx(self.s, n, None, (), {}, t).opaque_ids(
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
            return attr_ids(self.s, n, out)
        mod = self.module_map[str(n.target)] if n.op == "call_module" else None
        ctx = PropCtx(self.s, n, mod, args, kwargs, out)
        if not has_tensor(out) and n.op != "call_module":
            # x.size(), x.shape and arithmetic on them: recomputed after pruning, but remember
            # which channel axes the value depends on
            n.meta[SIZE_DEPS] = size_deps(n)
            if n.target is torch._assert:  # it held on the original counts: check those
                pins, _sizes = size_uses(n, None)
                if pins:
                    self.s.pins[n.name] = pins
            return None
        if self.s.deferred:
            settle_attrs(self.s, n)
        rule = rule_for(n, self.module_map)
        self._check_size_args(ctx, n, rule)
        ids = None
        if rule is not None:
            try:
                ids = rule.propagate(ctx)
                if not valid(ids, out):
                    raise Unsupported(f"rule {type(rule).__name__} gave ids that do not fit")
            except Unsupported as e:
                ids = self._unsupported(ctx, n, str(e))
        else:
            ids = self._unsupported(ctx, n, None)
        if self._pending:
            self._apply_couplings(ctx, n, ids)
        if n.op == "call_module" and self._is_ignored(str(n.target)):
            structure_apply(ids, lambda t: ctx.freeze(t, f"ignored module '{n.target}'"))
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
        structure_apply(ids, lambda t: ctx.freeze(t, why))

    def _check_size_args(self, ctx: PropCtx, n: fx.Node, rule: Any) -> None:
        """Channel counts passed to a tensor op (see :mod:`fxprune.core.size_reads`).

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
        coupled = self._count_couplings(n, rule, {(s, a) for s, a in foreign})
        if coupled is not None:
            self._pending = coupled
            return
        self._freeze_foreign(ctx, n, foreign)

    def _freeze_foreign(self, ctx: PropCtx, n: fx.Node, foreign: list[tuple[str, int]]) -> None:
        by_name = {x.name: x for x in self.module.graph.nodes}
        for src, _axis in foreign:
            ctx.freeze(meta.get_ids(by_name[src]),
                       f"its size is read to shape another tensor at {n.name}")
        for ids in ctx.tensor_input_ids():
            ctx.freeze(ids, f"shaped with the size of another tensor at {n.name}")

    def _count_couplings(self, n: fx.Node, rule: Any, foreign: set[tuple[str, int]]
                         ) -> list[tuple[fx.Node, int, int, int]] | None:
        """A view/reshape whose size ``p`` is exactly another tensor's channel count
        (``y.view(B, N, C)`` with ``B, N, C = x.shape``, Swin's windows), or ``k`` times it
        (Swin's patch merging, ``view(B, -1, 4 * C)``): couple ``x``'s channels with the
        output's axis ``p`` (checked after the rule ran), so the counts stay equal after
        pruning. None: some foreign size is not such a count."""
        from fxprune.rules.shape import Reshape

        if not isinstance(rule, Reshape) or n.target not in ("view", "reshape", torch.reshape):
            return None
        sizes = list(n.args[1:])
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = list(sizes[0])
        found: list[tuple[fx.Node, int, int]] = []
        covered: set[tuple[str, int]] = set()
        for p, a in enumerate(sizes):
            deps = arg_deps(a)
            if not deps or not deps & foreign:
                continue
            direct = scaled_count(a)
            if direct is None:
                return None
            found.append((direct[0], direct[1], p, direct[2]))
            covered.add((direct[0].name, direct[1]))
        return found if covered == foreign else None

    def _apply_couplings(self, ctx: PropCtx, n: fx.Node, ids: Any) -> None:
        pending, self._pending = self._pending, []
        for src, axis, p, k in pending:
            src_ids = meta.get_ids(src)
            size = src_ids.shape[axis] if isinstance(src_ids, Tensor) else -1
            if p == axis and same_ids(ids, src_ids):
                continue  # the same channels on every axis (SDPA's output and its value)
            if k > 1:
                if not repeats(ids, p, src_ids, axis, size, k):
                    self._freeze_foreign(ctx, n, [(src.name, axis)])
                continue
            if (isinstance(ids, Tensor) and p < ids.dim() and ids.shape[p] == size
                    and axis_ids(ids, p, size) is not None
                    and axis_ids(src_ids, axis, size) is not None):
                a, b = axis_ids(src_ids, axis, size), axis_ids(ids, p, size)
                if not torch.equal(a.sort().values, b.sort().values):
                    # the same channels in another order (a channel shuffle) need nothing:
                    # their count stays equal whatever is pruned
                    ctx.union(a, b)
            else:
                self._freeze_foreign(ctx, n, [(src.name, axis)])

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
        return structure(ctx.out, lambda t: ctx.opaque_ids(t.shape, f"output of unsupported op "
                                                                     f"{name}"))


def _resolve(gm: fx.GraphModule, s: AnalysisState) -> Analysis:
    t = resolve_tables(s)
    return Analysis(gm=gm, **t, bindings=s.bindings, consumers=s.consumers, approx=s.approx,
                    unsupported=s.unsupported, scatters=s.scatters, residual=s.residual,
                    attention=s.attention,
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
    attention: str = "dims",
    progress: Progress | None = None,
    warn: bool = True,
    equal_chunks: bool = False,
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
        attention: ``"dims"`` (default: a reshape that splits a channel axis into
            ``(heads, dims)`` keeps every head and prunes the same dims in each) or
            ``"heads"`` (whole heads are pruned; see :mod:`fxprune.rules.attention`).
        progress: optional callback ``(stage, done, total)``.
        equal_chunks: the pieces of a ``chunk`` (and of a ``split`` by one int size) keep the
            same positions, so they stay equal and the model's own code, which splits into
            equal pieces, still runs on the pruned widths (``compress(..., keep_class=True)``).
        warn: warn about ops without a channel rule (``False``: only the analysis records
            them; unlike ``warnings.catch_warnings``, safe in threads).

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
    state = AnalysisState()
    if attention not in ("dims", "heads"):
        raise InputError(f"attention must be 'dims' or 'heads', got {attention!r}")
    state.residual = residual
    state.attention = attention
    state.equal_chunks = bool(equal_chunks)
    state.modules = dict(gm.named_modules())
    prop = _Propagator(gm, state, ignored, strict, progress)
    check_example_inputs(gm, inputs)
    try:
        # the run must not change the user's modules (gm shares them): flags, buffers, ties
        with untouched(gm, eval_mode=True), torch.no_grad():
            prop.run(*copied(inputs))  # a forward may write into its inputs
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
        if warn:
            warnings.warn(f"{n} op(s) have no channel rule; their channels are kept unpruned:\n"
                          f"{lines}\nHint: register a rule with @fxprune.register_rule(...) "
                          "to prune them.", stacklevel=2)
    analysis = _resolve(gm, state)
    gm.meta[meta.GROUPS] = analysis.groups
    gm.meta[meta.ANALYSIS] = analysis
    logger.info("analyzed %d nodes: %d channels in %d groups", len(gm.graph.nodes),
                state.n_ids - FIRST_ID, len(analysis.groups))
    return analysis


def _freeze_partial_ties(gm: fx.GraphModule, state: AnalysisState) -> None:
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
