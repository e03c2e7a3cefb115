"""Meta-attributes / rewards of a (soft-pruned) network on held-out batches: lower is better.

``data`` must be batches of a **validation split carved from the training data**, never the
test set: MFP and FPPMO choose masks by these numbers, so test data here would leak into the
model selection and make reported test accuracy optimistic.
"""

from __future__ import annotations

__all__ = ["make_attribute", "check_data", "ATTRIBUTES"]

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fxprune.errors import InputError

ATTRIBUTES = ("loss", "accuracy")
Attribute = Callable[[nn.Module], float]


def check_data(method: str, data: Any) -> None:
    if data is None:
        raise InputError(
            f"method '{method}' evaluates candidate masks and needs data=: an iterable of (x, y) "
            "batches from a validation split of the training data (never the test set).")
    if iter(data) is data:
        raise InputError(
            f"method '{method}': data= is read at every pruning step, so it must be re-iterable "
            "(a list of batches or a DataLoader), not an iterator or generator. Hint: "
            "data=list(itertools.islice(val_loader, 4)).")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _split(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise InputError("data= batches must be (inputs, labels) pairs for the 'loss' and "
                         "'accuracy' attributes. Hint: pass attribute=<callable(model) -> float> "
                         "for unlabeled data.")
    return batch[0], batch[1]


def make_attribute(attribute: Any, data: Iterable[Any], *, loss_fn: Any = None,
                   eval_batches: int | None = None) -> Attribute:
    """A function ``model -> float`` (lower is better), run in eval mode without gradients.

    ``attribute``: ``"loss"`` (mean of ``loss_fn``, default cross-entropy, over the batches,
    weighted by batch size), ``"accuracy"`` (minus the top-1 accuracy) or a callable
    ``model -> float`` (lower is better; it may read anything, ``data`` is not passed).
    ``eval_batches`` limits how many batches of ``data`` are used (None: all).
    """
    if callable(attribute):
        return attribute
    if attribute not in ATTRIBUTES:
        raise InputError(f"attribute must be one of {', '.join(ATTRIBUTES)} or a callable "
                         f"model -> float (lower is better), got {attribute!r}")
    if eval_batches is not None and (isinstance(eval_batches, bool)
                                     or not isinstance(eval_batches, int) or eval_batches < 1):
        raise InputError(f"eval_batches must be a positive int or None, got {eval_batches!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise InputError(f"loss_fn must be a callable (logits, labels) -> loss, got {loss_fn!r}")
    loss = loss_fn or F.cross_entropy

    def evaluate(model: nn.Module) -> float:
        dev = _device(model)
        total, n = 0.0, 0
        for batch in itertools.islice(data, eval_batches):
            x, y = _split(batch)
            x, y = x.to(dev), y.to(dev)
            out = model(x)
            if attribute == "loss":
                total += float(loss(out, y)) * len(y)
            else:
                total -= float((out.argmax(1) == y).sum())
            n += len(y)
        if n == 0:
            raise InputError("data= yielded no batches")
        return total / n

    return evaluate


def run_eval(model: nn.Module, fn: Attribute) -> float:
    """``fn(model)`` in eval mode, without gradients; training flags restored."""
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            return float(fn(model))
    finally:
        for m, t in flags.items():
            m.training = t
