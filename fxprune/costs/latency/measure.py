"""Honest latency measurement of one model, or of two models against each other.

:func:`measure_latency` runs warm-up iterations, then ``repeat`` timed iterations of each model
*interleaved* in the same process (A, B, then B, A, ...: drifts in clock speed or cache state hit
both equally), in eval mode under ``torch.no_grad()``, with the garbage collector paused and,
on CUDA, ``torch.cuda.synchronize()`` and CUDA events around every timed call. Either model may
be an ONNX Runtime ``InferenceSession`` (timed next to the eager one, inputs converted once).
It reports medians and inter-quartile ranges (robust to the occasional outlier), the speed-up
``median_a / median_b``, and the thread count and device it measured with. Thread count and
training flags are restored afterwards.
"""

from __future__ import annotations

__all__ = ["measure_latency", "LatencyReport", "auto_round_to", "Clock", "interleaved",
           "timing_context", "is_onnx_session", "PAGE_FAULT_WARN"]

import copy
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.core.trace import EXAMPLE_INPUTS, default_example_inputs
from fxprune.errors import InputError
from fxprune.ir.state import untouched


@dataclass(frozen=True)
class LatencyReport:
    """Latencies in milliseconds per forward call (the whole batch).

    Attributes:
        median_a_ms: median latency of model A.
        median_b_ms: median latency of model B (None when only A was measured).
        iqr_a_ms: inter-quartile range of A's timings.
        iqr_b_ms: inter-quartile range of B's timings (None without B).
        speedup: ``median_a_ms / median_b_ms`` (> 1: B is faster; None without B).
        threads: ``torch.get_num_threads()`` during the measurement.
        device: the device the models ran on.
        batch: the batch size of the first input tensor.
        warmup: warm-up calls per model.
        repeat: timed calls per model.
        times_a_ms: every timed call of A.
        times_b_ms: every timed call of B.
        page_faults_a: minor page faults per timed call of A (None where the platform does
            not report them). Thousands per call mean the allocator hands activation memory
            back to the OS after every call and the kernel zeroes it again on the next one: a
            cost per activation byte, not per MAC, that depends on the allocator's state and
            makes speed-ups noisy (see the README, "Is the pruned model faster?").
        page_faults_b: the same for B.
        engine_a: ``"torch"`` (an eager/fx module) or ``"onnxruntime"`` (a session).
        engine_b: the same for B (None without B).
    """

    median_a_ms: float
    median_b_ms: float | None
    iqr_a_ms: float
    iqr_b_ms: float | None
    speedup: float | None
    threads: int
    device: str
    batch: int
    warmup: int
    repeat: int
    times_a_ms: tuple[float, ...] = field(default=(), repr=False)
    times_b_ms: tuple[float, ...] = field(default=(), repr=False)
    page_faults_a: float | None = None
    page_faults_b: float | None = None
    engine_a: str = "torch"
    engine_b: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A ``json.dumps``-able dict of the report (without the raw timings)."""
        return {k: getattr(self, k) for k in (
            "median_a_ms", "median_b_ms", "iqr_a_ms", "iqr_b_ms", "speedup", "threads",
            "device", "batch", "warmup", "repeat", "page_faults_a", "page_faults_b", "engine_a",
            "engine_b")}

    def __str__(self) -> str:
        s = f"A {self.median_a_ms:.3f} ms (IQR {self.iqr_a_ms:.3f})"
        if self.median_b_ms is not None:
            s += f", B {self.median_b_ms:.3f} ms (IQR {self.iqr_b_ms:.3f}), " \
                 f"speed-up {self.speedup:.2f}x"
        s += (f" [batch {self.batch}, {self.threads} thread(s), {self.device}, "
              f"median of {self.repeat}]")
        faults = max(self.page_faults_a or 0.0, self.page_faults_b or 0.0)
        if faults >= PAGE_FAULT_WARN:
            s += (f"; {faults:.0f} page faults per call: the memory allocator returns "
                  "activation buffers to the OS after every call (timings include the kernel "
                  "zeroing them again)")
        return s


PAGE_FAULT_WARN = 1000  # minor faults per call (about 4 MiB of fresh pages) worth a note


def _minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def is_onnx_session(obj: Any) -> bool:
    """Whether ``obj`` looks like an ``onnxruntime.InferenceSession`` (duck-typed: no import)."""
    return callable(getattr(obj, "run", None)) and callable(getattr(obj, "get_inputs", None)) \
        and not isinstance(obj, nn.Module)


class _OrtCall:
    """One ONNX Runtime session bound to fixed inputs (converted to numpy once, untimed)."""

    def __init__(self, session: Any, inputs: tuple):
        names = [i.name for i in session.get_inputs()]
        tensors = [x for x in inputs if isinstance(x, Tensor)]
        if len(tensors) != len(names):
            raise InputError(f"the ONNX session takes {len(names)} input(s) ({', '.join(names)})"
                             f", got {len(tensors)} tensor(s)")
        self.session = session
        self.feeds = {n: x.detach().cpu().numpy() for n, x in zip(names, tensors)}

    def __call__(self) -> Any:
        return self.session.run(None, self.feeds)


class Clock:
    """Times one call in milliseconds: ``perf_counter`` on CPU; on CUDA, CUDA events around
    the call after a ``synchronize`` (``events=False``: synchronize, wall clock, synchronize,
    for calls that also do host work, such as an ONNX Runtime session)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], Any], events: bool = True) -> float:
        self.sync()
        if self.cuda and events:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3


