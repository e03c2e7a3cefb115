"""Training-time pruning: soft masks inside any training loop, compiled by fxprune at the end.

:class:`SoftPruner` (engine) and the methods (:mod:`fxprune.train.methods`: ``sfp``/``soft``,
``fpgm``, ``mfp``, ``fppmo``).
"""

from __future__ import annotations

__all__ = ["SoftPruner", "Method", "register_method", "get_method", "list_methods"]

from .engine import SoftPruner
from .methods import Method, get_method, list_methods, register_method
