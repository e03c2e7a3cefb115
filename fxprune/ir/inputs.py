"""Checks of the user's arguments and example inputs, shared by the pipeline's entry points.

Each raises :class:`~fxprune.errors.InputError` saying what is wrong, where, and how to fix it.
"""

from __future__ import annotations

__all__ = ["check_flags", "check_example_inputs", "check_inputs", "resolve_ignore",
           "positional_inputs", "model_device_dtype", "copied", "check_seed",
           "check_not_scripted"]

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map

from fxprune.errors import InputError


def check_not_scripted(model: Any, arg: str = "model") -> None:
    """A TorchScript module cannot be traced: say to pass the eager one."""
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError(
            f"{arg} is a TorchScript module ({type(model).__name__}), whose forward is compiled "
            "TorchScript that torch.fx cannot trace. Hint: pass the eager module (the "
            "nn.Module before torch.jit.script/torch.jit.trace), and script the pruned "
            "result afterwards if you need TorchScript.")


def check_seed(seed: Any) -> int:
    """A seed is an int (not a bool, a float or a string)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r} ({type(seed).__name__}). Hint: "
                         "seed=0 (the default) or any other whole number.")
    return seed


def check_flags(**flags: Any) -> None:
    """Boolean switches must be bools (a string such as "no" is truthy)."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, got {value!r} "
                             f"({type(value).__name__}). Hint: pass {name}=True or {name}=False.")


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first floating-point parameter (else buffer; else CPU,
    float32): where its example inputs are made."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.device, b.dtype
    return torch.device("cpu"), torch.float32


def check_inputs(model: nn.Module, inputs: tuple) -> None:
    """Every example input tensor is on the model's device."""
    p = next((t for t in model.parameters()), None)
    for x in inputs:
        if isinstance(x, Tensor) and p is not None and x.device != p.device:
            raise InputError(
                f"example input is on {x.device} but the model is on {p.device}. Hint: move "
                f"the input with x.to('{p.device}') (or the model with model.to(...)).")


def copied(inputs: Any) -> Any:
    """A copy of every tensor in ``inputs`` (nested tuples, lists and dicts kept as they are).

    Each run of a model gets its own: a forward that writes into its input in place
    (``x.mul_(2)``) changes neither the user's tensors nor the next run's inputs.
    """
    def copy(x: Any) -> Any:
        if not isinstance(x, Tensor):
            return x
        y = x.detach().clone()
        return y.requires_grad_(x.requires_grad) if y.is_floating_point() or y.is_complex() \
            else y

    return tree_map(copy, inputs)


def positional_inputs(model: nn.Module, example_inputs: Any) -> tuple:
    """``forward``'s positional arguments from ``example_inputs``.

    ``example_inputs`` is one tensor, a tuple/list of ``forward``'s positional arguments, or a
    dict of its keyword arguments (``model(**example_inputs)``): the dict is matched to
    ``forward``'s signature by name, parameters it leaves out take their defaults.
    """
    if isinstance(example_inputs, Mapping):
        return _from_keywords(model, example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


def _from_keywords(model: nn.Module, given: Mapping) -> tuple:
    name = type(model).__name__
    bad = [k for k in given if not isinstance(k, str)]
    if bad:
        raise InputError(f"example_inputs is a dict, so its keys must be the names of "
                         f"{name}.forward's parameters; got the key {bad[0]!r}. Hint: "
                         "example_inputs={'x': x, 'mask': mask}, or a tuple (x, mask).")
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError) as e:  # a builtin or C forward
        raise InputError(f"example_inputs is a dict, but {name}.forward's signature cannot be "
                         f"read ({e}). Hint: pass a tuple of its positional arguments.") from e
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                             p.KEYWORD_ONLY)]
    sig = f"{name}.forward({', '.join(p.name for p in params)})"
    unknown = [k for k in given if k not in {p.name for p in named}]
    if unknown:
        raise InputError(
            f"example_inputs has the key {unknown[0]!r}, but {sig} has no such parameter "
            "(torch.fx cannot trace **kwargs). Hint: use the names of forward's parameters, "
            "or pass a tuple of its positional arguments.")
    values, last = [], -1
    for i, p in enumerate(named):
        if p.name in given:
            values.append(given[p.name])
            last = i
        elif p.default is not p.empty:
            values.append(p.default)
        else:
            raise InputError(f"example_inputs has no {p.name!r}, which {sig} needs. Hint: add "
                             f"it to the dict: example_inputs={{..., {p.name!r}: ...}}.")
    return tuple(values[:last + 1])  # trailing defaults stay forward's own


