"""What a model costs: MACs and parameters (:mod:`.count`), the papers' FLOPs
conventions (:mod:`.paper_flops`) and measured latency (:mod:`.latency`).

Layer 5: imports the compiler core and below."""

from __future__ import annotations
