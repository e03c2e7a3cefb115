"""Rewrite: emit a new, smaller, dense GraphModule from an analyzed graph and its keep-sets.

Reads:  ``gm.meta["fxprune.analysis"]``, ``gm.meta["fxprune.keepsets"]``
Writes: a NEW GraphModule (the input graph, its modules and the user's model are untouched);
        ``pruned.meta["fxprune.manifest"]``: ``{param path: {dim: kept indices}}``

Every bound parameter axis is sliced to its kept channels; each leaf module is deep-copied
(sliced tensors pre-seeded in the memo, so full-size weights are never copied) and its rule
fixes its attributes. Rules patch literal arguments of function nodes (split sizes, slice
bounds, reshape sizes). Postcondition: the new module runs on the example inputs and its
outputs have the shapes the analysis predicts (``check="nodes"``: every node has; the test
harness :func:`fxprune.testing.prune_and_check` uses that); a failure is localized by a
node-by-node run and raised as :class:`RewriteError` naming the node.
"""

from __future__ import annotations

__all__ = ["rewrite", "RewriteCtx", "slices_of"]

import copy
import operator
from collections import OrderedDict, defaultdict
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor
from torch.utils._pytree import tree_flatten

from fxprune.core.analyze import Analysis
from fxprune.core.select import kept_mask
from fxprune.core.size_reads import pin_args
from fxprune.core.trace import EXAMPLE_INPUTS
from fxprune.errors import FxPruneError, InputError, RewriteError, node_location, short_error
from fxprune.ir import meta
from fxprune.ir.hooks import normalized_weight, restore_weight_norm, weight_norms
from fxprune.ir.inputs import copied
from fxprune.ir.perf import gc_paused
from fxprune.ir.state import untouched
from fxprune.ir.unused import UNUSED, carry_unused
from fxprune.rules import rule_for
from fxprune.rules.rewritectx import RewriteCtx

VALUE = meta.VALUE
RESIDUAL = meta.RESIDUAL


def slices_of(analysis: Analysis, kept: Tensor) -> dict[tuple[str, str], list[tuple[int, Tensor]]]:
    """Per (target, param): the (dim, kept indices) to slice, for axes that lose entries."""
    out: dict[tuple[str, str], list[tuple[int, Tensor]]] = defaultdict(list)
    for b in analysis.bindings:
        k = kept[b.ids]
        if bool(k.all()):
            continue
        out[(b.target, b.param)].append((b.dim, torch.nonzero(k).flatten()))
    return out


def _slice(t: Tensor, cuts: list[tuple[int, Tensor]]) -> Tensor:
    new = t.detach()
    for dim, idx in cuts:
        new = new.index_select(dim, idx.to(new.device))  # a new tensor: shares nothing with t
    if not cuts:
        new = new.clone()
    if isinstance(t, nn.Parameter):
        return nn.Parameter(new, requires_grad=t.requires_grad)
    return new


def _clone_module(mod: nn.Module, cuts: dict[str, list[tuple[int, Tensor]]],
                  memo: dict[int, Any] | None = None) -> nn.Module:
    """Deep-copy ``mod`` with the tensors in ``cuts`` sliced.

    One ``memo`` shared by all the modules of a rewrite keeps what the original shares
    shared: a Parameter tied between two modules becomes ONE sliced Parameter in the result
    (the analysis couples the axes of every use of a tensor, so all uses cut it alike).
    """
    memo = {} if memo is None else memo
    normed = weight_norms(mod)
    for name, c in cuts.items():
        t = _get(mod, name) if name not in normed else None
        if isinstance(t, Tensor):
            _seed(memo, t, c, name)
    new = _deepcopy(mod, memo)
    for name, c in cuts.items():
        if name in normed:  # re-derive g and v from the sliced weight (fxprune.hooks)
            restore_weight_norm(new, mod, name, _slice(normalized_weight(mod, name), c))
    return new


_CUTS = "fxprune.cuts"  # memo key: {id(tensor): its cuts}, to check that tied uses agree


