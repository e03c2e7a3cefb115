"""The equivalence oracle.

The original model, with every pruned channel zeroed at each op that consumes it (the inputs of
convs and linears), must compute what the pruned model computes. Zeroing at the consumers is
op-agnostic: it covers residual adds, concatenation offsets, depthwise chains and flatten→linear
alike. Where a weightless op mixes channels (LayerNorm/GroupNorm over C, weight
standardization), removing a channel is not the same as zeroing it; the report then says
``approximate: <why>`` instead of ``exact``, after checking the rewrite exactly against a
statistics-aware reference. Every verdict is listed in :data:`VERDICTS`; ``VerifyReport.ok``
is that explicit allow-list (``exact`` and ``approximate`` only). The original and the pruned
model are run under :func:`fxprune.ir.state.untouched`: neither is changed by the check.

A verdict can be right and still prove little: when the oracle's outputs are (near) constant
(all zeros from a zero-initialised head, or the same for every sample), any model emitting that
constant would pass. ``VerifyReport.vacuous`` then says why (:func:`vacuous_reason`), and
:func:`fxprune.compress` warns; the verdict itself is unchanged.
"""

from __future__ import annotations

__all__ = ["verify", "VerifyReport", "VERDICTS", "flat_tensors",
           "masked_outputs", "kept_from_manifest",
           "incompatibility", "vacuous_reason"]

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis, analyze
from fxprune.core.shapes import incompatibility
from fxprune.core.trace import EXAMPLE_INPUTS, OPAQUE, trace
from fxprune.errors import InputError
from fxprune.ir import meta
from fxprune.ir.channels import FIRST_ID, pruned_axes
from fxprune.ir.inputs import check_inputs, check_not_scripted, copied
from fxprune.ir.state import untouched
from fxprune.ir.threads import model_guard

#: Every kind of verdict :func:`verify` gives, and whether it means the pruned model is right.
#: ``ok`` is this explicit allow-list: a new kind is not ok until it is added here as ok.
VERDICTS: dict[str, bool] = {
    "exact": True,                # equal to the zero-channel oracle (within rtol)
    "approximate": True,          # differs only where a weightless op mixes channels, and equal
                                  # to the statistics-aware oracle (structure verified exactly)
    "mismatch": False,            # differs from the zero-channel oracle
    "structural_mismatch": False,  # approximate ops, and differs even from the exact reference
    "shape_mismatch": False,      # outputs differ in number or shape
    "incompatible": False,        # the pruned model was not made from this original
}
OK_KINDS = frozenset(k for k, ok in VERDICTS.items() if ok)


@dataclass(frozen=True)
class VerifyReport:
    """The oracle's verdict.

    ``kind`` is one of :data:`VERDICTS` (``exact``, ``approximate``, ``mismatch``,
    ``structural_mismatch``, ``shape_mismatch``, ``incompatible``); ``status`` is the
    human-readable line (``exact``, ``approximate: <why> (structure verified exactly)``,
    ``mismatch...``). ``ok`` is True for ``exact`` and ``approximate`` only.
    """

    status: str
    max_abs_err: float
    max_rel_err: float
    kind: str = "mismatch"
    #: Why passing this check proves little (None: it does not): the outputs it compared are
    #: (near) constant, e.g. all zeros from a zero-initialised head. See :func:`vacuous_reason`.
    vacuous: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in VERDICTS:
            raise ValueError(f"unknown verdict kind {self.kind!r}; one of {sorted(VERDICTS)}")

    @property
    def ok(self) -> bool:
        return self.kind in OK_KINDS

    def __str__(self) -> str:
        text = f"{self.status} (max abs err {self.max_abs_err:.3g}, rel {self.max_rel_err:.3g})"
        return f"{text}; vacuous check: {self.vacuous}" if self.vacuous else text


