"""The one place for the checks of how much to prune: ratios, targets, the allocation's
options, the example inputs' device, and whether anything is prunable at all.

:func:`fxprune.compress`, :class:`fxprune.SoftPruner`, :func:`fxprune.inspect` and the CLI
call these. Each raises :class:`~fxprune.errors.InputError` saying what is wrong and how to fix
it (tests match on the messages).
"""

from __future__ import annotations

__all__ = ["check_ratio", "check_target", "check_amount", "check_inputs", "check_prunable",
           "check_max_ratio", "check_clr_lambda", "Amount"]

import math
from dataclasses import dataclass
from typing import Any

from fxprune.core.analyze import Analysis
from fxprune.errors import InputError
from fxprune.ir.inputs import (
    check_inputs,  # re-exported: the oracle (core) needs it too
    )


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_ratio(ratio: Any) -> float:
    """A ratio is the fraction of channels to remove, in [0, 1)."""
    if not _number(ratio) or math.isnan(ratio):
        raise InputError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if not 0.0 <= float(ratio) < 1.0:
        raise InputError(
            f"ratio must be in [0, 1) (the fraction of channels to remove), got {ratio}. "
            "Hint: 0.5 removes half of the channels of every group; 1.0 would remove all.")
    return float(ratio)


def check_target(name: str, value: Any) -> float | None:
    """A target (``target_flops``, ``target_params``, ``target_latency``) is the fraction of
    the original to keep, in (0, 1]; None passes."""
    if value is None:
        return None
    if not _number(value) or math.isnan(value) or not 0.0 < float(value) <= 1.0:
        raise InputError(
            f"{name} must be the fraction of the original to KEEP, in (0, 1], got {value!r}. "
            f"Hint: {name}=0.5 keeps half.")
    return float(value)


@dataclass(frozen=True)
class Amount:
    """How much to prune, checked: at most one of a ratio, a MACs/params target or a latency
    target (explicit ``ratios`` may join the first two)."""

    ratio: float | None = None
    target: float | None = None  # the kept fraction of ``metric``
    metric: str = "macs"  # "macs" (target_flops) or "params" (target_params)
    latency: float | None = None  # target_latency

    @property
    def amount(self) -> float:
        """The policy's amount: ``ratio``, or 0 when a target or ``ratios`` decide."""
        return 0.0 if self.ratio is None else self.ratio


def check_amount(ratio: Any = None, *, ratios: Any = None, target_flops: Any = None,
                 target_params: Any = None, target_latency: Any = None) -> Amount:
    """Check the amount options together: each in range, and no two that contradict."""
    t_lat = check_target("target_latency", target_latency)
    if t_lat is not None and (target_flops is not None or target_params is not None
                              or ratio is not None or ratios):
        raise InputError("target_latency chooses every group's width from measured time: give "
                         "it alone, without ratio, ratios, target_flops or target_params")
    target = check_target("target_flops", target_flops)
    t_params = check_target("target_params", target_params)
    if target is not None and t_params is not None:
        raise InputError("give target_flops or target_params, not both")
    metric = "macs" if target is not None else "params"
    target = target if target is not None else t_params
    if target is not None and ratio is not None:
        raise InputError(f"give ratio or target_{'flops' if metric == 'macs' else 'params'}, "
                         "not both: the target search chooses the ratio")
    return Amount(None if ratio is None else check_ratio(ratio), target, metric, t_lat)


def check_max_ratio(max_ratio: Any) -> float | None:
    """None (the policy's default) or a number in (0, 1)."""
    if max_ratio is not None and (not _number(max_ratio) or not 0.0 < float(max_ratio) < 1.0):
        raise InputError(f"max_ratio must be in (0, 1), got {max_ratio!r}")
    return None if max_ratio is None else float(max_ratio)


def check_clr_lambda(clr_lambda: Any) -> float:
    """CLR's exponent is a finite number."""
    if not _number(clr_lambda) or not math.isfinite(clr_lambda):
        raise InputError(f"clr_lambda must be a finite number, got {clr_lambda!r}")
    return float(clr_lambda)


def check_prunable(analysis: Analysis) -> None:
    """Some group has units to prune; else say why every channel is frozen."""
    if any(g.prunable > 0 and g.size > 1 for g in analysis.groups):
        return
    reasons = sorted({g.frozen_reason for g in analysis.groups if g.frozen_reason})[:5]
    raise InputError(
        "nothing to prune: every channel of this model is frozen"
        + (f" ({'; '.join(reasons)})" if reasons else "")
        + ". Hint: fxprune prunes the channels between layers (conv/linear outputs that feed"
        " other layers); a model whose every channel reaches the output or an unsupported "
        "op has none.")
