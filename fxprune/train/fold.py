"""Finalize: the compact GraphModule of a soft-pruned model, exact against the masked model.

Reads:  the analysis (whose graph shares the user's, now masked, modules) and a selection
Writes: a NEW GraphModule (via :func:`fxprune.rewrite`), plus one ``fxprune_fold_<k>`` buffer
        and one ``add`` per consumer that a pruned channel still reaches with a non-zero value

The rewrite removes pruned channels: it computes what the model computes with every pruned
channel zeroed at the ops that consume it (convs and linears; the oracle of
:mod:`fxprune.core.verify`). A soft-pruned model differs from that only where a pruned channel
is not
zero at its consumer. With ``bn="keep"`` that is the BatchNorm constant ``relu(BN(0))`` of a
pruned filter (SFP/FPGM leave BN alone); with ``bn="zero"`` it only happens after an op with
``f(0) != 0`` (a sigmoid, a ``+ 3``) on the pruned channel.

Such a value does not depend on the input (it comes from masked producers and per-channel
constants). A consumer is affine in the consumed input, so the pruned channels add
``op(x_pruned) - op(0)`` to its output: that tensor is measured on the masked model and added
after the compact consumer. Through a zero-padded conv a constant channel is **not** a
constant: the taps that fall on the padding are missing at the borders (algorithms.md §9.2).
The added tensor is therefore the full ``[1, C, H, W]`` map where it varies spatially (exact at
the resolution of the example inputs, the training resolution; another resolution then fails
with a shape error) and a per-channel ``[1, C, 1, 1]`` constant where it does not (any
resolution). The result is checked against the masked model on the example inputs and on a
random input of the same shape; any difference raises :class:`VerificationError`.
"""

from __future__ import annotations

__all__ = ["compile_compact", "Fold"]

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.core.rewrite import rewrite
from fxprune.core.select import kept_mask, set_keepsets
from fxprune.core.verify import align_ids, compare
from fxprune.errors import FxPruneError, VerificationError
from fxprune.ir import meta

FOLD_META = "fxprune.folds"  # compact gm.meta: [(consumer node, buffer name, shape)]


@dataclass(frozen=True)
class Fold:
    node: str
    value: Tensor  # what the pruned channels add to the consumer's full-width output


