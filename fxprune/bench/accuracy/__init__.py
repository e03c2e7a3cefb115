"""Accuracy on real data: every method against a dense baseline and Torch-Pruning at the same
MACs (``fxprune bench accuracy``, ``benchmarks/accuracy.py``).

- :mod:`.presets`: the protocol (presets ``smoke``/``cpu``/``full``, methods, rows);
- :mod:`.rows`: one row (dense baseline, one-shot + fine-tune, soft pruning + finalize, SWP,
  Torch-Pruning tuned to the same MACs), run in a worker process;
- :mod:`.runner`: dense baselines then rows, in parallel, resumable JSON;
- :mod:`.report`: the markdown table (mean ± std over seeds).
"""

from fxprune.bench.accuracy.presets import METHODS, PRESETS, Preset
from fxprune.bench.accuracy.runner import run

__all__ = ["METHODS", "PRESETS", "Preset", "run"]
