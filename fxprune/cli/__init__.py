"""The ``fxprune`` command line: :mod:`.app` builds the parser and dispatches;
one module per command.

Layer 12 (top): may import every other layer."""

from __future__ import annotations

__all__ = ["main"]

from fxprune.cli.app import main
