"""Code fxprune does not see: forward hooks and parametrizations of leaf modules.

A leaf module (a conv, a norm...) runs as one op, hooks included, in analysis and in the pruned
model. fxprune slices what the module's rule binds, so anything else that holds channel-sized
tensors would break the pruned copy (a hook's closure, ``spectral_norm``'s power-iteration
vectors) or change its meaning:

* ``weight_norm`` (``torch.nn.utils.parametrizations.weight_norm`` and the older
  ``torch.nn.utils.weight_norm`` hook) is pruned exactly: the pruned copy's ``g`` and ``v``
  are re-derived from the sliced effective weight, so it computes that weight and keeps
  training with weight normalization.
* any other parametrization (``spectral_norm``...) or forward hook / pre-hook on a leaf
  module: the module's input and output channels are kept (frozen, with a reason naming the
  module, the hooks and how to remove them).
* hooks on the model itself are not part of its traced graph: :func:`check_root` rejects them.

Hooks of modules that are traced through (not leaves) run during tracing and are part of the
graph, like any other code.
"""

from __future__ import annotations

__all__ = ["weight_norms", "opaque_reason", "check_root", "normalized_weight",
           "restore_weight_norm", "Handles"]

import importlib
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils import parametrize

from fxprune.errors import InputError

_WN_PARAM: Any = getattr(importlib.import_module("torch.nn.utils.parametrizations"),
                         "_WeightNorm", ())
_WN_HOOK: Any = getattr(importlib.import_module("torch.nn.utils.weight_norm"), "WeightNorm", ())


def _hooks(m: nn.Module) -> list[Any]:
    return [*m._forward_pre_hooks.values(), *m._forward_hooks.values()]


def _hook_name(h: Any) -> str:
    if isinstance(h, _WN_HOOK) or not callable(h) or not hasattr(h, "__qualname__"):
        return type(h).__name__
    return getattr(h, "__qualname__", type(h).__name__)


def weight_norms(m: nn.Module) -> dict[str, str]:
    """Tensors of ``m`` under weight normalization: ``{name: "parametrization" | "hook"}``."""
    out: dict[str, str] = {}
    if parametrize.is_parametrized(m):
        for name, plist in m.parametrizations.items():
            if len(plist) == 1 and isinstance(plist[0], _WN_PARAM):
                out[name] = "parametrization"
    for h in m._forward_pre_hooks.values():
        if isinstance(h, _WN_HOOK):
            out[h.name] = "hook"
    return out


def opaque_reason(m: nn.Module, qualname: str, bound: set[str]) -> str | None:
    """Why the channels of leaf module ``m`` must be kept (None: nothing in the way).

    ``bound``: the names of the module's tensors its rule slices.
    """
    wn = weight_norms(m)
    if parametrize.is_parametrized(m):
        for name, plist in m.parametrizations.items():
            if wn.get(name) != "parametrization" or name not in bound:
                kinds = ", ".join(type(p).__name__ for p in plist)
                return (f"module '{qualname}' has a parametrization ({kinds}) on '{name}' that "
                        "fxprune cannot slice exactly. Hint: call torch.nn.utils.parametrize."
                        f"remove_parametrizations(model.get_submodule('{qualname}'), "
                        f"'{name}') before compressing to prune it")
    hooks = [h for h in _hooks(m) if not (isinstance(h, _WN_HOOK) and h.name in bound)]
    if hooks:
        names = ", ".join(sorted({_hook_name(h) for h in hooks}))
        return (f"module '{qualname}' has forward hooks or pre-hooks ({names}) that fxprune "
                "cannot see into. Hint: remove them before compressing to prune it "
                "(handle.remove(), torch.nn.utils.remove_spectral_norm(...), ...)")
    return None


def check_root(model: nn.Module) -> None:
    """Hooks on the model itself are not traced: the pruned model would silently lack them."""
    hooks = _hooks(model)
    if hooks:
        names = ", ".join(sorted({_hook_name(h) for h in hooks}))
        raise InputError(
            f"the model ({type(model).__name__}) has forward hooks or pre-hooks on itself "
            f"({names}); tracing does not run them, so the pruned model would not either. "
            "Hint: remove them (handle.remove()) before compressing, and apply them to the "
            "pruned model yourself if they only observe outputs.")


def normalized_weight(m: nn.Module, name: str) -> Tensor:
    """The weight ``m`` computes from its weight-norm tensors (now, not at its last call)."""
    with torch.no_grad():
        for h in m._forward_pre_hooks.values():
            if isinstance(h, _WN_HOOK) and h.name == name:
                return h.compute_weight(m)
        return getattr(m, name)


def restore_weight_norm(new: nn.Module, old: nn.Module, name: str, sliced: Tensor) -> None:
    """Make ``new`` (a copy of ``old``) compute the sliced effective weight ``sliced``."""
    kind = weight_norms(old)[name]
    with torch.no_grad():
        if kind == "parametrization":
            new.parametrizations[name].right_inverse(sliced)
            return
        hook = next(h for h in new._forward_pre_hooks.values()
                    if isinstance(h, _WN_HOOK) and h.name == name)
        g_old, v_old = getattr(old, name + "_g"), getattr(old, name + "_v")
        g = torch.norm_except_dim(sliced, 2, hook.dim)
        setattr(new, name + "_g", nn.Parameter(g.clone(), requires_grad=g_old.requires_grad))
        setattr(new, name + "_v", nn.Parameter(sliced.clone(),
                                               requires_grad=v_old.requires_grad))
        new.__dict__[name] = hook.compute_weight(new)


class Handles:
    """Several hook handles (module or optimizer hooks) that ``remove()`` detaches together:
    what ``SoftPruner.attach`` and ``StripePruner.attach`` return."""

    def __init__(self, handles: list[Any]):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
