"""Counting: MACs and parameters, per layer and in total, measured on the graph.

MACs come from running the model under ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2
of the aten ops: conv, matmul, addmm, bmm...), so any graph is counted, not just known layers.
``conv_macs`` is the measured convolution multiply-accumulates only (no linear/matmul). It is
*not* the papers' "FLOPs↓" convention, which is computed for a uniform keep rate rather than
measured on a pruned model: see :func:`fxprune.paper_flops_cut`.
"""

from __future__ import annotations

__all__ = ["count", "Counts"]

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from fxprune.core.trace import default_example_inputs
from fxprune.errors import InputError
from fxprune.ir.inputs import copied, positional_inputs
from fxprune.ir.state import untouched
from fxprune.ir.threads import this_thread_only


@dataclass(frozen=True)
class Counts:
    """Measured totals: ``macs`` (all ops), ``params`` and ``conv_macs`` (convolutions only)."""

    macs: int
    params: int
    conv_macs: int
    per_layer: dict[str, dict[str, int]] = field(default_factory=dict)


def count(model: nn.Module, example_inputs: Any = None) -> Counts:
    """Count MACs (batch 1 of ``example_inputs``) and parameters of ``model``.

    ``per_layer`` is keyed by ``model.named_modules()`` names (the root is ``""``); each entry
    has ``macs`` (including its submodules) and ``params`` (its own).

    Raises:
        InputError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise InputError(
            f"fxprune.count(model): model must be a torch.nn.Module, got "
            f"{'None' if model is None else type(model).__name__}. Hint: pass the model itself, "
            "e.g. fxprune.count(timm.create_model('resnet18')) or the result of compress().")
    if example_inputs is None:
        example_inputs = getattr(model, "meta", {}).get("fxprune.example_inputs") or \
            default_example_inputs(model)
    example_inputs = positional_inputs(model, example_inputs)
    inputs = copied(tuple(x[:1] if isinstance(x, torch.Tensor) and x.dim() > 0 else x
                          for x in example_inputs))
    counter = FlopCounterMode(display=False, depth=None)
    tracker = getattr(counter, "mod_tracker", None)  # its module hooks are global: other
    for name in ("_fw_pre_hook", "_fw_post_hook"):  # threads' modules must not count here
        if hasattr(tracker, name):
            setattr(tracker, name, this_thread_only(getattr(tracker, name)))
    # flags and buffers are restored (a forward may update them). Not under no_grad:
    # FlopCounterMode's module tracker hooks the inputs that require grad, and a view of a
    # parameter made under no_grad (timm's latent.expand) has none
    with untouched(model, eval_mode=True), counter:
        model(*inputs)
    total = counter.get_total_flops() // 2
    by_op = counter.get_flop_counts().get("Global", {})
    conv = sum(v for k, v in by_op.items() if "convolution" in str(k)) // 2
    per_layer: dict[str, dict[str, int]] = {}
    root = type(model).__name__
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue
        # FlopCounterMode names modules "<RootClass>.sub.mod": key them as named_modules() does
        key = "" if name == root else name[len(root) + 1:] if name.startswith(root + ".") else name
        per_layer[key] = {"macs": sum(ops.values()) // 2}
    for name, mod in model.named_modules():
        own = sum(p.numel() for p in mod.parameters(recurse=False))
        if own:
            per_layer.setdefault(name, {"macs": 0})["params"] = own
    for entry in per_layer.values():
        entry.setdefault("params", 0)
    params = sum(p.numel() for p in model.parameters())
    return Counts(macs=int(total), params=int(params), conv_macs=int(conv), per_layer=per_layer)
