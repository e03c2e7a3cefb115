"""Built-in pruning criteria, one per file; importing this package registers them all.

Installed as ``fxprune.passes``. Each module registers one scoring function with
``fxprune.register_criterion``; the file name equals the criterion name.
"""

from __future__ import annotations

__all__ = ["bn_scale", "fpgm", "l1", "l2", "random", "rnf", "taylor"]

from . import bn_scale, fpgm, l1, l2, random, rnf, taylor  # noqa: F401
