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

from .finalize import STRIPES, LayerReport, finalize, fold
from .forms import CroppedConv2d, StripeConv2d
from .pruner import StripePruner
from .skeleton import SkeletonConv2d, insert_skeletons, remove_skeletons
