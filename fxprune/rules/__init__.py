"""Channel rules: one registry, one rule object per op kind.

A rule says, for one op, how channel ids flow from its inputs to its output
(:meth:`Rule.propagate`), which parameter slices belong to which channels (``ctx.bind``), which
inputs it *consumes* (mixes across channels with weights, so pruned channels can be zeroed there
by the oracle), and how a pruned copy of the op is made (:meth:`Rule.update_module`,
:meth:`Rule.rewrite_node`).

``op_key(node)`` normalizes the three fx call kinds: ``call_module`` → the module's type,
``call_function`` → the callable, ``call_method`` → the method name. So one registration covers
``nn.ReLU``, ``F.relu``, ``torch.relu`` and ``x.relu()``.

Adding an op: write one ``Rule`` subclass (or use a family helper such as ``elementwise``) in the
file of its family, register every alias with ``@register_rule(...)``, and add one oracle test.
"""

from __future__ import annotations

__all__ = [
    "Rule",
    "RULES",
    "register_rule",
    "rule_for",
    "op_key",
    "op_name",
    "list_rules",
]

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch.fx as fx
import torch.nn as nn

if TYPE_CHECKING:
    from fxprune.ir.propctx import PropCtx
    from fxprune.rules.rewritectx import RewriteCtx

OpKey = type | Callable[..., Any] | str
T = TypeVar("T")


class Rule:
    """Base class of channel rules. Subclasses override :meth:`propagate` at least."""

    #: Why pruning the input channels of this op is not exact (None: exact).
    approx: str | None = None

    def propagate(self, ctx: PropCtx) -> Any:
        """Return the output id tensor(s), after binding params and coupling inputs via ``ctx``."""
        raise NotImplementedError

    def update_module(self, new: nn.Module, old: nn.Module) -> None:
        """Fix a pruned module copy's attributes (``in_channels``...) after slicing its params."""

    def rewrite_node(self, node: fx.Node, ctx: RewriteCtx) -> None:
        """Patch literal arguments of the copied node (split sizes, slice bounds, shapes)."""

    def pruned_args(self, node: fx.Node, args: list, kwargs: dict) -> None:
        """Fix, in place, the non-tensor arguments of a functional *approximate* op whose tensor
        arguments were cut to their kept channels (``normalized_shape`` of F.layer_norm): the
        statistics-aware oracle then runs the op as the rewrite will. Default: nothing."""

    def is_size_arg(self, node: fx.Node, key: int | str) -> bool:
        """Is argument ``key`` (a position or keyword) a size, index or amount?

        A channel count (``x.shape[1]``...) passed as a size is recomputed after pruning (or
        patched by :meth:`rewrite_node`); passed anywhere else it is a plain number, and the
        rewrite pins it to its original value (see :mod:`fxprune.core.size_reads`). Default: a
        number.
        """
        return False

    def input_error(self, module: nn.Module | None, args: tuple) -> str | None:
        """Why this op rejects these inputs, in the user's terms (None: nothing to add).

        Called when running the example inputs fails at this op (e.g. a conv given a tensor
        of the wrong rank or channel count).
        """
        return None

    def describe(self) -> str:
        doc = (type(self).__doc__ or "").strip().splitlines()
        return doc[0] if doc else type(self).__name__


RULES: dict[OpKey, Rule] = {}


def register_rule(*targets: OpKey) -> Callable[[T], T]:
    """Register a rule class (or instance) for modules, functions, or Tensor-method names.

    Example::

        @register_rule(torch.roll, "roll")
        class RollRule(Rule):
            def propagate(self, ctx): ...
    """

    def deco(obj: T) -> T:
        rule = obj() if isinstance(obj, type) else obj
        for t in targets:
            RULES[t] = rule  # type: ignore[assignment]
        return obj

    return deco


def op_key(node: fx.Node, modules: dict[str, nn.Module]) -> OpKey | None:
    if node.op == "call_module":
        return type(modules[str(node.target)])
    if node.op in ("call_function", "call_method"):
        return node.target  # type: ignore[return-value]
    return None


def op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A readable, qualified name of the op a node calls."""
    key = op_key(node, modules)
    if isinstance(key, type):
        return f"{key.__module__}.{key.__qualname__}"
    if isinstance(key, str):
        return f"Tensor.{key}"
    if key is None:
        return node.op
    return _callable_name(key)


def _callable_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    if name.startswith("_VariableFunctionsClass.") or mod.startswith("torch._C"):
        name = getattr(fn, "__name__", name)
        mod = "torch" if mod.startswith("torch") else mod
    return f"{mod}.{name}" if mod else name


def rule_for(node: fx.Node, modules: dict[str, nn.Module]) -> Rule | None:
    """Find the rule of a node's op.

    Module types match exactly, or through a base class when the subclass does not override
    ``forward`` (a user's ``class MyConv(nn.Conv2d): pass`` behaves like its base).
    """
    key = op_key(node, modules)
    if key is None:
        return None
    try:
        rule = RULES.get(key)
    except TypeError:  # unhashable target
        return None
    if rule is not None or not isinstance(key, type):
        return rule
    fwd = getattr(key, "forward", None)
    for base in key.__mro__[1:]:
        if base in RULES and getattr(base, "forward", None) is fwd:
            return RULES[base]
    return None


def list_rules() -> list[tuple[str, str]]:
    """(op name, rule summary) for every registered op, sorted by name."""
    rows = []
    for key, rule in RULES.items():
        if isinstance(key, type):
            name = f"{key.__module__}.{key.__qualname__}"
        elif isinstance(key, str):
            name = f"Tensor.{key}"
        else:
            name = _callable_name(key)
        rows.append((name, rule.describe()))
    return sorted(rows)


# Rule families register themselves on import.
from fxprune.rules import (  # noqa: E402, F401
    attention,
    conv,
    elementwise,
    indexing,
    linear,
    norm,
    shape,
    timm_layers,
    windows,
)
