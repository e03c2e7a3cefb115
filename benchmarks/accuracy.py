"""Accuracy benchmark (issue 12): the same as ``fxprune bench accuracy``.

    python benchmarks/accuracy.py --preset cpu --out benchmarks/results
"""

import sys

from fxprune.cli.bench_accuracy import main

if __name__ == "__main__":
    sys.exit(main())
