"""First-order Taylor importance from calibration batches (Molchanov et al. 2017/2019).

Removing a unit zeroes its parameters; to first order the loss changes by
``-sum_s w_s * dL/dw_s`` over those parameters. A unit's score is the magnitude
``|sum_s w_s * dL/dw_s|`` summed over the group's producer filters (role ``"out"``) and
per-channel parameters (role ``"channel"``: norm scale and shift); a group with neither uses
its consumers' input slices (role ``"in"``). Buffers (running statistics) are skipped.

The loss needs no labels: cross-entropy of the model's output against its own argmax over
dim 1 (pseudo-labels; for each floating output with ``dim >= 2`` and more than one channel),
and ``0.5 * ||y||^2 / batch`` for any other floating output; the losses of all outputs add up.
``L`` is the mean over the calibration batches, so ``dL/dw`` is their averaged gradient.

``ctx.data`` is an iterable of batches: a tensor, or a tuple/list whose first ``k`` items are the
model's ``k`` inputs (extra items, e.g. labels, are ignored). The gradients are taken with
``torch.autograd.grad`` on ``ctx.root`` (which shares the user's parameters) in eval mode; the
training flags and ``requires_grad`` flags are restored and no ``.grad`` is written. They are
computed once per scoring run (cached in ``ctx.cache``, which belongs to that run: concurrent
runs in other threads do not share it), so a one-shot iterator is read only once.
"""

from __future__ import annotations

__all__ = ["taylor", "calibration_grads"]

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fxprune.criteria import CriterionCtx, register_criterion
from fxprune.errors import FxPruneError, InputError, short_error
from fxprune.ir.meta import Group


def _loss(out: Any) -> Tensor:
    tensors = [t for t in _flatten(out) if t.is_floating_point()]
    if not tensors:
        raise InputError("taylor: the model returned no floating-point tensor to build a loss on")
    total = tensors[0].new_zeros(())
    for y in tensors:
        if y.dim() >= 2 and y.shape[1] > 1:
            total = total + F.cross_entropy(y, y.detach().argmax(dim=1))
        else:
            total = total + 0.5 * y.pow(2).sum() / max(1, y.shape[0] if y.dim() else 1)
    return total


def _flatten(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    return []


def _n_inputs(root: nn.Module) -> int | None:
    if isinstance(root, fx.GraphModule):
        return sum(1 for n in root.graph.nodes if n.op == "placeholder")
    return None


def calibration_grads(root: nn.Module, data: Any, cache: dict[str, Any] | None = None
                      ) -> dict[int, Tensor]:
    """``{id(param): dL/dparam}`` averaged over the batches of ``data`` (see module docstring).

    ``cache``: a dict owned by the caller (a scoring run's ``ctx.cache``) that keeps the result
    for the same root, data and parameter values."""
    params = [p for p in root.parameters() if p.is_floating_point()]
    versions = tuple(p._version for p in params)
    hit = None if cache is None else cache.get("taylor")
    if hit is not None and hit[0] is root and hit[1] is data and hit[2] == versions:
        return hit[3]
    k = _n_inputs(root)
    training = {m: m.training for m in root.modules()}
    requires = [p.requires_grad for p in params]
    sums = [torch.zeros_like(p) for p in params]
    n = 0
    try:
        root.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in data:
                inputs = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
                loss = _loss(_forward(root, inputs[:k] if k is not None else inputs, n))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for s, g in zip(sums, grads):
                    if g is not None:
                        s += g
                n += 1
    finally:
        for m, t in training.items():
            m.training = t
        for p, r in zip(params, requires):
            p.requires_grad_(r)
    if n == 0:
        raise InputError("criterion 'taylor': the calibration data yielded no batches. Hint: "
                         "pass data=[batch, ...] (a list can be read more than once).")
    grads = {id(p): s / n for p, s in zip(params, sums)}
    if cache is not None:
        cache["taylor"] = (root, data, versions, grads)
    return grads


def _forward(root: nn.Module, inputs: tuple, i: int) -> Any:
    """The model on calibration batch ``i``, or an InputError saying that it does not fit."""
    try:
        return root(*inputs)
    except FxPruneError:
        raise
    except Exception as e:  # noqa: BLE001 - reported as bad data, with the shapes
        shapes = ", ".join(str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
                           for x in inputs)
        want = ", ".join(str(tuple(x.shape)) for x in _example_inputs(root))
        raise InputError(
            f"criterion 'taylor': data= batch {i} ({shapes}) does not fit the model: "
            f"{short_error(e).splitlines()[0][:300]}. Hint: every batch must be shaped like "
            f"the model's example inputs{f' ({want})' if want else ''} apart from the batch "
            "size: a tensor, or a tuple whose first items are forward's arguments.") from e


def _example_inputs(root: nn.Module) -> list[Tensor]:
    inputs = getattr(root, "meta", {}).get("fxprune.example_inputs") or ()
    return [x for x in inputs if isinstance(x, Tensor)]


@register_criterion("taylor", needs_data=True)
def taylor(group: Group, ctx: CriterionCtx) -> Tensor:
    """First-order Taylor |sum w*dL/dw| per unit (Molchanov et al.); needs calibration data."""
    grads = calibration_grads(ctx.root, ctx.data, ctx.cache)
    total = torch.zeros(group.size, dtype=torch.float64)
    for roles in (("out", "channel"), ("in",)):
        used = 0
        for m in group.members:
            if m.role not in roles or not m.param:
                continue
            try:
                p = ctx.root.get_parameter(m.path)
            except AttributeError:  # a buffer
                continue
            g = grads.get(id(p))
            if g is None:
                continue
            wg = (p.detach() * g).movedim(m.dim, 0)
            total += group.reduce(m, wg.reshape(wg.shape[0], -1).sum(dim=1).double())
            used += 1
        if used:
            break
    return total.abs()