def _seed(memo: dict[Any, Any], t: Tensor, cuts: list[tuple[int, Tensor]], name: str) -> None:
    seen = memo.setdefault(_CUTS, {})
    prev = seen.get(id(t))
    if prev is not None:
        if [(d, i.tolist()) for d, i in prev] != [(d, i.tolist()) for d, i in cuts]:
            raise RewriteError(
                f"the tensor '{name}' is shared by several modules that cut it differently. This "
                "is a bug in fxprune (tied tensors are coupled); please report it with the model.")
        return
    seen[id(t)] = cuts
    memo[id(t)] = _slice(t, cuts)


_ATOMIC = frozenset({int, float, bool, str, bytes, type(None), torch.dtype, torch.device,
                     torch.memory_format, slice})


def _plain_module(cls: type) -> bool:
    """A module class that deep-copies as its ``__dict__`` (no custom copy/pickle protocol)."""
    plain = _PLAIN.get(cls)
    if plain is None:
        plain = _PLAIN[cls] = (
            getattr(cls, "__deepcopy__", None) is None
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and getattr(cls, "__getstate__", object.__getstate__) in (
                object.__getstate__, getattr(nn.Module, "__getstate__", object.__getstate__))
            # torch.nn's own __setstate__ overrides only fill in attributes of older pickles
            and cls.__setstate__.__module__.startswith("torch.nn.modules."))
    return plain


_PLAIN: dict[type, bool] = {}


def _deepcopy(obj: Any, memo: dict[int, Any]) -> Any:
    """``copy.deepcopy`` with a fast path for plain modules and their attribute containers.

    Same result as ``copy.deepcopy`` (tensors and unknown objects go through it, with the same
    memo), about 4x faster on typical CNN modules: the generic protocol spends most of its
    time reducing and rebuilding each module's dicts of hooks and attributes.
    """
    cls = type(obj)
    if cls in _ATOMIC:
        return obj
    found = memo.get(id(obj))
    if found is not None:
        return found
    if cls in (dict, OrderedDict):
        new_d = cls()
        memo[id(obj)] = new_d
        for k, v in obj.items():  # keys: str (attribute, parameter and module names) or ints
            new_d[k if type(k) in _ATOMIC else _deepcopy(k, memo)] = (
                v if type(v) in _ATOMIC else _deepcopy(v, memo))
        return new_d
    if isinstance(obj, nn.Module) and _plain_module(cls):
        new = cls.__new__(cls)
        memo[id(obj)] = new
        memo.setdefault(id(memo), []).append(obj)  # keep obj alive, as copy.deepcopy does
        state = {k: v if type(v) in _ATOMIC else _deepcopy(v, memo)
                 for k, v in obj.__dict__.items()}
        object.__setattr__(new, "__dict__", state)
        return new
    if cls is tuple and all(type(v) in _ATOMIC for v in obj):
        return obj
    return copy.deepcopy(obj, memo)


