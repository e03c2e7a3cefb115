"""A latency model of the target device: per-layer time as a function of (in, out) width.

:func:`build_table` finds the prunable layer blocks of an analyzed graph
(:func:`fxprune.costs.latency.layers.find_layers`), and for each distinct signature times fresh
single-layer modules at the layer's real input shape on a small grid of widths: the fractions
1/10, 1/4, 1/2, 3/4 and 1 of each width that pruning can change, snapped up to the layer's
width quantum, so up to 25 points for a layer whose input and output both change, 5 for one
that changes on one side. 1/10 is the narrowest width the allocation can choose at its default
``max_ratio=0.9``: a layer's fixed cost (launch, memory passes) makes linear extrapolation below
the grid too optimistic for narrow layers (regnety_016's stage-2 downsample conv cut to 8 -> 16
channels was predicted at 0.0 ms and measured at 0.36).

The quantum is the width step for a dense conv or linear. For a *grouped* conv (groups fixed
when pruned, so the per-group width shrinks) it is the step times the groups: the step applies
to each conv group's width. oneDNN lays each group's channels out separately, and a group
width off the step falls off the fast kernels. regnety_016's 14-group 3x3 conv at 14x14 (batch
8, 2 threads, AVX-512 EPYC; group width in -> out) took 0.33 ms at 8 -> 8, 0.72 at 8 -> 24 and
1.64 at the full 24 -> 24, but 0.94 at 12 -> 12, 2.04 at 20 -> 20 and 2.52 at 20 -> 24 (slower
than the full layer). A grid on multiples of the step of the *total* width (the table's first
version) mixed the two regimes, and interpolating between them was meaningless. The allocation
uses the same quantum (:func:`fxprune.costs.latency.layers.grouped_conv_groups`), so every width it
can choose for a grouped conv is a grid point. [INF: the same per-group rule is assumed on
other devices; only the dense step is probed.]

Timing is :func:`fxprune.costs.latency.measure_latency`'s: warm-up calls, then every grid point of a
signature called in turn, interleaved (the order alternates every round), medians, the GC
paused, threads set; CUDA calls are timed with events after a synchronize.

Between grid points the time is interpolated bilinearly (exact for a cost ``a + b*in + c*out +
d*in*out``, which is how a convolution's MACs scale) and extrapolated linearly below the
smallest point. The width step is measured too (:func:`probe_step`): on the costliest layers,
the output width is swept through 32 channels above a multiple of 32, and the step whose
"padded staircase" model ``t(w) = a + b * ceil(w / s) * s`` explains the times best is taken
(the smallest step within 15% of the best fit, so noise does not invent a step). It is the
``round_to`` a latency target snaps widths to.

Results are cached as JSON (never pickle) in :func:`cache_dir`, one file per device, dtype,
batch, threads and torch version, one entry per signature; a second call with a model that
shares signatures measures only the new ones.
"""

from __future__ import annotations

__all__ = ["LatencyTable", "Grid", "build_table", "cache_dir", "cache_key", "interp",
           "derive_step", "STEPS"]

import bisect
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fxprune.core.analyze import Analysis
from fxprune.costs.latency.layers import LayerSpec, find_layers
from fxprune.costs.latency.measure import Clock, interleaved, timing_context

FORMAT = "fxprune-latency-table/2"  # /2: the 1/10 point, per-group quantum
FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
STEPS = (1, 2, 4, 8, 16, 32)
_PROBE = (0, 1, 2, 4, 6, 8, 9, 12, 15, 16, 17, 20, 24, 28, 31, 32)


