"""Benchmarks: prunability coverage sets side by side with Torch-Pruning
(:mod:`.prunability`, :mod:`.sets`, :mod:`.report`, :mod:`.oracle`) and the accuracy benchmark
(:mod:`.accuracy`).

Layer 11."""

from __future__ import annotations
