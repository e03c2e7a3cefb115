"""The test split, readable only for the reported numbers.

:class:`HeldOut` wraps the test loader: iterating it raises unless inside
:meth:`HeldOut.reading`, which only the benchmark's final evaluations open. A pruner, scorer,
schedule, recalibration or fine-tuning step that were handed the test split by mistake fails
loudly instead of tuning on it (tests/bench/test_accuracy_recipes.py checks this).
"""

from __future__ import annotations

__all__ = ["HeldOut", "TestSplitError"]

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class TestSplitError(RuntimeError):
    """The test split was read outside a reported evaluation."""

    __test__ = False  # not a pytest class


class HeldOut:
    """A loader that can be iterated only inside :meth:`reading`."""

    def __init__(self, loader: Any, name: str = "test"):
        self._loader, self.name, self._open = loader, name, False

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """Open the split for one reported evaluation; yields the plain loader."""
        self._open = True
        try:
            yield self._loader
        finally:
            self._open = False

    def __iter__(self) -> Iterator[Any]:
        if not self._open:
            raise TestSplitError(f"the {self.name} split was read outside the final evaluation "
                                 "(a pruner, scorer, schedule or training step got it): only "
                                 "the reported accuracies may read it")
        return iter(self._loader)

    def __len__(self) -> int:
        return len(self._loader)
