"""``python -m fxprune``: the command line (see :mod:`fxprune.cli`)."""

from __future__ import annotations

__all__: list[str] = []

import sys

from fxprune.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