def check_example_inputs(gm: fx.GraphModule, inputs: tuple) -> None:
    """As many example inputs as ``forward`` takes, and none of them empty."""
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = [str(n.target) for n in holders]
    star = any(name.startswith("*") for name in names)
    required = [name for n, name in zip(holders, names) if not n.args and not name.startswith("*")]
    sig = f"{gm.__class__.__name__}.forward({', '.join(names)})"
    if (len(inputs) > len(holders) and not star) or len(inputs) < len(required):
        raise InputError(
            f"{len(inputs)} example input(s) given, but {sig} takes "
            f"{len(required)}{'' if len(required) == len(holders) else f' to {len(holders)}'}. "
            "Hint: example_inputs is the tuple of forward's positional arguments (or a dict of "
            "its keyword arguments); to pass one argument that is itself a tuple or list, "
            "wrap it: example_inputs=((a, b),).")
    for i, x in enumerate(tree_flatten(list(inputs))[0]):
        if isinstance(x, Tensor) and x.numel() == 0:
            raise InputError(
                f"example input {i} has shape {tuple(x.shape)}, which holds no values: the "
                "analysis follows channels through real values. Hint: give every axis, the "
                "batch included, a size of at least 1 (e.g. torch.randn(1, 3, 224, 224)).")
        if isinstance(x, Tensor) and (x.is_floating_point() or x.is_complex()):
            bad = ~torch.isfinite(x.detach())
            if bool(bad.any()):
                raise InputError(
                    f"example input {i} (shape {tuple(x.shape)}) holds {int(bad.sum())} NaN or "
                    "infinite value(s): the oracle compares the pruned model's outputs with "
                    "the original's, and NaN equals nothing. Hint: pass finite example inputs, "
                    "e.g. example_inputs=torch.randn(1, 3, 224, 224), or "
                    "torch.nan_to_num(x).")


def resolve_ignore(gm: fx.GraphModule, ignore: Any) -> set[str]:
    """Turn module instances, names (glob patterns allowed) and types into qualified names."""
    import fnmatch

    if ignore is None:
        return set()
    if isinstance(ignore, (nn.Module, str, type)):
        ignore = [ignore]
    named = list(gm.named_modules())
    by_id = {id(m): name for name, m in named}
    out: set[str] = set()
    for item in ignore:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise InputError(
                    f"ignore: module {type(item).__name__} is not part of the traced model. "
                    "Hint: pass a submodule of the model you prune (or its name).")
            out.add(by_id[id(item)])
        elif isinstance(item, type) and issubclass(item, nn.Module):
            hits = [name for name, m in named if isinstance(m, item) and name]
            if not hits:
                raise InputError(f"ignore: no module of type {item.__name__} in the model.")
            out.update(hits)
        elif isinstance(item, str):
            hits = [name for name, _ in named if name and fnmatch.fnmatchcase(name, item)]
            if not hits:
                raise InputError(
                    f"ignore: no module named '{item}' in the model. Hint: names are qualified "
                    "as in model.named_modules(), e.g. 'layer4.1.conv2' or 'layer4.*'.")
            out.update(hits)
        else:
            raise InputError(
                f"ignore: cannot interpret {item!r} ({type(item).__name__}); expected module "
                "instances, qualified names or nn.Module types.")
    return out