def interleaved(calls: list[Callable[[], Any]], repeat: int, clock: Clock,
                events: list[bool] | None = None) -> tuple[list[list[float]], list[int]]:
    """Timed calls in alternating order (forward, then backward, ...): milliseconds per call
    and minor page faults, per call. The caller warms up, pauses the GC and sets threads."""
    times: list[list[float]] = [[] for _ in calls]
    faults = [0] * len(calls)
    ev = events or [True] * len(calls)
    order = list(range(len(calls)))
    for i in range(repeat):
        for k in (order if i % 2 == 0 else order[::-1]):
            f0 = _minor_faults()
            times[k].append(clock(calls[k], ev[k]))
            f1 = _minor_faults()
            if f0 is not None and f1 is not None:
                faults[k] += f1 - f0
    return times, faults


class timing_context:
    """Threads set, grad off and the cyclic GC paused for a measurement; all restored after."""

    def __init__(self, threads: int | None):
        self.threads = threads
        self.used_threads = torch.get_num_threads()

    def __enter__(self) -> timing_context:
        self._old = torch.get_num_threads()
        self._gc = gc.isenabled()
        self._grad = torch.is_grad_enabled()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.used_threads = torch.get_num_threads()
        torch.set_grad_enabled(False)
        return self

    def collect(self) -> None:
        """Collect garbage once, then keep the GC paused for the timed calls."""
        gc.collect()
        gc.disable()

    def __exit__(self, *exc: Any) -> None:
        if self._gc:
            gc.enable()
        torch.set_grad_enabled(self._grad)
        torch.set_num_threads(self._old)


def auto_round_to(device: str | torch.device = "cpu") -> int:
    """The channel multiple that the device's kernels handle without padding.

    16 on CPUs whose PyTorch kernels use AVX-512 (oneDNN's blocked layouts then hold 16
    float32 channels), 8 on other CPUs (AVX2: 8 lanes) and on CUDA (tensor cores want
    multiples of 8). ``compress(..., round_to="auto")`` uses it.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
        return 16 if cap.startswith("AVX512") else 8
    return 8

def resolve_round_to(round_to: Any, model: Any = None) -> int | None:
    """Validate ``round_to``; ``"auto"`` becomes :func:`auto_round_to` of the model's device."""
    if round_to == "auto":
        first = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
        return auto_round_to(first.device if first is not None else torch.device("cpu"))
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)
                                 or round_to < 1):
        raise InputError(f"round_to must be a positive int or 'auto', got {round_to!r}")
    return round_to



def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _batch(inputs: tuple) -> int:
    for x in inputs:
        if isinstance(x, Tensor) and x.dim() > 0:
            return int(x.shape[0])
    return 1


