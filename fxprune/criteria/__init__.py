"""Criterion registry and the helpers criteria share.

A criterion is a pure function ``(group, ctx) -> Tensor[group.size]``: a higher score means a
more important unit. It reads parameters through the group's uniform :class:`ParamSlice` view
and never branches on op types. Selection (ratios, rounding, frozen units) happens elsewhere.
Criteria live in ``fxprune.passes`` (one file each) and register with
:func:`register_criterion`.
"""

from __future__ import annotations

__all__ = ["CriterionCtx", "Criterion", "register_criterion", "get_criterion",
           "list_criteria", "producer_scores", "checked_scores", "average_members", "CRITERIA",
           "CountRule", "GroupScoring"]

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.criteria.scoring import GroupScoring, combine, scored_members
from fxprune.errors import InputError
from fxprune.ir.meta import Group, ParamSlice


@dataclass(frozen=True)
class CriterionCtx:
    """What a criterion may read: the model holding the parameters, optional data, a seed, and
    which of a group's slices magnitude criteria score (:class:`GroupScoring`)."""

    root: nn.Module
    data: Any = None
    seed: int = 0
    scoring: GroupScoring = GroupScoring()
    #: What a criterion computes once per scoring run (e.g. taylor's gradients): this run's
    #: own, never shared with other runs or threads.
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


CriterionFn = Callable[[Group, CriterionCtx], Tensor]
# (units n, ratio r) -> units removed: a method's own rounding under a uniform rate (the default
# is floor(n * r)); e.g. FPGM-mix's int(n(1 - rate_norm)) + int(n rate_dist), see passes/fpgm.py
CountRule = Callable[[int, float], int]


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: CriterionFn
    needs_data: bool
    summary: str
    count_rule: CountRule | None = None

    def __call__(self, group: Group, ctx: CriterionCtx) -> Tensor:
        if self.needs_data and ctx.data is None:
            raise InputError(
                f"criterion '{self.name}' needs calibration data. Hint: pass data=<an iterable "
                "of input batches>, or choose a data-free criterion such as 'l1'.")
        return checked_scores(self.name, group, self.fn(group, ctx))


CRITERIA: dict[str, Criterion] = {}


def checked_scores(name: str, group: Group, out: Any) -> Tensor:
    """A criterion's result as float64 scores on the CPU, or an InputError naming the criterion.

    It must be a real-valued (floating or integer) tensor of shape ``[group.size]`` with finite
    values: a wrong result would otherwise prune arbitrary (e.g. the lowest-index) units.
    """
    want = (f"a 1-D tensor of {group.size} finite real scores (one per unit of group "
            f"{group.id}; higher = more important)")
    what = f"criterion '{name}' returned"
    if not isinstance(out, Tensor):
        raise InputError(f"{what} {_describe(out)}; expected {want}. Hint: return a tensor, e.g. "
                         "torch.as_tensor(scores, dtype=torch.float64).")
    if out.dtype == torch.bool or out.is_complex():
        raise InputError(f"{what} a tensor of dtype {out.dtype}; expected {want}.")
    if tuple(out.shape) != (group.size,):
        raise InputError(f"{what} a tensor of shape {tuple(out.shape)}; expected {want}. Hint: "
                         "score the group's units (group.size), not its channels or filters; "
                         "fxprune.criteria.producer_scores does the bookkeeping.")
    scores = out.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten()[:5].tolist()
        raise InputError(f"{what} {int(bad.sum())} non-finite score(s) (NaN or inf) for group "
                         f"{group.id}, at units {idx}{' ...' if int(bad.sum()) > 5 else ''}; "
                         f"expected {want}.")
    return scores


def _describe(v: Any) -> str:
    if v is None:
        return "None"
    n = f" of length {len(v)}" if hasattr(v, "__len__") else ""
    return f"a {type(v).__module__}.{type(v).__qualname__}{n}".replace("builtins.", "")


def register_criterion(name: str, *, needs_data: bool = False,
                       count_rule: CountRule | None = None
                       ) -> Callable[[CriterionFn], CriterionFn]:
    """Register a scoring function under ``name`` (the value of ``criterion=`` / ``--criterion``).

    The first line of the function's docstring is its one-line help text. ``count_rule`` (also
    read from a ``count_rule`` attribute of the function) is the method's own number of units
    removed at a uniform rate, when it is not ``floor(n * ratio)``.
    """

    def deco(fn: CriterionFn) -> CriterionFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        CRITERIA[name] = Criterion(name, fn, needs_data, doc[0] if doc else name,
                                   count_rule or getattr(fn, "count_rule", None))
        return fn

    return deco


def _load_builtin() -> None:
    importlib.import_module("fxprune.passes")


def get_criterion(name: str | Criterion | CriterionFn) -> Criterion:
    """Look up a criterion by name (or wrap a plain scoring function)."""
    if isinstance(name, Criterion):
        return name
    if callable(name):
        return Criterion(getattr(name, "__name__", "custom"), name, False, "custom criterion",
                         getattr(name, "count_rule", None))
    _load_builtin()
    if name not in CRITERIA:
        raise InputError(
            f"unknown criterion '{name}'. Available: {', '.join(sorted(CRITERIA))}. "
            "Hint: register your own with @fxprune.register_criterion('name').")
    return CRITERIA[name]


def list_criteria() -> list[Criterion]:
    _load_builtin()
    return [CRITERIA[k] for k in sorted(CRITERIA)]


def producer_scores(group: Group, ctx: CriterionCtx,
                    per_entry: Callable[[Tensor], Tensor]) -> Tensor:
    """Combine a per-entry statistic over the group's slices into one score per unit.

    ``per_entry`` maps a parameter slice viewed as ``[len, rest]`` to ``[len]``. Which slices
    and how they combine is ``ctx.scoring`` (:class:`~fxprune.criteria.scoring.GroupScoring`).
    By default the members used are the producers' filters (role ``"out"``); a group without
    producers (e.g. a depthwise chain fed by a frozen input) falls back to its per-channel
    parameters, then to its consumers' slices. Each member's unit scores are normalized by
    their mean (over the units it feeds), and a unit's score is the *average* over the members
    that feed it. A residual group whose units are fed by different numbers of producers
    (option-A CIFAR ResNets: channels 0-15 of the stream by every stage, 32-63 by stage 3
    only) is then ranked without a bias towards the units with more producers; a sum would
    prune only the units with the fewest.
    """
    members = scored_members(group, ctx.root, ctx.scoring.members)
    if not members:
        return torch.zeros(group.size)
    tensors = [(m, m.tensor(ctx.root)) for m in members]
    return combine(group, ((m, per_entry(w.reshape(w.shape[0], -1)).double())
                           for m, w in tensors), ctx.scoring)


def average_members(group: Group, parts: Iterable[tuple[ParamSlice, Tensor]]) -> Tensor:
    """Per-unit scores from per-entry scores of several members: each member's scores divided by
    their mean over the units it feeds, then averaged over the members that feed each unit."""
    return combine(group, parts)
