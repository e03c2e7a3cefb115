"""The equivalence oracle.

The original model, with every pruned channel zeroed at each op that consumes it (the inputs of
convs and linears), must compute what the pruned model computes. Zeroing at the consumers is
op-agnostic: it covers residual adds, concatenation offsets, depthwise chains and flatten→linear
alike. Where a weightless op mixes channels (LayerNorm/GroupNorm over C, weight
standardization), removing a channel is not the same as zeroing it; the report then says
``approximate: <why>`` instead of ``exact``.
"""

from __future__ import annotations

__all__ = ["verify", "VerifyReport", "masked_outputs", "kept_from_manifest"]

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from . import meta
from .analyze import Analysis, analyze
from .channels import FIRST_ID
from .errors import InputError
from .trace import EXAMPLE_INPUTS, trace


@dataclass(frozen=True)
class VerifyReport:
    """``status`` is ``exact``, ``approximate: <why>`` or ``mismatch``."""

    status: str
    max_abs_err: float
    max_rel_err: float

    @property
    def ok(self) -> bool:
        return self.status != "mismatch"

    def __str__(self) -> str:
        return f"{self.status} (max abs err {self.max_abs_err:.3g}, rel {self.max_rel_err:.3g})"


class _Masked(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, analysis: Analysis, kept: Tensor):
        super().__init__(gm)
        self.analysis = analysis
        self.kept = kept

    def run_node(self, n: fx.Node) -> Any:
        idx = self.analysis.consumers.get(n.name)
        if not idx:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        args = list(args)
        for i in idx:
            src = n.args[i]
            ids = meta.get_ids(src) if isinstance(src, fx.Node) else None
            if isinstance(ids, Tensor) and isinstance(args[i], Tensor):
                m = self.kept[ids].to(args[i].dtype)
                if not bool(m.all()):
                    args[i] = args[i] * m.reshape((1,) * (args[i].dim() - m.dim()) + m.shape)
        return getattr(self, n.op)(n.target, tuple(args), kwargs)


def masked_outputs(gm: fx.GraphModule, analysis: Analysis, kept: Tensor, inputs: tuple) -> Any:
    """Run the original graph with pruned channels zeroed at their consumers."""
    flags = {m: m.training for m in gm.modules()}
    try:
        gm.eval()
        with torch.no_grad():
            return _Masked(gm, analysis, kept).run(*inputs)
    finally:
        for m, t in flags.items():
            m.training = t


def kept_from_manifest(analysis: Analysis, manifest: dict[str, dict[int, list[int]]]) -> Tensor:
    """Recover the kept-channel mask of an analyzed original from a pruned model's manifest."""
    pruned_unit = torch.zeros(analysis.n_ids, dtype=torch.bool)
    for b in analysis.bindings:
        path = f"{b.target}.{b.param}" if b.param else b.target
        kept_idx = manifest.get(path, {}).get(b.dim)
        if kept_idx is None:
            continue
        k = torch.zeros(b.ids.numel(), dtype=torch.bool)
        k[torch.tensor(kept_idx, dtype=torch.long)] = True
        pruned_unit[analysis.unit[b.ids[~k]]] = True
    kept = ~pruned_unit[analysis.unit]
    kept[:FIRST_ID] = True
    return kept


def _flat(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat(v)]
    if isinstance(x, dict):
        return [t for k in sorted(x) for t in _flat(x[k])]
    return []


def compare(pruned_out: Any, oracle_out: Any, analysis: Analysis, kept: Tensor,
            rtol: float = 1e-4) -> VerifyReport:
    a, b = _flat(pruned_out), _flat(oracle_out)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        shapes = [tuple(x.shape) for x in a], [tuple(y.shape) for y in b]
        return VerifyReport(f"mismatch: output shapes differ {shapes[0]} vs {shapes[1]}",
                            float("inf"), float("inf"))
    abs_err = max((float((x.double() - y.double()).abs().max()) for x, y in zip(a, b)
                   if x.numel()), default=0.0)
    scale = max((float(y.double().abs().max()) for y in b if y.numel()), default=0.0)
    rel_err = abs_err / scale if scale > 0 else abs_err
    approx = [why for _node, ids, why in analysis.approx if not bool(kept[ids].all())]
    if approx:
        reasons = "; ".join(list(dict.fromkeys(approx))[:3])
        return VerifyReport(f"approximate: {reasons}", abs_err, rel_err)
    ok = all(torch.allclose(x.double(), y.double(), rtol=rtol, atol=rtol * max(scale, 1e-12))
             for x, y in zip(a, b))
    return VerifyReport("exact" if ok else "mismatch", abs_err, rel_err)


def _check_inputs(model: nn.Module, inputs: tuple) -> None:
    p = next((t for t in model.parameters()), None)
    for x in inputs:
        if isinstance(x, Tensor) and p is not None and x.device != p.device:
            raise InputError(
                f"example input is on {x.device} but the model is on {p.device}. Hint: move "
                f"the input with x.to('{p.device}') (or the model with model.to(...)).")


def verify(original: nn.Module, pruned: fx.GraphModule, example_inputs: Any = None,
           *, rtol: float = 1e-4) -> VerifyReport:
    """Compare a pruned model with the zero-channel oracle built from the original.

    Args:
        original: the unpruned model (not modified).
        pruned: the GraphModule returned by :func:`fxprune.compress` (it carries a manifest).
        example_inputs: inputs to compare on (default: the ones used for pruning).
        rtol: relative tolerance (absolute tolerance is ``rtol`` times the output scale).

    Returns:
        A :class:`VerifyReport`: ``exact``, ``approximate: <why>`` or ``mismatch``.
    """
    manifest = pruned.meta.get(meta.MANIFEST) if isinstance(pruned, fx.GraphModule) else None
    if manifest is None:
        raise InputError("verify() needs a pruned GraphModule made by fxprune (no manifest found)")
    if example_inputs is None:
        example_inputs = pruned.meta.get(EXAMPLE_INPUTS)
    gm = trace(original, example_inputs)
    inputs = gm.meta[EXAMPLE_INPUTS]
    _check_inputs(original, inputs)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = analyze(gm)
    kept = kept_from_manifest(analysis, manifest)
    return verify_analyzed(gm, analysis, kept, pruned, inputs, rtol=rtol)


def verify_analyzed(gm: fx.GraphModule, analysis: Analysis, kept: Tensor,
                    pruned: nn.Module, inputs: tuple, rtol: float = 1e-4) -> VerifyReport:
    oracle = masked_outputs(gm, analysis, kept, inputs)
    flags = {m: m.training for m in pruned.modules()}
    try:
        pruned.eval()
        with torch.no_grad():
            out = pruned(*inputs)
    finally:
        for m, t in flags.items():
            m.training = t
    return compare(out, oracle, analysis, kept, rtol)