def cache_dir() -> Path:
    """``$FXPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/fxprune/latency`` (``~/.cache/...``)."""
    env = os.environ.get("FXPRUNE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fxprune" / "latency"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(device: torch.device, dtype: torch.dtype, batch: int, threads: int
              ) -> dict[str, Any]:
    """What a table's timings depend on besides the layer: device, dtype, batch, threads, torch."""
    if device.type == "cuda":
        dev = f"cuda:{torch.cuda.get_device_name(device)}:" \
              f"sm{'.'.join(map(str, torch.cuda.get_device_capability(device)))}"
    else:
        dev = f"{device.type}:{_cpu_name()}:{torch.backends.cpu.get_cpu_capability()}"
    return {"device": dev, "dtype": str(dtype).replace("torch.", ""), "batch": int(batch),
            "threads": int(threads), "torch": torch.__version__}


@dataclass(frozen=True)
class Grid:
    """Times (ms) of one signature on a grid: ``ms[i][j]`` at ``(ins[i], outs[j])``."""

    ins: tuple[int, ...]
    outs: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]

    def __call__(self, w_in: float, w_out: float) -> float:
        rows = [interp(self.outs, r, w_out) for r in self.ms]
        return max(0.0, interp(self.ins, rows, w_in))

    def to_json(self) -> dict[str, Any]:
        return {"in": list(self.ins), "out": list(self.outs), "ms": [list(r) for r in self.ms]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Grid:
        return cls(tuple(int(v) for v in d["in"]), tuple(int(v) for v in d["out"]),
                   tuple(tuple(float(v) for v in r) for r in d["ms"]))


def interp(xs: tuple[int, ...] | list[int], ys: list[float] | tuple[float, ...], x: float
           ) -> float:
    """Piecewise-linear through ``(xs, ys)`` (sorted xs), linear extrapolation at both ends."""
    if len(xs) == 1:
        return float(ys[0])
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def derive_step(probes: list[tuple[list[int], list[float]]], steps: tuple[int, ...] = STEPS
                ) -> int:
    """The width step whose padded-staircase model fits the probe times best (module docs).

    ``probes``: per probed layer, widths and times. Each candidate step ``s`` is fitted by least
    squares ``t = a + b * ceil(w / s) * s`` per probe; residuals are summed relative to each
    probe's mean time. Returns the smallest step within 15% (plus a 1%-of-mean noise floor) of
    the best.
    """
    if not probes:
        return 1
    rss = {s: 0.0 for s in steps}
    floor = 0.0
    for ws, ts in probes:
        mean = statistics.fmean(ts) or 1.0
        floor += len(ts) * 0.01 ** 2
        for s in steps:
            xs = [math.ceil(w / s) * s for w in ws]
            rss[s] += _lsq_rss(xs, ts) / mean ** 2
    best = min(rss.values())
    return min(s for s in steps if rss[s] <= best * 1.15 + floor)


def _lsq_rss(xs: list[int], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    a = my - b * mx
    return sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))


@dataclass
class LatencyTable:
    """Per-layer latency model of one device (see the module docstring).

    Attributes:
        layers: the layer blocks of the analyzed graph.
        grids: ``{signature: Grid}``.
        step: the measured width step (``round_to`` for a latency target).
        key: device, dtype, batch, threads and torch version the times hold for.
        measured_s: seconds spent measuring in this call (0 when all came from the cache).
        measured: signatures measured in this call; the others came from the cache.
    """

    layers: list[LayerSpec]
    grids: dict[str, Grid]
    step: int
    key: dict[str, Any]
    measured_s: float = 0.0
    measured: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)

    def layer_ms(self, spec: LayerSpec, w_in: float, w_out: float) -> float:
        """Predicted time of one layer block at these widths (snapped to whole groups)."""
        i, o = spec.snap(w_in, w_out)
        return self.grids[spec.signature](i, o)

    def predict(self, kept: dict[int, torch.Tensor] | None = None) -> dict[str, float]:
        """Predicted ms per layer under kept-unit masks ``{group id: bool[size]}``."""
        kept = kept or {}
        return {s.name: self.layer_ms(s, s.width_in(kept), s.width_out(kept))
                for s in self.layers}


def _grid_widths(full: int, q: int, varies: bool) -> list[int]:
    if not varies:
        return [full]
    ws = {min(full, max(q, math.ceil(full * f / q) * q)) for f in FRACTIONS}
    return sorted(ws | {full})


