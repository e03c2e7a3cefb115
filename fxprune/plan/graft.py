"""Graft: the pruned layers put back into a copy of the user's model, of its own class.

Reads:  the user's model, a pruned model made from it by :func:`fxprune.compress` (a
        GraphModule, whose ``call_module`` targets keep the original qualified names), and
        example inputs (default: the ones ``compress`` used, ``pruned.meta``)
Writes: a deep copy of the model (its class, its ``forward``, every other attribute) whose
        leaf modules with parameters or buffers are the pruned ones; the model is untouched

A GraphModule runs the traced graph; the copy runs the model's own Python code, which may
read widths that pruning changed (``x.chunk(2, 1)`` into equal pieces, ``view`` with
``self.num_heads``). So the copy is checked against the pruned GraphModule on the example
inputs (eval mode, the oracle's tolerance); where they differ, the first module (in execution
order) whose own code does not survive the new widths is named: the leaf modules of both are
hooked, and the first leaf that sees another input or gives another output (or the exception)
is blamed on the innermost module around it whose own inputs were still right.
"""

from __future__ import annotations

__all__ = ["graft", "GraftError", "grafted_copy", "check_grafted", "split_widths",
           "fix_width_attrs", "GRAFT_RTOL", "WIDTH_ATTRS"]

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.trace import EXAMPLE_INPUTS
from fxprune.errors import InputError
from fxprune.ir.inputs import check_not_scripted, copied, positional_inputs
from fxprune.ir.meta import SHAPE
from fxprune.ir.state import untouched
from fxprune.plan.graft_locate import GRAFT_RTOL, locate, outputs_close, same_mode
from fxprune.rules import RULES

#: ``grafted.fxprune_meta`` key: ``{"module.attr": [old, new]}``, the width attributes set.
WIDTH_ATTRS = "fxprune.width_attrs"


class GraftError(InputError):
    """The grafted model differs from the pruned one: ``module`` (a qualified name, ``""``:
    the model's own forward) is the first whose eager code does not survive the new widths,
    ``reason`` says how."""

    def __init__(self, message: str, module: str, cls: str, reason: str):
        super().__init__(message)
        self.module, self.cls, self.reason = module, cls, reason


def graft(model: nn.Module, pruned: nn.Module, example_inputs: Any = None) -> nn.Module:
    """A copy of ``model``, of its own class, with the pruned layers of ``pruned`` in it.

    Every leaf module of ``model`` with parameters or buffers (Conv2d, BatchNorm, Linear...)
    is replaced by a copy of the module of the same qualified name in ``pruned``; the rest
    (the class, ``forward``, containers, every non-module attribute) is a deep copy of
    ``model``. The result is then run against ``pruned`` on the example inputs (eval mode,
    or training mode where ``pruned`` was traced in it: its graph took those branches;
    relative tolerance :data:`GRAFT_RTOL` of the output scale, as the oracle).

    Args:
        model: the model ``pruned`` was made from; it is never modified.
        pruned: what :func:`fxprune.compress` returned for ``model``.
        example_inputs: inputs to check on, as for :func:`fxprune.compress` (default: the ones
            ``compress`` used, kept in ``pruned.meta``).

    Returns:
        The grafted copy (train/eval flags as in ``model``); it shares no tensor with
        ``model`` or ``pruned``.

    Raises:
        InputError: ``pruned`` was not made from ``model``, or no example inputs are known.
        GraftError: (an :class:`~fxprune.InputError`) the copy's own code does not run as the
            pruned graph on the new widths; the message names the first module whose code
            does not survive, its class and the fix (``ignore=[name]``, or
            ``compress(..., keep_class=True)``, which does that by itself).

    Example::

        >>> small = fxprune.compress(yolo.model, 0.5, example_inputs=x)   # a GraphModule
        >>> yolo.model = fxprune.graft(yolo.model, small)                 # a DetectionModel
    """
    check_not_scripted(model)
    if not isinstance(pruned, nn.Module):
        raise InputError(f"graft: pruned must be the module fxprune.compress returned, got "
                         f"{type(pruned).__name__}")
    inputs = _inputs(model, pruned, example_inputs)
    with untouched(model):
        grafted, _leaves = grafted_copy(model, pruned)
    check_grafted(grafted, pruned, inputs)
    return grafted


def _inputs(model: nn.Module, pruned: nn.Module, example_inputs: Any) -> tuple:
    if example_inputs is None:
        meta = pruned.meta if isinstance(pruned, fx.GraphModule) else \
            pruned.__dict__.get("fxprune_meta", {})
        example_inputs = meta.get(EXAMPLE_INPUTS)
        if example_inputs is None:
            raise InputError("graft: no example inputs recorded in the pruned model. Hint: "
                             "graft(model, pruned, example_inputs=x) with the inputs you "
                             "pruned with.")
    return positional_inputs(model, example_inputs)


def _own_tensors(m: nn.Module) -> Iterator[tuple[str, Tensor]]:
    for name, t in [*m._parameters.items(), *m._buffers.items()]:
        if t is not None:
            yield name, t


