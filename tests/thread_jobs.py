"""Jobs of the concurrency tests (tests/ir/test_threads.py), in a module of their own so that a
spawned process can import them by name (conftest puts this folder on sys.path)."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn

import fxprune
from fxprune.models import create_model
from fxprune.testing import checked_compress, read_only_checks
from fxprune.tools.fuzz import random_model


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.proj(x)
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.head(torch.relu(a + h)).mean(1)


def case(k: int) -> tuple[nn.Module, torch.Tensor, str]:
    """Eight different small models (k % 8), fresh each call; (model, input, expected)."""
    torch.manual_seed(k)
    i = k % 8
    if i == 0:
        return create_model("resnet20").eval(), torch.randn(2, 3, 16, 16), "exact"
    if i == 1:
        return Attn().eval(), torch.randn(2, 5, 8), "exact"
    m, x = random_model(i)
    return m, x, "exact"


def job(k: int, shared: tuple) -> str:
    if k % 4 == 3:  # every fourth job reads the shared model instead
        return read_only_checks(*shared)
    model, x, expect = case(k)
    return checked_compress(model, x, expect=expect)["status"]


def single_threaded_compress_works() -> None:
    model, x, _ = case(0)
    pruned = fxprune.compress(model, 0.5, example_inputs=x)
    assert pruned.meta["fxprune.verify"].ok


def process_job(k: int) -> list[str]:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model, x, _ = case(0)
    shared = (model, fxprune.compress(model, 0.5, example_inputs=x), x)
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda j: job(j, shared), range(4 * k, 4 * k + 4)))
    single_threaded_compress_works()
    return out


