#!/usr/bin/env bash
# The wheel as users get it (bash .ci/wheel_smoke.sh FILE.whl): installed non-editable in a
# fresh venv (its dependencies come from the environment CI installed), run from outside the
# checkout: fxprune --help, compress on a small model, and the accuracy benchmark's smoke preset.
set -euo pipefail
whl=$(realpath "$1")
work=$(mktemp -d)
python -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --no-deps --no-index --force-reinstall "$whl"
cd "$work"
"$work/venv/bin/python" -P - <<'PY'
import sys

import fxprune

assert fxprune.__file__.startswith(sys.prefix), f"fxprune came from {fxprune.__file__}"
PY
run() { "$@" >"$work/log" 2>&1 || { cat "$work/log"; echo "wheel smoke failed: $*"; exit 1; }; }
run "$work/venv/bin/fxprune" --help
run "$work/venv/bin/fxprune" compress cifar:resnet20 --ratio 0.5 -o "$work/r20.pt"
run "$work/venv/bin/fxprune" bench accuracy --preset smoke --out "$work/smoke.json"
echo "wheel smoke: fxprune --help, compress and bench accuracy --preset smoke ran from the wheel"