def _attr(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def grafted_copy(model: nn.Module, pruned: nn.Module) -> tuple[nn.Module, list[str]]:
    """The deep copy of ``model`` with ``pruned``'s modules and tensors in place of its own
    (no check); also the qualified names of the leaf modules that were replaced."""
    theirs = dict(pruned.named_modules(remove_duplicate=False))
    swap: dict[int, Any] = {}  # id(original object) -> its pruned counterpart
    leaves, flags, through = [], {}, []
    for name, m in model.named_modules(remove_duplicate=False):
        own = list(_own_tensors(m))
        if not own or id(m) in swap:
            continue
        new = theirs.get(name)
        leaf = next(m.children(), None) is None
        if leaf and new is not None and type(new) is type(m):
            swap[id(m)] = new
            leaves.append(name)
            flags[id(new)] = m.training
            continue
        if leaf:
            through.append((name, m))
        for pname, t in own:  # tensors of a module that also has children, or ones the
            path = f"{name}.{pname}" if name else pname  # trace took as attributes
            new_t = _attr(pruned, path)
            if isinstance(new_t, Tensor) and id(t) not in swap:
                swap[id(t)] = new_t
    if not leaves:
        raise InputError(
            f"graft: no layer of the {type(model).__name__} has a counterpart of the same name "
            "and class in the pruned model. Hint: pass the model that fxprune.compress pruned.")
    originals = list(swap.values())
    fresh = copy.deepcopy(originals)  # shares nothing with `pruned`; ties stay ties
    memo: dict[int, Any] = {}
    for key, was, now in zip(swap, originals, fresh):
        if isinstance(now, nn.Module):
            now.training = flags.get(id(was), now.training)
        memo[key] = now
    grafted = copy.deepcopy(model, memo)
    for name, m in through:  # a subclass the trace went through (its own forward): the
        rule = _base_rule(type(m))  # attributes its base's rule fixes (normalized_shape...)
        if rule is not None:
            rule.update_module(grafted.get_submodule(name), m)
    if isinstance(pruned, fx.GraphModule):
        fixed = fix_width_attrs(grafted, split_widths(pruned))
        if fixed:
            grafted.__dict__["fxprune_meta"] = {WIDTH_ATTRS: fixed}
    return grafted, leaves


def _base_rule(cls: type) -> Any:
    """The rule of the nearest registered base class (``nn.LayerNorm`` for a
    ``ConvNextLayerNorm``)."""
    for base in cls.__mro__[1:]:
        if base in RULES and isinstance(base, type) and issubclass(base, nn.Module) and \
                base is not nn.Module:
            return RULES[base]
    return None


def _resized(n: fx.Node) -> list[tuple[int, int]]:
    """``(old, new)`` widths a rewritten node's literal sizes changed: the pieces of a split
    (a ``chunk`` becomes a ``split`` with the pruned sizes), the sizes of a view/reshape."""
    old = n.meta.get(SHAPE)
    if n.target in ("split", torch.split) and "dim" in n.kwargs and len(n.args) > 1:
        new = n.args[1]
        if isinstance(old, (list, tuple)) and isinstance(new, list):
            dim = int(n.kwargs["dim"])
            return [(int(s[dim]), int(v)) for s, v in zip(old, new)]
    elif n.target in ("view", "reshape", torch.reshape) and len(n.args) > 1:
        sizes = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (list, tuple)) \
            else n.args[1:]
        if isinstance(old, tuple) and all(type(d) is int for d in old) and \
                len(sizes) == len(old):
            return [(int(o), v) for o, v in zip(old, sizes) if type(v) is int and v >= 0]
    return []


def split_widths(pruned: fx.GraphModule) -> dict[str, dict[int, int]]:
    """``{module: {old width: new}}`` of the splits and views the rewrite resized, by the
    module whose code made them (the innermost of the node's ``nn_module_stack``); a width
    that became two different ones is left out."""
    out: dict[str, dict[int, int]] = {}
    bad: set[tuple[str, int]] = set()
    for n in pruned.graph.nodes:
        stack = n.meta.get("nn_module_stack")
        pairs = _resized(n) if stack else []
        if not pairs:
            continue
        path = list(stack.values())[-1][0]
        seen = out.setdefault(path, {})
        for w, v in pairs:
            if seen.get(w, v) != v:
                bad.add((path, w))
            seen[w] = v
    for path, w in bad:
        out[path].pop(w, None)
    return {p: {w: v for w, v in m.items() if w != v} for p, m in out.items()}


def fix_width_attrs(grafted: nn.Module, widths: dict[str, dict[int, int]]
                    ) -> dict[str, list[int]]:
    """Set the int attribute of a module that holds a piece width its resized splits had
    (C2f's ``self.c``, which its ``forward_split`` reads), where exactly one attribute of the
    module has that value; returns ``{"module.attr": [old, new]}``."""
    fixed: dict[str, list[int]] = {}
    for path, change in widths.items():
        try:
            mod = grafted.get_submodule(path)
        except AttributeError:
            continue
        for old, new in change.items():
            names = [k for k, v in vars(mod).items()
                     if type(v) is int and v == old and not k.startswith("_")]
            if len(names) == 1:
                setattr(mod, names[0], new)
                fixed[f"{path}.{names[0]}" if path else names[0]] = [old, new]
    return fixed


def check_grafted(grafted: nn.Module, pruned: nn.Module, inputs: tuple) -> None:
    """Raise :class:`GraftError` unless ``grafted`` computes what ``pruned`` does on
    ``inputs`` (eval mode)."""
    with same_mode(grafted, pruned):
        ref = pruned(*copied(inputs))
    with same_mode(grafted, pruned):
        try:
            out, err = grafted(*copied(inputs)), None
        except Exception as e:  # noqa: BLE001 - located below, reported as a GraftError
            out, err = None, e
    if err is None and outputs_close(out, ref):
        return
    name, why = locate(grafted, pruned, inputs, err)
    cls = type(grafted.get_submodule(name)).__name__ if name else type(grafted).__name__
    where = f"'{name}' ({cls})" if name else f"the {cls}'s own forward"
    fix = (f"compress(..., ignore=['{name}']) keeps its channels, or "
           "compress(..., keep_class=True) does that by itself" if name else
           "prune the modules it calls one by one, or use the GraphModule compress returns")
    raise GraftError(f"graft: the eager code of {where} does not survive the pruned widths: "
                     f"{why}. Hint: {fix}.", name, cls, why)
