"""Datasets for training (``fxprune.data``): a re-export of :mod:`fxprune.train.data`."""

from __future__ import annotations

from fxprune.train.data import *  # noqa: F403
from fxprune.train.data import __all__  # noqa: F401
