"""Training-time pruning methods: one file per method, registered by name.

A method decides *which* units each group keeps, and when; the engine
(:class:`fxprune.train.SoftPruner`) owns everything shared: the analysis, the allocation
(per-group ratios, fixed at construction), masks, optimizer hooks, checkpoints and the compact
model. The interface is :class:`Method`; a method is one subclass decorated with
:func:`register_method` in a file of this package: every public module here is imported when
the registry is first read, so a new file is all a new method needs. The registry is the
single source for the command line (``fxprune train --method``: the names, which methods need
``data=`` (:attr:`Method.needs_data`), which learn their amounts
(:attr:`Method.channel_selection`)) and the accuracy benchmark. A method sees the engine
through :class:`~fxprune.train.context.PrunerContext` (the methods do not import the engine).

Built in: ``"sfp"`` (and ``"soft"``: SFP's schedule with any ``criterion=``), ``"fpgm"``,
``"mfp"``, ``"fppmo"``. A method that is not a channel selection (SWP's filter skeletons) plugs
in the same way: :meth:`Method.attach` may register its own optimizer hooks (a regularizer),
:meth:`Method.prepare` may add parameters to the model before training, and
:meth:`Method.finalize` may replace the compact model with its own rewrite.
"""

from __future__ import annotations

__all__ = ["Method", "register_method", "get_method", "list_methods", "needs_data", "METHODS",
           "Keep", "PrunerContext", "PaperSettings", "SFP_LOOP", "paper_settings", "VARIANTS"]

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from fxprune.criteria import get_criterion
from fxprune.errors import InputError
from fxprune.train.context import Keep, PrunerContext

if TYPE_CHECKING:
    import torch.fx as fx
    import torch.optim

METHODS: dict[str, type[Method]] = {}
VARIANTS = ("fxprune", "paper")


@dataclass(frozen=True)
class PaperSettings:
    """What the authors' code runs, as fxprune options: the one place a ``(paper)`` variant is
    defined (``SoftPruner(..., variant="paper")``, ``fxprune train --variant paper`` and the
    accuracy benchmark's ``<method> (paper)`` rows all read it).

    Attributes:
        pruner: :class:`~fxprune.train.SoftPruner` keywords (``max_grad_norm``, ``settle``,
            ``residual``).
        options: the method's own options (e.g. SWP's ``regularize_1x1=False``).
        bn_recalibration: :func:`fxprune.train.fit`'s ``bn_recalibration`` (0: none).
        schedule, milestones, gamma, weight_decay: the learning-rate schedule, milestones as
            fractions of the run (SFP's x0.2 at 60/120/160 of 200 epochs is 0.3/0.6/0.8).
        source: where the settings come from (docs/accuracy.md quotes it).
    """

    pruner: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    bn_recalibration: int = 0
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    gamma: float = 0.2
    weight_decay: float = 5e-4
    source: str = ""

    def fit_keywords(self, epochs: int) -> dict[str, Any]:
        """:func:`fxprune.train.fit` keywords for a run of ``epochs`` epochs."""
        return {"bn_recalibration": self.bn_recalibration, "schedule": self.schedule,
                "milestones": sorted({max(1, round(epochs * f)) for f in self.milestones}),
                "gamma": self.gamma, "weight_decay": self.weight_decay}


# SFP's loop (he-y/soft-filter-pruning): no gradient clip, the mask applied after every epoch
# including the last (no settle epoch), residual-output convs pruned and scattered back
# (index_add), BatchNorm statistics left alone; SGD Nesterov, wd 5e-4, lr x0.2 at 30/60/80%.
SFP_LOOP = PaperSettings(pruner={"max_grad_norm": None, "settle": 0, "residual": "scatter"},
                         source="he-y/soft-filter-pruning scripts/cifar10_resnet.sh")


