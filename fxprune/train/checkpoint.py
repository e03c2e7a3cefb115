"""Training checkpoints: everything a run needs to continue bit for bit.

A checkpoint is one ``torch.save`` file written atomically (a temporary file, then
``os.replace``) holding the epoch, the model, optimizer and scheduler state, the pruner's
state (masks, method state, its RNG), every rank's RNG states (torch CPU and CUDA, NumPy,
Python) and the history so far, plus the run's settings, which a resume must match.
"""

from __future__ import annotations

__all__ = ["FORMAT", "rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint"]

import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxprune.errors import InputError

FORMAT = "fxprune.train/1"
logger = logging.getLogger("fxprune.train")


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain data (tensors, ints, lists)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format tag) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Read as plain data (``weights_only=True``): no code from the file runs.

    Raises:
        InputError: the file is missing or not a fxprune training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"{path} holds Python objects that are not plain data; fxprune's checkpoints are "
            "plain data (read with weights_only=True), so this file was not written by "
            "fxprune.train.fit, and unpickling it could run code from it: refused") from e
    except Exception as e:  # noqa: BLE001 - reported as bad input
        raise InputError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a fxprune training checkpoint (format {FORMAT})")
    return ckpt
