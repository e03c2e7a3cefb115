"""Training-time pruning methods: one file per method, registered by name.

A method decides *which* units each group keeps, and when; the engine
(:class:`fxprune.train.SoftPruner`) owns everything shared: the analysis, the allocation
(per-group ratios, fixed at construction), masks, optimizer hooks, checkpoints and the compact
model. The interface is :class:`Method`; a method is one subclass decorated with
:func:`register_method` in a file of this package (imported below).

Built in: ``"sfp"`` (and ``"soft"``: SFP's schedule with any ``criterion=``), ``"fpgm"``,
``"mfp"``, ``"fppmo"``. A method that is not a channel selection (SWP's filter skeletons) plugs
in the same way: :meth:`Method.attach` may register its own optimizer hooks (a regularizer),
:meth:`Method.prepare` may add parameters to the model before training, and
:meth:`Method.finalize` may replace the compact model with its own rewrite.
"""

from __future__ import annotations

__all__ = ["Method", "register_method", "get_method", "list_methods", "METHODS"]

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from fxprune.errors import InputError
from fxprune.ir.meta import KeepSet

if TYPE_CHECKING:
    import torch.fx as fx
    import torch.optim

    from fxprune.train.engine import SoftPruner

Keep = dict[int, KeepSet]
METHODS: dict[str, type[Method]] = {}


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
        options: the method's keyword options and their defaults (``**method_options``).
    """

    name: ClassVar[str] = ""
    default_criterion: ClassVar[str | None] = "l2"
    hold: ClassVar[str] = "epoch"
    mask_grads: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    channel_selection: ClassVar[bool] = True
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise InputError(f"method '{self.name}' has no option(s) {', '.join(unknown)}; its "
                             f"options are: {valid}")
        self.opts = {**self.options, **options}

    def prepare(self, pruner: SoftPruner) -> None:
        """Called once before the first selection (validate options, add parameters...)."""

    def initial(self, pruner: SoftPruner) -> Keep:
        """The selection applied at construction (before the first epoch)."""
        raise NotImplementedError

    def update(self, pruner: SoftPruner) -> Keep | None:
        """The selection at a due ``epoch_end``; None keeps the current one."""
        return None

    def final(self, pruner: SoftPruner) -> Keep | None:
        """The selection to compile in ``finalize``; None keeps the current one."""
        return None

    def attach(self, pruner: SoftPruner, optimizer: torch.optim.Optimizer) -> list[Any]:
        """Extra optimizer hooks; returns their removable handles."""
        return []

    def finalize(self, pruner: SoftPruner, compact: fx.GraphModule) -> fx.GraphModule:
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


def _load_builtin() -> None:
    for mod in ("sfp", "fpgm", "mfp", "fppmo", "swp"):
        importlib.import_module(f"{__name__}.{mod}")


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
    _load_builtin()
    return sorted(METHODS)