class _Capture(fx.Interpreter):
    """Run the (masked) graph; at every consumer, measure what its pruned inputs contribute."""

    def __init__(self, analysis: Analysis, kept: Tensor):
        super().__init__(analysis.gm)
        self.analysis = analysis
        self.kept = kept
        self.folds: dict[str, Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        idx = self.analysis.consumers.get(n.name)
        if idx:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self._measure(n, list(args), kwargs, idx)
        return super().run_node(n)

    def _measure(self, n: fx.Node, args: list[Any], kwargs: dict, idx: list[int]) -> None:
        pruned_args, zero_args = list(args), list(args)
        found = False
        for i in idx:
            src = n.args[i] if i < len(n.args) else None
            ids = meta.get_ids(src) if isinstance(src, fx.Node) else None
            x = args[i]
            if not (isinstance(ids, Tensor) and isinstance(x, Tensor)):
                continue
            m = self.kept[align_ids(ids, x.dim())]
            x_p = x * (~m).to(device=x.device, dtype=x.dtype)
            if bool(x_p.any()):
                found = True
            pruned_args[i], zero_args[i] = x_p, torch.zeros_like(x)
        if not found:
            return
        op = getattr(self, n.op)
        value = op(n.target, tuple(pruned_args), kwargs) - op(n.target, tuple(zero_args), kwargs)
        if isinstance(value, Tensor):
            self.folds[n.name] = value


def _eval_run(module: nn.Module, fn: Any) -> Any:
    flags = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            return fn()
    finally:
        for m, t in flags.items():
            m.training = t


def _probe(inputs: tuple, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
                 if isinstance(x, Tensor) and x.is_floating_point() else x for x in inputs)


def _squeeze_constant(v: Tensor, rtol: float = 1e-6) -> Tensor:
    """Shrink the batch axis and every spatial axis along which ``v`` is (nearly) constant."""
    v = v[:1]
    scale = float(v.abs().max()) if v.numel() else 0.0
    for d in range(2, v.dim()):
        if v.shape[d] > 1:
            first = v.narrow(d, 0, 1)
            if float((v - first).abs().max()) <= rtol * max(scale, 1e-30):
                v = first
    return v.contiguous()


def _measure(analysis: Analysis, kept: Tensor, inputs: tuple) -> dict[str, Tensor]:
    cap = _Capture(analysis, kept)
    _eval_run(analysis.gm, lambda: cap.run(*inputs))
    return cap.folds


def _emit(pruned: fx.GraphModule, old: fx.GraphModule, folds: dict[str, Tensor]) -> list:
    nodes = {n.name: n for n in pruned.graph.nodes}
    old_nodes = {n.name: n for n in old.graph.nodes}
    done = []
    for k, (name, value) in enumerate(sorted(folds.items())):
        node = nodes.get(name)
        if node is None:
            raise FxPruneError(f"cannot fold the pruned channels' constant into {name}: the "
                               "rewrite replaced that node. This is a bug in fxprune; use "
                               "bn='zero' meanwhile.")
        keep = old_nodes[name].meta.get(meta.KEEP)
        for axis, _size, pos in keep.axes if keep is not None else ():
            if axis < value.dim() and value.shape[axis] > 1:
                value = value.index_select(axis, torch.tensor(pos, device=value.device))
        buf = f"fxprune_fold_{k}"
        pruned.register_buffer(buf, value.detach().clone())
        with pruned.graph.inserting_after(node):
            attr = pruned.graph.get_attr(buf)
        with pruned.graph.inserting_after(attr):
            add = pruned.graph.call_function(operator.add, (node, attr))
        node.replace_all_uses_with(add, delete_user_cb=lambda u, a=add: u is not a)
        done.append((name, buf, tuple(value.shape)))
    pruned.graph.lint()
    pruned.recompile()
    return done


def compile_compact(model: nn.Module, analysis: Analysis, keep: dict[int, meta.KeepSet],
                    inputs: tuple, *, seed: int = 0, rtol: float = 1e-4) -> fx.GraphModule:
    """Rewrite ``analysis.gm`` (sharing ``model``'s masked modules) to the compact model for
    ``keep``, fold the pruned channels' constants, and check it against ``model`` (eval)."""
    set_keepsets(analysis, keep)
    kept = kept_mask(analysis, keep)
    pruned = rewrite(analysis.gm)
    probe = _probe(inputs, seed)
    folds = _measure(analysis, kept, inputs)
    again = _measure(analysis, kept, probe)
    for name in sorted(set(folds) | set(again)):
        a, b = folds.get(name), again.get(name)
        a = a if a is not None else torch.zeros_like(b)
        b = b if b is not None else torch.zeros_like(a)
        if not torch.allclose(a, b, rtol=rtol, atol=rtol * max(float(a.abs().max()), 1e-12)):
            raise VerificationError(
                f"pruned channels reach {name} with values that depend on the input (e.g. a "
                "1-channel gate multiplies them), so their constant cannot be folded. Hint: "
                "use SoftPruner(..., bn='zero'), which makes pruned channels exactly zero.")
    pruned.meta[FOLD_META] = _emit(pruned, analysis.gm,
                                   {k: _squeeze_constant(v) for k, v in folds.items()})
    for x in (inputs, probe):
        ref = _eval_run(model, lambda x=x: model(*x))
        out = _eval_run(pruned, lambda x=x: pruned(*x))
        report = compare(out, ref, analysis, kept, rtol)
        if report.status != "exact":
            raise VerificationError(
                f"the compact model does not match the soft-masked model: {report}. This is a "
                "bug in fxprune; please report it with the model.")
    return pruned
