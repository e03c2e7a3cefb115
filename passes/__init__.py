"""Built-in pruning criteria, one per file; importing this package registers them all.

Installed as ``fxprune.passes``. Each module registers one scoring function with
``fxprune.register_criterion``; the file name equals the criterion name.
"""

from __future__ import annotations

__all__ = ["l1", "l2", "random"]

from . import l1, l2, random  # noqa: F401
