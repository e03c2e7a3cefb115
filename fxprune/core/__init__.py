"""The compiler core: trace (and decompose) -> analyze (rules) -> select -> rewrite -> verify.

Layer 4: imports :mod:`fxprune.ir`, :mod:`fxprune.rules`, :mod:`fxprune.criteria`."""

from __future__ import annotations