def vacuous_reason(outputs: Any, rtol: float = 1e-4) -> str | None:
    """Why a comparison with these (oracle) outputs proves little, or None.

    The check is vacuous when any model that outputs the same constant would pass it: every
    output tensor is all zeros, or within the comparison's tolerance (``rtol`` times the output
    scale) of one value; and, for a batch of several samples, when every sample's outputs are
    the same (the output does not depend on the input, e.g. a zero-initialised head with a
    bias). With a batch of one, a head whose output is a non-constant bias is not detected:
    use two or more samples as example inputs to cover it.
    """
    ts = [t for t in flat_tensors(outputs) if t.numel() and t.is_floating_point()]
    if not ts:
        return None
    scale = max(float(t.double().abs().max()) for t in ts)
    if scale == 0.0:
        return "every output is zero (e.g. a zero-initialised head)"
    tol = rtol * scale
    if all(float(t.double().max() - t.double().min()) <= tol for t in ts):
        return f"every output is constant ({float(ts[0].reshape(-1)[0]):.3g})"
    if all(t.dim() >= 1 and t.shape[0] > 1 for t in ts) and all(
            float((t.double() - t[:1].double()).abs().max()) <= tol for t in ts):
        return "every sample of the batch has the same outputs (they ignore the input)"
    return None


class _Masked(fx.Interpreter):
    """The original graph with pruned channels zeroed at their consumers.

    With ``structural=True``, ops that are only approximately prunable (LayerNorm/GroupNorm
    over channels, weight-standardized convs) instead run their pruned copy on the kept
    channels and scatter the result back: an exact reference for the rewrite itself.
    """

    def __init__(self, gm: fx.GraphModule, analysis: Analysis, kept: Tensor,
                 structural: bool = False):
        super().__init__(gm)
        self.analysis = analysis
        self.kept = kept
        self.approx_nodes = {name for name, _ids, _why in analysis.approx} if structural else set()
        self._cuts: Any = None

    def _pruned_op(self, n: fx.Node, x: Tensor) -> Tensor:
        from fxprune.core.rewrite import _clone_module, slices_of
        from fxprune.rules import rule_for

        if self._cuts is None:
            self._cuts = slices_of(self.analysis, self.kept)
        old = self.fetch_attr(str(n.target))
        cuts = {p: c for (t, p), c in self._cuts.items() if t == str(n.target)}
        new = _clone_module(old, cuts)
        rule = rule_for(n, dict(self.module.named_modules()))
        if rule is not None:
            rule.update_module(new, old)
        for d, idx in pruned_axes(align_ids(meta.get_ids(n.args[0]), x.dim()), self.kept):
            x = x.index_select(d, idx)
        return self._scatter_back(n, new(x))

    def _pruned_call(self, n: fx.Node, args: tuple, kwargs: dict) -> Any:
        """A functional approximate op (F.layer_norm, F.group_norm) on the kept channels of
        every tensor argument, with its rule's ``pruned_args`` for the other arguments."""
        from fxprune.rules import rule_for

        def kept_only(a: Any, v: Any) -> Any:
            ids = meta.get_ids(a) if isinstance(a, fx.Node) else None
            if isinstance(ids, Tensor) and isinstance(v, Tensor):
                for d, idx in pruned_axes(align_ids(ids, v.dim()), self.kept):
                    v = v.index_select(d, idx)
            return v

        new_args = [kept_only(a, v) for a, v in zip(n.args, args)]
        new_kwargs = {k: kept_only(n.kwargs.get(k), v) for k, v in kwargs.items()}
        rule = rule_for(n, {})
        if rule is not None:
            rule.pruned_args(n, new_args, new_kwargs)
        return self._scatter_back(n, n.target(*new_args, **new_kwargs))

    def _scatter_back(self, n: fx.Node, y: Tensor) -> Tensor:
        out_ids = align_ids(meta.get_ids(n), y.dim())
        full = list(y.shape)
        for d, _idx in pruned_axes(out_ids, self.kept):
            full[d] = out_ids.shape[d]
        out = y.new_zeros(full)
        index = [slice(None)] * y.dim()
        for d, idx in pruned_axes(out_ids, self.kept):
            index[d] = idx
        # scatter one axis at a time (several pruned axes are rare)
        if sum(isinstance(i, Tensor) for i in index) <= 1:
            out[tuple(index)] = y
        else:
            out = y  # pragma: no cover - multi-axis pruned outputs do not occur in these ops
        return out

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.approx_nodes and n.op in ("call_module", "call_function"):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            if isinstance(args[0], Tensor) and pruned_axes(meta.get_ids(n.args[0]), self.kept):
                if n.op == "call_function":
                    return self._pruned_call(n, args, kwargs)
                return self._pruned_op(n, args[0])
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