def _get(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


@gc_paused
def rewrite(gm: fx.GraphModule, *, check: bool | str = True) -> fx.GraphModule:
    """Build the pruned GraphModule (a new object; ``gm`` and its modules are not modified).

    Args:
        gm: a GraphModule that went through :func:`analyze` and :func:`select`.
        check: ``True`` (default) runs the pruned module on the example inputs and checks that
            it runs and that its outputs have the predicted shapes (one forward pass of the
            smaller model; on failure, a node-by-node run names the node); ``"nodes"`` checks
            every node's shape (slower; the test suite does); ``False`` skips the check.
    """
    if check not in (True, False, "nodes"):
        raise InputError(f"check must be True, False or 'nodes', got {check!r}")
    analysis: Analysis | None = gm.meta.get(meta.ANALYSIS)
    keep = gm.meta.get(meta.KEEPSETS)
    if analysis is None or keep is None:
        raise InputError("rewrite() needs a GraphModule that went through analyze() and select()")
    kept = kept_mask(analysis, keep)
    cuts = slices_of(analysis, kept)
    by_target: dict[str, dict[str, list[tuple[int, Tensor]]]] = defaultdict(dict)
    for (target, param), c in cuts.items():
        by_target[target][param] = c

    modules = dict(gm.named_modules())
    memo: dict[Any, Any] = {}  # shared by every copy: ties and shared tensors stay shared
    graph, old_of, root = _copy_graph(gm, modules, by_target, memo)
    ctx = RewriteCtx(old_of, kept)
    for new in list(graph.nodes):
        if new.op in ("call_function", "call_method", "call_module"):
            old = old_of[new]
            rule = rule_for(old, modules)
            if rule is not None and isinstance(meta.get_ids(old), (Tensor, tuple)):
                rule.rewrite_node(new, ctx)
    pin_args(graph, analysis.pins, old_of, kept)
    new_of = {old.name: new for new, old in old_of.items()}
    for k, sc in enumerate(analysis.scatters):
        if sc.role == "stream":
            _emit_stream_scatter(graph, root, gm, sc, k, kept, new_of, old_of)
        else:
            _emit_scatter(graph, root, gm, sc, k, kept, new_of, old_of)
    graph.lint()
    pruned = fx.GraphModule(root, graph, class_name=f"Pruned{type(gm).__name__}")
    carry_unused(gm, pruned, lambda t: _deepcopy(t, memo), names=gm.meta.get(UNUSED, ()))
    pruned.meta[RESIDUAL] = analysis.residual
    pruned.meta[meta.ATTENTION] = analysis.attention
    _copy_training_flags(gm, pruned)
    pruned.meta[EXAMPLE_INPUTS] = gm.meta.get(EXAMPLE_INPUTS)
    pruned.meta[meta.MANIFEST] = {
        (f"{t}.{p}" if p else t): {d: idx.tolist() for d, idx in c}
        for (t, p), c in cuts.items()}
    pruned.meta[meta.MANIFEST_WIDTHS] = _widths(gm, cuts)
    if check:
        check_shapes(pruned, old_of, ctx, nodes=check == "nodes")
    return pruned


def _widths(gm: fx.GraphModule, cuts: dict[tuple[str, str], Any]) -> dict[str, dict[int, int]]:
    """The original width of every manifest entry (a weight under the old weight_norm hook:
    of its direction ``weight_v``); saved files record them so that a load can check the
    manifest's indices without the original."""
    out: dict[str, dict[int, int]] = {}
    for (t, p), c in cuts.items():
        path = f"{t}.{p}" if p else t
        for name in (path, f"{path}_v"):
            try:
                value = _get(gm, name)
            except AttributeError:
                continue
            if isinstance(value, Tensor):
                out[path] = {d: int(value.shape[d]) for d, _idx in c if d < value.dim()}
                break
    return out


def _copy_graph(gm: fx.GraphModule, modules: dict[str, nn.Module],
                by_target: dict[str, dict[str, list[tuple[int, Tensor]]]], memo: dict[Any, Any]
                ) -> tuple[fx.Graph, dict[fx.Node, fx.Node], dict[str, Any]]:
    """Copy every node of ``gm`` into a new graph and every module/attribute it uses, with
    the tensors in ``by_target`` sliced; returns the graph, new node -> old node, and the
    new root's attributes."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    old_of: dict[fx.Node, fx.Node] = {}
    root: dict[str, Any] = {}
    for node in gm.graph.nodes:
        new = graph.node_copy(node, lambda n: env[n])
        env[node] = new
        old_of[new] = node
        new.meta = {k: v for k, v in node.meta.items() if k not in (meta.IDS,)}
        if node.op == "call_module" and node.target not in root:
            old_mod = modules[str(node.target)]
            new_mod = _clone_module(old_mod, by_target.get(str(node.target), {}), memo)
            rule = rule_for(node, modules)
            if rule is not None and str(node.target) in by_target:
                rule.update_module(new_mod, old_mod)
            root[str(node.target)] = new_mod
        elif node.op == "get_attr" and node.target not in root:
            value = _get(gm, str(node.target))
            c = by_target.get(str(node.target), {}).get("")
            if c and isinstance(value, Tensor):
                _seed(memo, value, c, str(node.target))
            root[str(node.target)] = _deepcopy(value, memo)
    return graph, old_of, root


def _copy_training_flags(gm: fx.GraphModule, pruned: fx.GraphModule) -> None:
    """Every module of the result gets the training flag of the module of the same name in
    ``gm`` (whose containers :func:`fxprune.trace` set from the user's model; its leaf modules
    are the user's own), not one flag for all."""
    flags = {name: m.training for name, m in gm.named_modules()}
    for name, m in pruned.named_modules():
        if name in flags:
            m.training = flags[name]


def _emit_scatter(graph: fx.Graph, root: dict[str, Any], gm: fx.GraphModule, sc: Any, k: int,
                  kept: Tensor, new_of: dict[str, fx.Node], old_of: dict[fx.Node, fx.Node]
                  ) -> None:
    """Replace ``stream + branch`` by ``index_add(stream + const, 1, kept, branch)``."""
    keep = kept[sc.branch_ids]
    if bool(keep.all()):
        return
    add = new_of[sc.node]
    stream, branch = add.args[1 - sc.branch_arg], add.args[sc.branch_arg]
    nd = len(old_of[add].meta[meta.SHAPE])
    ref = next(iter(gm.parameters()), torch.zeros(()))
    idx_name, const_name = f"fxprune_scatter_{k}_index", f"fxprune_scatter_{k}_const"
    root[idx_name] = torch.nonzero(keep).flatten().to(ref.device)
    with graph.inserting_before(add):
        if sc.norm is not None:
            bn = gm.get_submodule(str(new_of[sc.norm].target))
            with torch.no_grad():
                const = bn.bias - bn.weight * bn.running_mean / torch.sqrt(
                    bn.running_var + bn.eps) if bn.affine else -bn.running_mean / torch.sqrt(
                    bn.running_var + bn.eps)
                const = torch.where(keep.to(const.device), torch.zeros_like(const), const)
            root[const_name] = const.detach().reshape((1, -1) + (1,) * (nd - 2)).clone()
            stream = graph.call_function(operator.add, (stream, graph.get_attr(const_name)))
        out = graph.call_function(torch.index_add, (stream, 1, graph.get_attr(idx_name), branch))
    add.replace_all_uses_with(out)
    old_of[out] = old_of.pop(add)
    graph.erase_node(add)


def scatter_channels(x: Tensor, index: Tensor, const: Tensor) -> Tensor:
    """``x``'s channels placed at ``index`` of a full-width tensor holding ``const`` elsewhere
    (``residual="scatter"``: a pruned conv's output joining the full-width stream)."""
    full = const.expand((x.shape[0], const.shape[1]) + tuple(x.shape[2:])).contiguous()
    return torch.index_add(full, 1, index, x)


def _chain_const(gm: fx.GraphModule, chain: tuple[str, ...], keep: Tensor, nd: int) -> Tensor:
    """What the per-channel ops ``chain`` make of zero channels: one value per channel, zero at
    the kept ones (BatchNorm with its running statistics, activations, max-pooling)."""
    from fxprune.rules.elementwise import CHAIN_POOLS

    nodes = {n.name: n for n in gm.graph.nodes}
    ref = next(iter(gm.parameters()), torch.zeros(()))
    z = torch.zeros((1, keep.numel()) + (1,) * (nd - 2), dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for name in chain:
            n = nodes[name]
            if n.op == "call_module":
                m = gm.get_submodule(str(n.target))
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    shape = (1, -1) + (1,) * (nd - 2)
                    z = (z - m.running_mean.reshape(shape)) / torch.sqrt(
                        m.running_var.reshape(shape) + m.eps)
                    if m.affine:
                        z = z * m.weight.reshape(shape) + m.bias.reshape(shape)
                elif not isinstance(m, CHAIN_POOLS):  # max of a constant is the constant
                    z = m(z.clone())
            elif n.op == "call_function":
                z = n.target(z.clone())
            else:
                z = z.relu()
    keep = keep.to(z.device).reshape(z.shape)
    return torch.where(keep, torch.zeros_like(z), z).detach().clone()


def _emit_stream_scatter(graph: fx.Graph, root: dict[str, Any], gm: fx.GraphModule, sc: Any,
                         k: int, kept: Tensor, new_of: dict[str, fx.Node],
                         old_of: dict[fx.Node, fx.Node]) -> None:
    """Replace the add's operand (a pruned conv's channels) by its full-width scatter."""
    keep = kept[sc.branch_ids]
    if bool(keep.all()):
        return
    add = new_of[sc.node]
    nd = len(old_of[add].meta[meta.SHAPE])
    ref = next(iter(gm.parameters()), torch.zeros(()))
    idx_name, const_name = f"fxprune_scatter_{k}_index", f"fxprune_scatter_{k}_const"
    root[idx_name] = torch.nonzero(keep).flatten().to(ref.device)
    root[const_name] = _chain_const(gm, sc.chain, keep, nd)
    with graph.inserting_before(add):
        full = graph.call_function(scatter_channels, (add.args[sc.branch_arg],
                                                      graph.get_attr(idx_name),
                                                      graph.get_attr(const_name)))
    args = list(add.args)
    args[sc.branch_arg] = full
    add.args = tuple(args)


class _ShapeCheck(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, old_of: dict[fx.Node, fx.Node], ctx: RewriteCtx):
        super().__init__(gm)
        self.old_of = old_of
        self.ctx = ctx
        self.current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        out = super().run_node(n)
        old = self.old_of.get(n)
        if (isinstance(out, Tensor) and old is not None and old.op != "get_attr"
                and isinstance(meta.get_ids(old), Tensor)):  # attrs follow their bindings
            want = self.ctx.new_shape(old)
            if tuple(out.shape) != tuple(want):
                raise RewriteError(
                    f"pruned {node_location(old)} has shape {tuple(out.shape)}, expected "
                    f"{tuple(want)} (original {self.ctx.old_shape(old)}). This is a bug in the "
                    "rule of this op; please report it with the model. Hint: pass "
                    f"ignore=[...] for the module around it to keep its channels meanwhile.")
        return out


def _output_ok(pruned: fx.GraphModule, old_of: dict[fx.Node, fx.Node], ctx: RewriteCtx,
               inputs: tuple[Any, ...]) -> bool:
    """Run the compiled module once; True when it runs and every output has its shape."""
    try:
        with torch.no_grad():
            out = pruned(*copied(inputs))
    except Exception:  # noqa: BLE001 - the node-by-node run reports where and why
        return False
    out_node = next(n for n in reversed(pruned.graph.nodes) if n.op == "output")
    nodes, _ = tree_flatten(out_node.args[0])
    values, _ = tree_flatten(out)
    if len(nodes) != len(values):
        return False
    for n, v in zip(nodes, values):
        old = old_of.get(n) if isinstance(n, fx.Node) else None
        if (isinstance(v, Tensor) and old is not None and old.op != "get_attr"
                and isinstance(meta.get_ids(old), Tensor)
                and tuple(v.shape) != tuple(ctx.new_shape(old))):
            return False
    return True


def check_shapes(pruned: fx.GraphModule, old_of: dict[fx.Node, fx.Node], ctx: RewriteCtx,
                 nodes: bool = False) -> None:
    """Postcondition: the pruned module runs and has the shapes the analysis predicts.

    ``nodes=False`` (what :func:`rewrite` does by default) runs the compiled module and checks
    its outputs, falling back to the node-by-node check only to name the failing node;
    ``nodes=True`` checks every node's shape (the test suite does).
    """
    inputs = pruned.meta.get(EXAMPLE_INPUTS)
    if inputs is None:
        return
    old_by_new = {n: old_of[n] for n in pruned.graph.nodes if n in old_of}
    if not nodes:
        with untouched(pruned, eval_mode=True):  # the check leaves the result as built
            if _output_ok(pruned, old_by_new, ctx, inputs):
                return
    checker = _ShapeCheck(pruned, old_by_new, ctx)
    try:
        with untouched(pruned, eval_mode=True), torch.no_grad():
            checker.run(*copied(inputs))
    except FxPruneError:
        raise
    except Exception as e:
        where = node_location(checker.current) if checker.current is not None else "?"
        raise RewriteError(
            f"the pruned model fails at {where}: {short_error(e)}. This is a bug in the "
            "rule of this op or of one before it; please report it with the model.") from e
    if not nodes:  # every node had its shape, yet the compiled module failed or differed
        raise RewriteError(
            "the pruned model's output does not have the shapes the analysis predicts, although "
            "every node does when run one by one. This is a bug in fxprune; please report it "
            "with the model.")