class Method:
    """Base class of a training-time method (all hooks are optional except :meth:`initial`).

    Class attributes:
        name: the value of ``method=``.
        default_criterion: used when ``criterion=`` is not given (None: the method has none).
        hold: ``"step"`` (masks re-applied after every optimizer step) or ``"epoch"`` (applied
            at construction and at every due :meth:`SoftPruner.epoch_end`); ``hold=`` overrides.
        mask_grads: zero the pruned entries' gradients before every optimizer step.
        needs_data: ``data=`` is required.
        channel_selection: the method prunes channels at the allocated ratios (a ratio or
            target is required). A method that is not a channel selection (SWP's stripes) sets
            it False: ``ratio`` may then be omitted, every group keeps all its units unless the
            method says otherwise (:meth:`SoftPruner.full_keep`), and the method's
            :meth:`finalize` builds the compact model.
        auto_clip: whether ``max_grad_norm="auto"`` clips this method's ``hold="epoch"``
            training (at ``AUTO_GRAD_NORM``). FPPMO sets it False: measured better without
            the clip on the validation splits of digits and Fashion-MNIST.
        options: the method's keyword options and their defaults (``**method_options``).
    """

    name: ClassVar[str] = ""
    default_criterion: ClassVar[str | None] = "l2"
    hold: ClassVar[str] = "epoch"
    mask_grads: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    channel_selection: ClassVar[bool] = True
    auto_clip: ClassVar[bool] = True
    options: ClassVar[dict[str, Any]] = {}
    paper: ClassVar[PaperSettings | None] = None  # the authors' settings (variant="paper")

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise InputError(f"method '{self.name}' has no option(s) {', '.join(unknown)}; its "
                             f"options are: {valid}")
        self.opts = {**self.options, **options}

    def prepare(self, pruner: PrunerContext) -> None:
        """Called once before the first selection (validate options, add parameters...)."""

    def initial(self, pruner: PrunerContext) -> Keep:
        """The selection applied at construction (before the first epoch)."""
        raise NotImplementedError

    def update(self, pruner: PrunerContext) -> Keep | None:
        """The selection at a due ``epoch_end``; None keeps the current one."""
        return None

    def final(self, pruner: PrunerContext) -> Keep | None:
        """The selection to compile in ``finalize``; None keeps the current one."""
        return None

    def attach(self, pruner: PrunerContext, optimizer: torch.optim.Optimizer) -> list[Any]:
        """Extra optimizer hooks; returns their removable handles."""
        return []

    def finalize(self, pruner: PrunerContext, compact: fx.GraphModule) -> fx.GraphModule:
        """Post-process (or replace) the compact model."""
        return compact

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def register_method(*names: str) -> Callable[[type[Method]], type[Method]]:
    """Register a :class:`Method` subclass under one or more ``method=`` names."""

    def deco(cls: type[Method]) -> type[Method]:
        for n in names:
            METHODS[n] = cls
        return cls

    return deco


@functools.cache
def _load_builtin() -> None:
    """Import every public module of this package (a new method file registers itself)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    _load_builtin()
    if not isinstance(name, str) or name not in METHODS:
        hint = (" One-shot pruning is fxprune.compress(...) followed by fine-tuning."
                if name == "oneshot" else "")
        raise InputError(f"unknown method {name!r}. Available: {', '.join(sorted(METHODS))}."
                         + hint)
    return METHODS[name]


def list_methods() -> list[str]:
    """The registered ``method=`` names, sorted."""
    _load_builtin()
    return sorted(METHODS)


def paper_settings(method: str) -> PaperSettings:
    """The authors' settings of ``method`` (:attr:`Method.paper`), for ``variant="paper"``.

    Raises:
        InputError: the method has no paper variant (e.g. ``"soft"``).
    """
    cls = get_method(method)
    if cls.paper is None:
        have = ", ".join(m for m in list_methods() if METHODS[m].paper is not None)
        raise InputError(f"method {method!r} has no paper variant; these do: {have}")
    return cls.paper


def needs_data(method: str, criterion: Any = None) -> bool:
    """Whether ``SoftPruner(method=method, criterion=criterion)`` needs ``data=``: the method
    says so (:attr:`Method.needs_data`) or its criterion (``criterion``, else the method's
    default) is registered with ``needs_data=True``."""
    cls = get_method(method)
    crit = criterion if criterion is not None else cls.default_criterion
    return cls.needs_data or (isinstance(crit, str) and get_criterion(crit).needs_data)
