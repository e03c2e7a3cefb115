"""Predicted against measured time per layer block (``fxprune inspect --latency``).

*Predicted*: the latency table's interpolation at the block's widths (after the selected
keep-sets, if any). *Measured*: the same block built at exactly those widths and timed alone
with the table's harness (warm-up, interleaved medians), so the two columns show how well the
small grid interpolates; neither includes the ops outside conv/linear blocks.
"""

from __future__ import annotations

__all__ = ["layer_times"]

from typing import Any

import torch

from fxprune.core.analyze import Analysis
from fxprune.costs.latency.table import _time_blocks, build_table
from fxprune.ir import meta


def layer_times(analysis: Analysis, keep: dict[int, meta.KeepSet] | None = None, *,
                batch: int = 1, threads: int | None = None, device: Any = None,
                repeat: int = 5, warmup: int = 2, cache: Any = True
                ) -> dict[str, dict[str, float]]:
    """``{module name: {"predicted_ms", "measured_ms"}}`` for every conv/linear block."""
    table = build_table(analysis, batch=batch, threads=threads, device=device, cache=cache)
    masks: dict[int, torch.Tensor] = {}
    for gid, ks in (keep or {}).items():
        m = torch.zeros(ks.size, dtype=torch.bool)
        m[list(ks.indices)] = True
        masks[gid] = m
    p = next(iter(analysis.gm.parameters()), None)
    dev = torch.device(device) if device is not None else (
        p.device if p is not None else torch.device("cpu"))
    dt = p.dtype if p is not None and p.is_floating_point() else torch.float32
    widths = [s.snap(s.width_in(masks), s.width_out(masks)) for s in table.layers]
    blocks = [s.build(i, o, batch, dev, dt) for s, (i, o) in zip(table.layers, widths)]
    measured = _time_blocks(blocks, dev, threads or torch.get_num_threads(), warmup, repeat)
    return {s.name: {"predicted_ms": table.grids[s.signature](i, o), "measured_ms": ms}
            for s, (i, o), ms in zip(table.layers, widths, measured)}
