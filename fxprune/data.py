"""Datasets for training (``fxprune.data``): a re-export of :mod:`fxprune.train.data`."""

from __future__ import annotations

from .train.data import *  # noqa: F403
from .train.data import __all__  # noqa: F401
