"""What a training method sees of the pruner: :class:`PrunerContext`.

The engine (:class:`fxprune.train.SoftPruner`) calls the methods (:mod:`fxprune.train.methods`)
and the methods call back into the engine through this protocol, so the methods import this
module and not the engine: the dependency goes one way, engine → methods → context.
"""

from __future__ import annotations

__all__ = ["Keep", "PrunerContext"]

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.ir.meta import KeepSet

Keep = dict[int, KeepSet]  # {group id: the units it keeps}


class PrunerContext(Protocol):
    """The pruner as a method uses it (:class:`fxprune.train.SoftPruner` implements it)."""

    model: nn.Module  # the user's model, trained in place
    analysis: Analysis  # groups, members, frozen units of the traced model
    inputs: tuple  # the example inputs (training resolution)
    data: Any  # validation batches for methods that evaluate masks, or None
    seed: int
    epoch: int  # epochs ended so far
    epochs: int | None  # the run's length in epochs, when known
    settle: int  # the last epochs that train under the final selection
    criterion: Any  # the criterion name or function (None: the method has none)
    round_to: int | None
    counts: dict[int, int]  # units each group keeps under the allocation
    keep: Keep  # the current selection

    def scores(self, criterion: Any) -> dict[int, Tensor]:
        """Scores of every prunable group under ``criterion``, on the current weights."""
        ...

    def select(self, scores: Mapping[int, Tensor]) -> Keep:
        """Keep-sets for these scores at the allocated per-group ratios."""
        ...

    def full_keep(self) -> Keep:
        """Every group keeps all of its units."""
        ...

    def normalize(self, keep: Keep) -> Keep:
        """Complete ``keep`` as :func:`fxprune.select` does (>= 1 channel per value)."""
        ...

    def trial(self, keep: Keep) -> AbstractContextManager[Keep]:
        """Apply ``keep``'s masks temporarily (weights restored on exit)."""
        ...

    def evaluate(self, keep: Keep, attribute: Any) -> float:
        """``attribute(model)`` (eval mode, no grad) of the network masked by ``keep``."""
        ...
