"""Models torch.fx's symbolic tracer cannot trace (issue 23): a thin wrapper around
``fxprune bench prunability --set detection|huggingface`` (the sets and conventions are in
:mod:`fxprune.bench.beyond`), Torch-Pruning beside, results merged into
``benchmarks/results/prunability_<set>.json`` (and ``.md``)::

    python -P benchmarks/beyond_fx.py --set detection      # + ultralytics where installed
    python -P benchmarks/beyond_fx.py --set huggingface    # needs transformers

Extra arguments are passed on (``--models yolov8n,yolo11n``, ``--timeout 900``).
"""

from __future__ import annotations

import sys

from fxprune.bench.prunability import main


def run(argv: list[str]) -> int:
    which = argv[argv.index("--set") + 1] if "--set" in argv else "detection"
    rest = [a for a in argv if a not in ("--set", which)]
    return main(["prunability", "--set", which, "--against", "torch-pruning", "--timeout",
                 "900", "--mem-gb", "0", "--threads", "1", "--out", f"bench_out/{which}",
                 "--update", f"benchmarks/results/prunability_{which}.json", *rest])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
