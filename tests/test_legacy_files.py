"""Files saved by the previous release (tests/fixtures/legacy, made by make.py at 685fa08,
without ties, per-module flags or manifest widths) still load, and reproduce their outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fxprune
from fxprune.serialize import read

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.mark.parametrize("name", ["plain", "scatter", "attention", "stripes"])
def test_legacy_file_loads_and_reproduces_its_outputs(name):
    payload = read(LEGACY / f"{name}.pt")
    assert not {"ties", "module_training", "manifest_widths"} & set(payload)
    x, want = torch.load(LEGACY / "expected.pt", weights_only=True)[name]
    gm = fxprune.load(LEGACY / f"{name}.pt")
    with torch.no_grad():
        torch.testing.assert_close(gm.eval()(x), want, rtol=0, atol=0)
