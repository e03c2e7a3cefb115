"""Iterative (gradual) pruning: reach the target in ``steps`` cuts, fine-tuning after each.

One-shot pruning removes everything at once and then fine-tunes; iterative pruning (Han et
al. 2015; Li et al. 2017 prune-retrain) removes a share, fine-tunes, and removes more, so the
network can adapt between cuts. :func:`prune_iteratively` runs ``steps`` rounds of
:func:`fxprune.compress` + :func:`fxprune.train.fit` with the total ``epochs`` split over the
rounds, so its budget equals a one-shot run's. The schedule is geometric: after round ``i`` of
``k`` the model keeps ``keep ** (i / k)`` of the original's channels (``ratio``) or MACs
(``target_flops``), so every round removes the same share of what is left.
"""

from __future__ import annotations

__all__ = ["prune_iteratively", "step_targets"]

from collections.abc import Callable
from typing import Any

import torch.fx as fx
import torch.nn as nn

from fxprune.costs.count import count
from fxprune.errors import InputError
from fxprune.plan.compress import compress
from fxprune.train.trainer import History, fit


def step_targets(keep: float, steps: int) -> list[float]:
    """The cumulative fraction kept after each round: ``keep ** (i / steps)``, i = 1..steps."""
    return [keep ** (i / steps) for i in range(1, steps + 1)]


def _split(epochs: int, steps: int) -> list[int]:
    base, extra = divmod(epochs, steps)
    return [base + (1 if i >= steps - extra else 0) for i in range(steps)]


def prune_iteratively(
    model: nn.Module,
    ratio: float | None = None,
    *,
    target_flops: float | None = None,
    steps: int,
    train_loader: Any,
    val_loader: Any = None,
    epochs: int,
    example_inputs: Any = None,
    compress_kwargs: dict[str, Any] | None = None,
    fit_kwargs: dict[str, Any] | None = None,
    callback: Callable[[int, fx.GraphModule, History], None] | None = None,
) -> tuple[fx.GraphModule, list[History]]:
    """Prune ``model`` to ``ratio`` (fraction of channels removed) or ``target_flops`` (fraction
    of MACs kept) in ``steps`` rounds of compress + fine-tune; return the final model and each
    round's :class:`~fxprune.train.trainer.History`.

    The user's ``model`` is not changed (each round compresses a copy and trains the copy).
    ``epochs`` is the total: round ``i`` trains ``epochs // steps`` epochs (the last rounds one
    more when it does not divide). ``compress_kwargs`` go to every :func:`fxprune.compress`
    (criterion, allocation, ...); ``fit_kwargs`` to every :func:`fxprune.train.fit` (``lr`` is
    required there, as in ``fit``). ``callback(round, model, history)`` runs after each round.
    """
    if (ratio is None) == (target_flops is None):
        raise InputError("prune_iteratively: give exactly one of ratio= (channels removed) or "
                         "target_flops= (MACs kept)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"prune_iteratively: steps must be an int >= 1, got {steps!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < steps:
        raise InputError(f"prune_iteratively: epochs must be an int >= steps ({steps}), "
                         f"got {epochs!r}")
    ckw = dict(compress_kwargs or {})
    fkw = dict(fit_kwargs or {})
    if "lr" not in fkw:
        raise InputError("prune_iteratively: fit_kwargs must hold lr= (the fine-tuning rate)")
    for key in ("ratio", "target_flops", "example_inputs"):
        if key in ckw:
            raise InputError(f"prune_iteratively: pass {key}= directly, not in compress_kwargs")
    keep = 1.0 - ratio if ratio is not None else float(target_flops)
    if not 0.0 < keep <= 1.0:
        raise InputError(f"prune_iteratively: the fraction kept must be in (0, 1], got {keep}")
    macs0 = count(model, example_inputs).macs if target_flops is not None else None
    current: nn.Module = model
    done = 1.0
    histories = []
    for i, (cum, n_epochs) in enumerate(zip(step_targets(keep, steps), _split(epochs, steps))):
        if ratio is not None:  # the same share of the channels that are left
            pruned = compress(current, 1.0 - cum / done, example_inputs=example_inputs, **ckw)
            done = cum
        else:
            now = count(current, example_inputs).macs
            pruned = compress(current, target_flops=min(1.0, cum * macs0 / now),
                              example_inputs=example_inputs, **ckw)
        hist = fit(pruned, train_loader, val_loader, n_epochs, **fkw)
        histories.append(hist)
        if callback is not None:
            callback(i, pruned, hist)
        current = pruned
    return current, histories  # type: ignore[return-value]
