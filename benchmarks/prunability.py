"""Prunability benchmark of timm or torchvision models (a thin wrapper around
:mod:`fxprune.bench.prunability`).

    python -P benchmarks/prunability.py --set default --against torch-pruning --out bench_out
    python -P benchmarks/prunability.py --set torchvision --against torch-pruning \
        --update benchmarks/results/prunability_torchvision.json
    python -P benchmarks/prunability.py --set ci
    python -P benchmarks/prunability.py --fuzz 2000

is the same as ``fxprune bench prunability ...``; see benchmarks/README.md.
"""

from __future__ import annotations

import sys

from fxprune.bench.prunability import main

if __name__ == "__main__":
    sys.exit(main(["prunability", *sys.argv[1:]]))
