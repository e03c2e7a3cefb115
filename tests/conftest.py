"""Shared test setup: deterministic seeds and a small thread count (CI has 2 cores)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# test helper modules (train_helpers) import by name, here and in the
# subprocesses the DDP tests start (which get the same folder on PYTHONPATH)
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


torch.set_num_threads(1)
