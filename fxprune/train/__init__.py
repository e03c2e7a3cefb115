"""Training-time pruning: the soft-pruning engine, its methods, a trainer and datasets.

* :func:`fit` (:mod:`fxprune.train.trainer`): SGD/Nesterov, cosine/step schedules, label
  smoothing, checkpoints with exact resume, tqdm, DistributedDataParallel under torchrun.
* :mod:`fxprune.train.data` (also ``fxprune.data``): digits, Fashion-MNIST (IDX), ImageFolder.
* ``SoftPruner`` (:mod:`fxprune.train.engine`): masks kept by optimizer step hooks.
"""

from __future__ import annotations

__all__ = ["fit", "evaluate", "History", "EpochRecord", "data", "SoftPruner"]

from typing import Any

from . import data
from .trainer import EpochRecord, History, evaluate, fit


def __getattr__(name: str) -> Any:
    if name == "SoftPruner":  # provided by fxprune.train.engine
        from .engine import SoftPruner

        return SoftPruner
    raise AttributeError(f"module 'fxprune.train' has no attribute {name!r}")
