"""Stripe-wise pruning (SWP, "Pruning Filter in Filter", algorithms.md §6).

* :mod:`~fxprune.stripes.skeleton`: the Filter Skeleton (insertion, L1 regulariser, threshold);
* :mod:`~fxprune.stripes.forms`: the exact conv forms a stripe-pruned layer is emitted as;
* :mod:`~fxprune.stripes.probe`: the per-layer dense-vs-stripe timing probe (cached);
* :mod:`~fxprune.stripes.finalize`: fold -> channel clean-up -> dead positions -> kernel choice;
* :mod:`~fxprune.stripes.pruner`: :class:`StripePruner`, training hooks + finalize.
"""

from __future__ import annotations

__all__ = [
    "StripePruner",
    "SkeletonConv2d",
    "StripeConv2d",
    "CroppedConv2d",
    "insert_skeletons",
    "remove_skeletons",
    "finalize",
    "fold",
    "LayerReport",
    "STRIPES",
]

from fxprune.stripes.finalize import STRIPES, LayerReport, finalize, fold
from fxprune.stripes.forms import CroppedConv2d, StripeConv2d
from fxprune.stripes.pruner import StripePruner
from fxprune.stripes.skeleton import SkeletonConv2d, insert_skeletons, remove_skeletons
