"""Option objects: the options of :func:`fxprune.compress` (and :func:`fxprune.train.fit`)
grouped by what they decide, each a dataclass with defaults.

An entry point takes each group as one object (``analysis=AnalysisOptions(...)``) *or* its
fields as keywords of the same name (``residual="scatter"``), the spelling of every earlier
release; both may be mixed as long as no field is given twice with two values.
:func:`with_keywords` and :func:`route_keywords` do that merge for every entry point.
"""

from __future__ import annotations

__all__ = ["AnalysisOptions", "LatencyOptions", "VerifyOptions", "non_default",
           "route_keywords", "with_keywords"]

import dataclasses
import difflib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fxprune.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class AnalysisOptions:
    """How the graph is read: which channels may be pruned and how they couple.

    Attributes:
        ignore: modules whose output channels are kept: instances, qualified names (globs
            allowed) or types. Channels reaching the graph output are always kept.
        strict: raise :class:`~fxprune.UnsupportedOpError` listing every op without a channel
            rule, instead of keeping their channels with a warning.
        residual: ``"coupled"`` (default: one keep-set per residual group, the stream
            narrows) or ``"scatter"`` (the SFP/FPGM convention: every residual-output conv
            keeps its own channels and is ``index_add``-ed into a full-width stream, with the
            BatchNorm constants of its removed channels folded in; exact).
        attention: how attention is pruned (:mod:`fxprune.rules.attention`): ``"dims"``
            (default: every head keeps its place and loses the same dims; q and k share
            them) or ``"heads"`` (whole heads are removed, their q/k/v rows together).
            Either way the embed dim is pruned through the residual stream and its
            LayerNorms (approximate) and the MLP hidden widths like any Linear.
        scoring: which of a group's slices magnitude criteria score and how they combine, a
            :class:`~fxprune.GroupScoring` or ``"members[/normalize[/reduction]]"``, e.g.
            ``"all"`` (every weight bound to the unit: producers, consumers' input columns,
            norms' scales; Torch-Pruning's group importance). Default ``None``: the
            producers' filters, the scores of every earlier release.
        keep_class: return a copy of the model of its own class (its ``forward``, its
            attributes) with the pruned layers grafted in (:func:`fxprune.graft`), instead of a
            GraphModule. The pieces of a ``chunk`` then stay equal (the model's own
            ``x.chunk(2, 1)`` still splits where the graph does), and a module whose own code
            does not survive the new widths (it reads them from attributes) is kept, with the
            reason in ``result.fxprune_meta["fxprune.kept"]``.
    """

    ignore: Any = None
    strict: bool = False
    residual: str = "coupled"
    attention: str = "dims"
    scoring: Any = None
    keep_class: bool = False


@dataclass(frozen=True)
class LatencyOptions:
    """Where and how a ``target_latency`` is timed (:mod:`fxprune.plan.latency_target`).

    Attributes:
        batch: batch size to time at (default: the example inputs').
        threads: torch threads to time with (default: the current count).
        device: device to time on (default: the model's).
    """

    batch: int | None = None
    threads: int | None = None
    device: Any = None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`fxprune.plan.latency_target.fit_latency`."""
        return {"batch": self.batch, "threads": self.threads, "device": self.device}


@dataclass(frozen=True)
class VerifyOptions:
    """What is checked after the rewrite; ``compress(..., verify=VerifyOptions(...))``.

    Attributes:
        oracle: ``True`` (default) checks the result against the zero-channel oracle (one
            more forward pass of the original and of the pruned model) and raises
            :class:`~fxprune.VerificationError` unless the verdict is ``exact`` or
            ``approximate`` (structure verified exactly); the report is in
            ``pruned.meta["fxprune.verify"]``. ``False`` skips it. ``verify=True/False`` is
            the short spelling of this field.
        check: the rewrite's postcondition (see :func:`fxprune.rewrite`): ``True`` runs the
            pruned module once and checks its output shapes (with the oracle on, the oracle's
            run of the pruned model does that; the node-by-node check then runs only to name
            a failing node), ``"nodes"`` checks every node's shape, ``False`` skips it.
    """

    oracle: bool = True
    check: bool | str = True


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - tensors and other values without a plain ==
        return False


def non_default(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that differ from ``defaults`` (a signature's keywords that
    were set)."""
    return {k: v for k, v in values.items() if not _same(v, defaults[k])}


def with_keywords(options: T, given: Mapping[str, Any], owner: str) -> T:
    """``options`` with the fields in ``given`` set.

    A field that ``options`` sets (away from its class default) and ``given`` sets to another
    value raises :class:`~fxprune.errors.InputError`: an option is given once.
    """
    if not given:
        return options
    default = type(options)()  # type: ignore[call-arg]
    for name, value in given.items():
        mine = getattr(options, name)
        if not _same(mine, getattr(default, name)) and not _same(mine, value):
            kind = type(options).__name__
            raise InputError(
                f"{owner}: {name} is given twice, as {name}={value!r} and in "
                f"{kind}({name}={mine!r}). Hint: give it once, as a keyword or in the "
                f"{kind}.")
    return dataclasses.replace(options, **given)  # type: ignore[type-var]


def route_keywords(owner: str, keywords: Mapping[str, Any], classes: Mapping[str, type],
                   skip: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """Sort keyword arguments by the option class (``{name: class}``) with a field of that
    name: ``{name: {field: value}}``. Fields in ``skip`` are not keywords (the entry point
    has a parameter of its own for them). An unknown keyword raises ``TypeError``, as Python
    does for a function without ``**kwargs``, naming the closest valid one."""
    fields = {f.name: name for name, cls in classes.items() for f in dataclasses.fields(cls)
              if f.name not in skip}
    out: dict[str, dict[str, Any]] = {name: {} for name in classes}
    for key, value in keywords.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}"
                            + (f"; did you mean {close[0]!r}?" if close else ""))
        out[fields[key]][key] = value
    return out
