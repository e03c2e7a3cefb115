"""Training-time pruning: the soft-pruning engine, its methods, a trainer and datasets.

* :class:`SoftPruner` (:mod:`fxprune.train.engine`): masks kept by optimizer step hooks, and the
  methods (:mod:`fxprune.train.methods`: ``sfp``/``soft``, ``fpgm``, ``mfp``, ``fppmo``).
* :func:`fit` (:mod:`fxprune.train.trainer`): SGD/Nesterov, cosine/step schedules, label
  smoothing, checkpoints with exact resume, tqdm, DistributedDataParallel under torchrun.
* :mod:`fxprune.train.data` (also ``fxprune.data``): digits, Fashion-MNIST (IDX), ImageFolder.
"""

from __future__ import annotations

__all__ = ["SoftPruner", "Method", "register_method", "get_method", "list_methods",
           "fit", "evaluate", "History", "EpochRecord", "data"]

from fxprune.train import data
from fxprune.train.engine import SoftPruner
from fxprune.train.methods import Method, get_method, list_methods, register_method
from fxprune.train.trainer import EpochRecord, History, evaluate, fit
