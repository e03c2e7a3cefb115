"""Deployment: ONNX export with a dynamic batch dimension, checked against ONNX Runtime.

:func:`export_onnx` writes a model (a pruned GraphModule or any module) to ONNX with the batch
dimension of every input and output dynamic, then, by default, runs the file in ONNX Runtime
on inputs with a *different* batch size than the example's (so the dynamic axis is exercised)
and compares every output with PyTorch's: ``|ort - torch| <= rtol * |torch| + rtol * scale``
(scale: the largest absolute PyTorch output), as the oracle does. A mismatch raises
:class:`~fxprune.errors.VerificationError`. :func:`onnx_session` opens a file with a thread
count, for :func:`fxprune.measure_latency`, which times a session next to an eager model.

Needs the optional extra ``pip install "fxprune[onnx]"`` (onnx, onnxscript, onnxruntime).
The TorchScript-based exporter (``dynamo=False``) is the default: it exports an FX
GraphModule in about a second; ``dynamo=True`` uses ``torch.export`` (slower, needs
onnxscript).
"""

from __future__ import annotations

__all__ = ["export_onnx", "onnx_session", "ExportReport"]

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.core.trace import EXAMPLE_INPUTS, default_example_inputs
from fxprune.errors import InputError, VerificationError


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how ONNX Runtime's outputs compared."""

    path: str
    opset: int | None
    dynamic_batch: bool
    checked_batch: int | None  # batch size of the ONNX Runtime check (None: not checked)
    max_abs_err: float | None
    max_rel_err: float | None  # max |ort - torch| / (|torch| + scale)
    ok: bool

    def __str__(self) -> str:
        if self.checked_batch is None:
            return f"wrote {self.path} (not checked)"
        return (f"{'matches' if self.ok else 'DIFFERS FROM'} PyTorch at batch "
                f"{self.checked_batch} (max abs err {self.max_abs_err:.3g}, rel "
                f"{self.max_rel_err:.3g})")


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise InputError(f"ONNX export needs the '{module}' package: pip install "
                         "\"fxprune[onnx]\" (onnx, onnxscript, onnxruntime)") from e


def onnx_session(path: str | Path, *, threads: int | None = None,
                 providers: list[str] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path`` with ``threads`` intra-op threads
    (default: ONNX Runtime's) on ``providers`` (default: CPU)."""
    ort = _need("onnxruntime")
    opts = ort.SessionOptions()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads must be an int >= 1, got {threads!r}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts,
                                providers=providers or ["CPUExecutionProvider"])


def _flat(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


def _inputs(model: nn.Module, example_inputs: Any) -> tuple[Tensor, ...]:
    if example_inputs is None:
        example_inputs = getattr(model, "meta", {}).get(EXAMPLE_INPUTS) or \
            default_example_inputs(model)
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    if not example_inputs or not all(isinstance(x, Tensor) for x in example_inputs):
        raise InputError("export_onnx needs tensor example_inputs (a tensor or a tuple of "
                         "tensors)")
    return tuple(example_inputs)


class _Positional(nn.Module):
    """Calls the model with the tensor inputs only, so that its other parameters keep their
    Python defaults (a traced ``is_causal=False`` would otherwise become a tensor input)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *xs: Tensor) -> Any:
        return self.model(*xs)


def export_onnx(model: nn.Module, path: str | Path, example_inputs: Any = None, *,
                dynamic_batch: bool = True, check: bool = True, rtol: float = 1e-4,
                opset: int | None = None, dynamo: bool = False) -> ExportReport:
    """Export ``model`` to ONNX at ``path`` and check it in ONNX Runtime (module docstring).

    Args:
        model: any ``nn.Module`` (e.g. from :func:`fxprune.compress` or :func:`fxprune.load`);
            it is put in eval mode for the export and its training flags are restored.
        path: the ``.onnx`` file to write.
        example_inputs: default: the pruned graph's ``meta["fxprune.example_inputs"]``, else
            timm's input size or ``(1, 3, 224, 224)``.
        dynamic_batch: make dim 0 of every input and output dynamic.
        check: run ONNX Runtime and compare, at another batch size than the example's when
            the batch is dynamic (2, or 3 if the example's is 2).
        rtol: relative tolerance of the check (the absolute one is ``rtol`` times the largest
            PyTorch output).
        opset: ONNX opset (default: the exporter's).
        dynamo: use the ``torch.export``-based exporter instead of the TorchScript one.

    Returns:
        An :class:`ExportReport`.

    Raises:
        InputError: onnx/onnxruntime missing, or bad inputs.
        VerificationError: ONNX Runtime's outputs differ from PyTorch's.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"export_onnx expects an nn.Module, got {type(model).__name__}")
    _need("onnx")
    inputs = _inputs(model, example_inputs)
    n_in = len(inputs)
    in_names = ["input"] if n_in == 1 else [f"input_{i}" for i in range(n_in)]
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            n_out = len(_flat(model(*inputs)))
            out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
            kw: dict[str, Any] = {"input_names": in_names, "output_names": out_names,
                                  "dynamo": dynamo}
            if opset is not None:
                kw["opset_version"] = opset
            if dynamic_batch and dynamo:
                batch = torch.export.Dim("batch", min=1)
                kw["dynamic_shapes"] = tuple({0: batch} for _ in inputs)
            elif dynamic_batch:
                kw["dynamic_axes"] = {n: {0: "batch"} for n in in_names + out_names}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer/deprecation chatter, not results
                torch.onnx.export(_Positional(model).eval(), inputs, str(path), **kw)
            model.eval()  # the exporter restores the modes it found
            report = ExportReport(str(path), opset, dynamic_batch, None, None, None, True)
            if check:
                report = _check(model, path, inputs, dynamic_batch, rtol, opset)
    finally:
        for m, t in flags.items():
            m.training = t
    if not report.ok:
        raise VerificationError(f"ONNX export {path}: ONNX Runtime {report}")
    return report


def _rebatch(inputs: tuple[Tensor, ...], batch: int) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(
        (torch.randn((batch, *x.shape[1:]), generator=gen).to(x) if x.is_floating_point()
         else x[:1].expand(batch, *x.shape[1:]).clone()) if x.dim() else x
        for x in inputs)


def _check(model: nn.Module, path: str | Path, inputs: tuple[Tensor, ...], dynamic: bool,
           rtol: float, opset: int | None) -> ExportReport:
    b0 = int(inputs[0].shape[0]) if inputs[0].dim() else 1
    batch = (3 if b0 == 2 else 2) if dynamic and inputs[0].dim() else b0
    xs = _rebatch(inputs, batch) if dynamic else inputs
    ref = [t.detach().cpu().double() for t in _flat(model(*xs))]
    sess = onnx_session(path)
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(sess.get_inputs(), xs)}
    got = [torch.from_numpy(o).double() for o in sess.run(None, feeds)]
    if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
        raise VerificationError(
            f"ONNX export {path}: ONNX Runtime returned shapes "
            f"{[tuple(g.shape) for g in got]}, PyTorch {[tuple(r.shape) for r in ref]}")
    abs_err = rel_err = 0.0
    ok = True
    for g, r in zip(got, ref):
        if not r.numel():
            continue
        scale = float(r.abs().max())
        diff = (g - r).abs()
        abs_err = max(abs_err, float(diff.max()))
        rel_err = max(rel_err, float((diff / (r.abs() + scale + 1e-30)).max()))
        ok = ok and bool((diff <= rtol * r.abs() + rtol * scale).all())
    return ExportReport(str(path), opset, dynamic, batch, abs_err, rel_err, ok)
