"""What :class:`~fxprune.train.SoftPruner` is given: the checks of its own arguments and the
defaults it derives (the allocation plan from its keywords, ``max_grad_norm="auto"``, the
example inputs from ``data``). The allocation's options are checked by the plan
(:mod:`fxprune.plan.checks`), as for :func:`fxprune.compress`.
"""

from __future__ import annotations

__all__ = ["HOLDS", "AUTO_GRAD_NORM", "ENGINE_DEFAULTS", "check_options", "allocation_plan",
           "first_inputs", "apply_variant"]

from typing import Any

import torch
import torch.nn as nn

from fxprune.errors import InputError
from fxprune.ir.inputs import model_device_dtype
from fxprune.plan.allocate import AllocationPlan
from fxprune.plan.options import non_default, with_keywords
from fxprune.train.masks import BN_MODES

HOLDS = ("step", "epoch")
# max_grad_norm="auto" for hold="epoch" methods. A filter zeroed at an epoch end has batch
# variance 0 under BatchNorm, so its first gradient is scaled by gamma / sqrt(eps) (316x at
# eps=1e-5): measured on digits (SFP, ResNet-20, ratio 0.4, 12 epochs), the regrown filters'
# norms went from ~6 to ~250 and accuracy after the final mask fell to 55%; with the gradient
# norm clipped at 5 the norms stayed ~6 and accuracy was 97%.
AUTO_GRAD_NORM = 5.0
# SoftPruner's defaults of the allocation plan's fields (max_ratio: 0.9, compress: None)
PLAN_DEFAULTS = {"ratio": None, "target_flops": None, "target_params": None, "ratios": None,
                 "allocation": "uniform", "max_ratio": 0.9, "clr_lambda": 1.0,
                 "clr_cost": "authors", "round_to": None}


# SoftPruner's defaults of the keywords a variant may set
ENGINE_DEFAULTS = {"max_grad_norm": "auto", "settle": 1, "residual": "coupled"}


def apply_variant(variant: Any, method: str, engine: dict[str, Any], options: dict[str, Any],
                  target_flops: Any = None
                  ) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    """SoftPruner's keywords (``engine``), the method's options and ``target_flops`` under
    ``variant``: ``"fxprune"`` leaves them; ``"paper"`` sets the authors' settings
    (:func:`fxprune.train.methods.paper_settings`). A keyword given away from its default with
    another value than the paper's raises :class:`~fxprune.errors.InputError`. A method that
    learns its amounts (SWP) gets ``target_flops`` as its own option (its budgeted mode)."""
    from fxprune.train.methods import VARIANTS, get_method, paper_settings

    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if target_flops is not None and not get_method(method).channel_selection:
        options, target_flops = {**options, "target_flops": target_flops}, None
    if variant == "fxprune":
        return engine, options, target_flops
    paper = paper_settings(method)
    engine, options = dict(engine), dict(options)
    for key, value in paper.pruner.items():
        given = engine.get(key, ENGINE_DEFAULTS.get(key))
        if given != ENGINE_DEFAULTS.get(key) and given != value:
            raise InputError(f"variant='paper' of method {method!r} runs {key}={value!r} (the "
                             f"authors' setting), but {key}={given!r} was given: drop it, or "
                             "use variant='fxprune'")
        engine[key] = value
    for key, value in paper.options.items():
        options.setdefault(key, value)
    return engine, options, target_flops


def check_options(model: Any, interval: Any, bn: Any, hold: Any, seed: Any, epochs: Any,
                  settle: Any, max_grad_norm: Any, score_recalibration: Any = 0) -> None:
    """SoftPruner's own arguments."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise InputError("SoftPruner needs the unwrapped model: pass ddp_model.module, or "
                         "create the pruner before wrapping the model in DDP.")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise InputError(f"interval must be a positive int (epochs), got {interval!r}")
    if bn not in BN_MODES:
        raise InputError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
    if hold is not None and hold not in HOLDS:
        raise InputError(f"hold must be 'step', 'epoch' or None, got {hold!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r}")
    for name, v, low in (("epochs", epochs, 1), ("settle", settle, 0),
                         ("score_recalibration", score_recalibration, 0)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise InputError(f"{name} must be an int >= {low}, got {v!r}")
    if max_grad_norm not in (None, "auto") and (
            isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float))
            or not max_grad_norm > 0):
        raise InputError(f"max_grad_norm must be a number > 0, 'auto' or None, got "
                         f"{max_grad_norm!r}")


def allocation_plan(plan: AllocationPlan | None, **keywords: Any) -> AllocationPlan:
    """The allocation plan from ``plan=`` and SoftPruner's keywords: without ``plan`` the
    keywords make it; with one, the keywords set away from their defaults are merged in (an
    option given both ways with two values raises :class:`~fxprune.errors.InputError`)."""
    if plan is None:
        return AllocationPlan(**keywords)
    if not isinstance(plan, AllocationPlan):
        raise InputError(f"SoftPruner: plan= must be an AllocationPlan, got "
                         f"{type(plan).__name__}")
    return with_keywords(plan, non_default(keywords, PLAN_DEFAULTS), "SoftPruner")


def first_inputs(data: Any, model: nn.Module) -> tuple | None:
    """The first sample of the first batch of ``data``, on the model's device."""
    try:
        batch = next(iter(data))
    except (TypeError, StopIteration):
        return None
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return None
    return (x[:1].to(model_device_dtype(model)[0]),)