def _quantum(spec: LayerSpec, step: int) -> int:
    """Grid width quantum: the step per conv group (module docstring); depthwise: the
    channel multiplier (its width follows the producer's)."""
    if spec.depthwise:
        return max(1, spec.out_full // max(1, spec.in_full))
    return spec.groups * step


def _time_blocks(blocks: list[tuple[torch.nn.Module, torch.Tensor]], device: torch.device,
                 threads: int | None, warmup: int, repeat: int) -> list[float]:
    calls: list[Callable[[], Any]] = [(lambda b=b, x=x: b(x)) for b, x in blocks]
    clock = Clock(device)
    with timing_context(threads) as ctx:
        for c in calls:
            for _ in range(warmup):
                c()
        clock.sync()
        ctx.collect()
        times, _ = interleaved(calls, repeat, clock)
    return [statistics.median(t) for t in times]


def _load(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
        return {}
    return data


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def build_table(analysis: Analysis, *, batch: int = 1, threads: int | None = None,
                device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                step: int | None = None, warmup: int = 2, repeat: int = 5,
                cache: bool | str | Path = True,
                progress: Callable[[str, int, int], None] | None = None) -> LatencyTable:
    """Measure (or load) the latency table of an analyzed graph (see the module docstring).

    Args:
        analysis: from :func:`fxprune.analyze`.
        batch: the batch size to time at (the layers' other input dims are the example's).
        threads: torch threads while timing (default: the current count).
        device, dtype: where and in what precision to time (default: the model's).
        step: the width step; None measures it (:func:`derive_step`).
        warmup, repeat: per grid point.
        cache: True (default :func:`cache_dir`), False, or a folder.
        progress: optional callback ``(stage, done, total)``.
    """
    gm = analysis.gm
    p = next(iter(gm.parameters()), None)
    dev = torch.device(device) if device is not None else (
        p.device if p is not None else torch.device("cpu"))
    dt = dtype or (p.dtype if p is not None and p.is_floating_point() else torch.float32)
    n_threads = threads or torch.get_num_threads()
    key = cache_key(dev, dt, batch, n_threads)
    # the format too: tables of another fxprune version live in their own file
    digest = hashlib.sha256(json.dumps([FORMAT, key], sort_keys=True).encode()).hexdigest()[:16]
    path = None if cache is False else (
        cache_dir() if cache is True else Path(cache)) / f"{digest}.json"
    data = _load(path, key) if path is not None else {}
    stored: dict[str, Any] = dict(data.get("layers", {}))
    probes_stored: dict[str, Any] = dict(data.get("probes", {}))
    layers = find_layers(analysis)
    t0 = time.perf_counter()
    measured: list[str] = []
    if step is None:
        step, probe = _probe_step(layers, stored, probes_stored, batch, dev, dt, n_threads,
                                  warmup, repeat)
    else:
        probe = {"given": step}
    todo: dict[str, LayerSpec] = {}
    for s in layers:
        sig = f"{s.signature}|q{_quantum(s, step)}"
        if sig not in stored and sig not in todo:
            todo[sig] = s
    for i, (sig, s) in enumerate(todo.items()):
        if progress is not None:
            progress("latency table", i, len(todo))
        stored[sig] = _measure_grid(s, step, batch, dev, dt, n_threads, warmup, repeat).to_json()
        measured.append(sig)
    if progress is not None and todo:
        progress("latency table", len(todo), len(todo))
    seconds = time.perf_counter() - t0
    if path is not None and (measured or probe.get("measured")):
        _save(path, {"format": FORMAT, "key": key, "layers": stored, "probes": probes_stored})
    grids = {s.signature: Grid.from_json(stored[f"{s.signature}|q{_quantum(s, step)}"])
             for s in layers}
    return LatencyTable(layers=layers, grids=grids, step=step, key=key, measured_s=seconds,
                        measured=measured, probe=probe)


def _measure_grid(s: LayerSpec, step: int, batch: int, dev: torch.device, dt: torch.dtype,
                  threads: int, warmup: int, repeat: int) -> Grid:
    ins = _grid_widths(s.in_full, _quantum(s, step), s.varies_in)
    outs = _grid_widths(s.out_full, _quantum(s, step), s.varies_out)
    points = []
    for wi in ins:
        for wo in outs:
            i, o = s.snap(wi, wo)
            if s.depthwise:  # in follows out
                i = o * s.in_full // max(1, s.out_full) or 1
            points.append(s.build(i, o, batch, dev, dt))
    ms = _time_blocks(points, dev, threads, warmup, repeat)
    if s.depthwise:
        ins = [s.in_full]
        ms_rows = [tuple(ms)]
    else:
        ms_rows = [tuple(ms[i * len(outs):(i + 1) * len(outs)]) for i in range(len(ins))]
    return Grid(tuple(ins), tuple(outs), tuple(ms_rows))


def _probe_step(layers: list[LayerSpec], stored: dict[str, Any], probes: dict[str, Any],
                batch: int, dev: torch.device, dt: torch.dtype, threads: int, warmup: int,
                repeat: int) -> tuple[int, dict[str, Any]]:
    """Sweep the output width of the two costliest dense convs (by MACs) and derive the step."""
    cands = [s for s in layers if s.kind == "conv" and s.groups == 1 and not s.depthwise
             and s.varies_out and s.out_full >= 64]
    cands.sort(key=lambda s: -s.in_full * s.out_full * math.prod(s.input_shape[2:])
               * (s.module.weight[0, 0].numel()))
    seen: list[str] = []
    for s in cands:
        if s.signature not in seen:
            seen.append(s.signature)
    chosen = [next(s for s in cands if s.signature == sig) for sig in seen[:2]]
    data: list[tuple[list[int], list[float]]] = []
    fresh = False
    for s in chosen:
        base = max(32, (s.out_full // 2) // 32 * 32)
        ws = [base + j for j in _PROBE if base + j <= s.out_full]
        key = f"{s.signature}|probe{base}"
        if key not in probes:
            blocks = [s.build(s.in_full, w, batch, dev, dt) for w in ws]
            probes[key] = {"w": ws, "ms": _time_blocks(blocks, dev, threads, warmup,
                                                        max(repeat, 7))}
            fresh = True
        data.append((list(probes[key]["w"]), list(probes[key]["ms"])))
    step = derive_step(data)
    return step, {"measured": fresh, "layers": [s.name for s in chosen], "step": step}