def align_ids(ids: Tensor, ndim: int) -> Tensor:
    return ids.reshape((1,) * (ndim - ids.dim()) + tuple(ids.shape)) if ids.dim() < ndim else ids


def masked_outputs(gm: fx.GraphModule, analysis: Analysis, kept: Tensor, inputs: tuple,
                   structural: bool = False) -> Any:
    """Run the original graph with pruned channels zeroed at their consumers."""
    with untouched(gm, eval_mode=True), torch.no_grad():
        return _Masked(gm, analysis, kept, structural).run(*copied(inputs))


def kept_from_manifest(analysis: Analysis, manifest: dict[str, dict[int, list[int]]]) -> Tensor:
    """Recover the kept-channel mask of an analyzed original from a pruned model's manifest."""
    pruned_unit = torch.zeros(analysis.n_ids, dtype=torch.bool)
    for b in analysis.bindings:
        path = f"{b.target}.{b.param}" if b.param else b.target
        kept_idx = manifest.get(path, {}).get(b.dim)
        if kept_idx is None:
            continue
        k = torch.zeros(b.ids.numel(), dtype=torch.bool)
        if any(not isinstance(i, int) or not 0 <= i < k.numel() for i in kept_idx):
            raise InputError(f"manifest['{path}'][{b.dim}]: kept indices must be ints in "
                             f"[0, {k.numel()}) for this original model (is it the model that "
                             "was pruned?)")
        k[torch.tensor(kept_idx, dtype=torch.long)] = True
        pruned_unit[analysis.unit[b.ids[~k]]] = True
    kept = ~pruned_unit[analysis.unit]
    kept[:FIRST_ID] = True
    return kept


def flat_tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in flat_tensors(v)]
    if isinstance(x, dict):
        return [t for k in sorted(x) for t in flat_tensors(x[k])]
    return []


def compare(pruned_out: Any, oracle_out: Any, analysis: Analysis, kept: Tensor,
            rtol: float = 1e-4) -> VerifyReport:
    a, b = flat_tensors(pruned_out), flat_tensors(oracle_out)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        shapes = [tuple(x.shape) for x in a], [tuple(y.shape) for y in b]
        return VerifyReport(f"mismatch: output shapes differ {shapes[0]} vs {shapes[1]}",
                            float("inf"), float("inf"), "shape_mismatch")
    abs_err = max((float((x.double() - y.double()).abs().max()) for x, y in zip(a, b)
                   if x.numel()), default=0.0)
    scale = max((float(y.double().abs().max()) for y in b if y.numel()), default=0.0)
    rel_err = abs_err / scale if scale > 0 else abs_err
    ok = _close(a, b, rtol)
    return VerifyReport("exact" if ok else "mismatch", abs_err, rel_err,
                        "exact" if ok else "mismatch")


def _close(a: list[Tensor], b: list[Tensor], rtol: float) -> bool:
    scale = max((float(y.double().abs().max()) for y in b if y.numel()), default=0.0)
    return all(torch.allclose(x.double(), y.double(), rtol=rtol, atol=rtol * max(scale, 1e-12))
               for x, y in zip(a, b))


def approx_reasons(analysis: Analysis, kept: Tensor) -> list[str]:
    return list(dict.fromkeys(why for _n, ids, why in analysis.approx
                              if not bool(kept[ids].all())))