def _iqr(ts: list[float]) -> float:
    if len(ts) < 2:
        return 0.0
    q = statistics.quantiles(ts, n=4, method="inclusive")
    return q[2] - q[0]


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InputError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def measure_latency(
    model_a: Any,
    model_b: Any = None,
    example_inputs: Any = None,
    *,
    warmup: int = 3,
    repeat: int = 20,
    threads: int | None = None,
    device: str | torch.device | None = None,
) -> LatencyReport:
    """Time ``model_a`` (and ``model_b``) on the same inputs, interleaved, and compare.

    Args:
        model_a: the reference model (e.g. the original): an ``nn.Module`` or an ONNX Runtime
            ``InferenceSession`` (e.g. from :func:`fxprune.files.export.onnx_session`).
        model_b: optional second model (e.g. the pruned one, or the ONNX export of
            ``model_a``); ``speedup = A / B``.
        example_inputs: a tensor or tuple of inputs; the batch size is taken from it. Default:
            ``model_a.meta["fxprune.example_inputs"]`` if it is a fxprune GraphModule, else
            timm's input size or ``(1, 3, 224, 224)`` (required when model A is a session).
        warmup: untimed calls per model first.
        repeat: timed calls per model.
        threads: set ``torch.set_num_threads`` for the measurement (restored afterwards). An
            ONNX Runtime session uses the threads it was created with
            (``onnx_session(path, threads=...)``).
        device: run on this device; a model elsewhere is measured on a copy moved there
            (the models passed in are never moved). Default: ``model_a``'s device. Session
            inputs are fed as CPU numpy arrays, converted once before timing.

    Returns:
        A :class:`LatencyReport` (``engine_a``/``engine_b``: ``"torch"`` or ``"onnxruntime"``).

    Example::

        >>> r = fxprune.measure_latency(model, pruned, torch.randn(8, 3, 224, 224), threads=2)
        >>> print(r.speedup)
    """
    warmup = _check_int("warmup", warmup, 0)
    repeat = _check_int("repeat", repeat, 1)
    if threads is not None:
        threads = _check_int("threads", threads, 1)
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if m is not None and not isinstance(m, nn.Module) and not is_onnx_session(m):
            raise InputError(f"{name} must be a torch.nn.Module or an onnxruntime "
                             f"InferenceSession, got {type(m).__name__}")
    given = [m for m in (model_a, model_b) if m is not None]
    modules = [m for m in given if isinstance(m, nn.Module)]
    dev = torch.device(device) if device is not None else \
        _device_of(modules[0]) if modules else torch.device("cpu")
    if example_inputs is None:
        if not modules:
            raise InputError("measure_latency needs example_inputs to time ONNX sessions")
        example_inputs = getattr(modules[0], "meta", {}).get(EXAMPLE_INPUTS) or \
            default_example_inputs(modules[0])
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    inputs = tuple(_to(x, dev) for x in example_inputs)
    models = [(m if _device_of(m) == dev else copy.deepcopy(m).to(dev))
              if isinstance(m, nn.Module) else m for m in given]
    calls: list[Callable[[], Any]] = [
        (lambda m=m: m(*inputs)) if isinstance(m, nn.Module) else _OrtCall(m, inputs)
        for m in models]
    engines = ["torch" if isinstance(m, nn.Module) else "onnxruntime" for m in models]
    clock = Clock(dev)
    torch_models = [m for m in models if isinstance(m, nn.Module)]
    # flags and buffers are restored afterwards (a forward may update them)
    with untouched(*torch_models, eval_mode=True), torch.no_grad(), \
            timing_context(threads) as ctx:
        for c in calls:
            for _ in range(warmup):
                c()
        clock.sync()
        ctx.collect()
        times, faults = interleaved(calls, repeat, clock, [e == "torch" for e in engines])
    med = [statistics.median(ts) for ts in times]
    has_b = len(models) == 2
    pf = _minor_faults() is not None
    return LatencyReport(
        median_a_ms=med[0],
        median_b_ms=med[1] if has_b else None,
        iqr_a_ms=_iqr(times[0]),
        iqr_b_ms=_iqr(times[1]) if has_b else None,
        speedup=(med[0] / med[1] if med[1] > 0 else float("inf")) if has_b else None,
        threads=ctx.used_threads,
        device=str(dev),
        batch=_batch(inputs),
        warmup=warmup,
        repeat=repeat,
        times_a_ms=tuple(times[0]),
        times_b_ms=tuple(times[1]) if has_b else (),
        page_faults_a=faults[0] / repeat if pf else None,
        page_faults_b=(faults[1] / repeat if pf else None) if has_b else None,
        engine_a=engines[0],
        engine_b=engines[1] if has_b else None,
    )
