"""Latency: honest measurement, a per-layer latency model of the device, and latency targets.

- :mod:`fxprune.costs.latency.measure`: :func:`measure_latency` times models (eager modules or ONNX
  Runtime sessions) interleaved, with warm-up, medians and IQRs.
- :mod:`fxprune.costs.latency.table`: :class:`LatencyTable`, each prunable layer's time as a
function
  of its (in, out) width at its real input shape, measured on a small grid of single-layer
  modules, interpolated, cached as JSON per device/dtype/batch/threads/torch version.
- :mod:`fxprune.plan.latency_target`: ``compress(model, target_latency=0.5)``: a greedy allocation
  that keeps the most importance per millisecond under the table's budget, refined by
  measuring the rewritten model.
"""

from __future__ import annotations

__all__ = ["measure_latency", "LatencyReport", "auto_round_to", "resolve_round_to",
           "PAGE_FAULT_WARN",
           "LatencyTable", "build_table", "cache_dir"]

from fxprune.costs.latency.measure import (
           PAGE_FAULT_WARN,
           LatencyReport,
           auto_round_to,
           measure_latency,
           resolve_round_to,
)
from fxprune.costs.latency.table import LatencyTable, build_table, cache_dir