def verify(original: nn.Module, pruned: fx.GraphModule, example_inputs: Any = None,
           *, rtol: float = 1e-4) -> VerifyReport:
    """Compare a pruned model with the zero-channel oracle built from the original.

    Args:
        original: the unpruned model (not modified).
        pruned: the GraphModule returned by :func:`fxprune.compress` (it carries a manifest).
        example_inputs: inputs to compare on, as for :func:`fxprune.compress` (a tensor, a
            tuple, or a dict of keyword arguments; default: the ones used for pruning).
        rtol: relative tolerance (absolute tolerance is ``rtol`` times the output scale).

    Returns:
        A :class:`VerifyReport`: ``exact``, ``approximate: <why>`` or ``mismatch``; its
        ``vacuous`` says why the check proves little when the outputs are (near) constant.
    """
    check_not_scripted(original, "original")
    manifest = pruned.meta.get(meta.MANIFEST) if isinstance(pruned, fx.GraphModule) else None
    if manifest is None:
        raise InputError("verify() needs a pruned GraphModule made by fxprune (no manifest found)")
    if example_inputs is None:
        example_inputs = pruned.meta.get(EXAMPLE_INPUTS)
    # both at once: another thread running either waits, and none waits holding one of them
    with model_guard(original, pruned), untouched(original):
        gm = trace(original, example_inputs)
        inputs = gm.meta[EXAMPLE_INPUTS]
        check_inputs(original, inputs)
        analysis = analyze(gm, residual=pruned.meta.get(meta.RESIDUAL, "coupled"),
                           attention=pruned.meta.get(meta.ATTENTION, "dims"), warn=False)
        why = incompatibility(gm, analysis, pruned, manifest)
        if why is not None:
            return VerifyReport(f"mismatch: the pruned model was not made from this original "
                                f"({why})", float("inf"), float("inf"), "incompatible")
        kept = kept_from_manifest(analysis, manifest)
        return verify_analyzed(gm, analysis, kept, pruned, inputs, rtol=rtol)


def verify_analyzed(gm: fx.GraphModule, analysis: Analysis, kept: Tensor,
                    pruned: nn.Module, inputs: tuple, rtol: float = 1e-4) -> VerifyReport:
    """Oracle check. Where the zero-channel oracle is only approximate, the rewrite is still
    checked exactly against a statistics-aware oracle (the approximate ops run on the kept
    channels only); a mismatch there is reported as ``mismatch``."""
    from fxprune.core.boundary import boundary_inputs

    opaque = sorted(gm.meta.get(OPAQUE) or ())  # their inputs are checked too
    with untouched(pruned, eval_mode=True), torch.no_grad(), \
            boundary_inputs(pruned, opaque) as seen:
        out = pruned(*copied(inputs))  # every run gets its own inputs
    with boundary_inputs(gm, opaque) as expected:
        oracle = masked_outputs(gm, analysis, kept, inputs)
    if opaque:
        out, oracle = (out, seen), (oracle, expected)
    report = compare(out, oracle, analysis, kept, rtol)
    vacuous = vacuous_reason(oracle, rtol)
    if vacuous is not None:
        report = replace(report, vacuous=vacuous)
    reasons = approx_reasons(analysis, kept)
    if not reasons or report.kind == "shape_mismatch":
        return report
    structural = masked_outputs(gm, analysis, kept, inputs, structural=True)
    s_report = compare(out, structural, analysis, kept, rtol)
    if s_report.kind != "exact":
        return VerifyReport(f"mismatch (even against the statistics-aware oracle, max abs err "
                            f"{s_report.max_abs_err:.3g})", report.max_abs_err,
                            report.max_rel_err, "structural_mismatch", vacuous)
    return VerifyReport(f"approximate: {'; '.join(reasons[:3])} (structure verified exactly)",
                        report.max_abs_err, report.max_rel_err, "approximate", vacuous)
