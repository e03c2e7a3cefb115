"""The FLOPs convention of the SFP/FPGM/MFP tables ("FLOPs↓"), next to measured MACs.

The He-family papers report the FLOPs cut of a *uniform* keep rate ``P`` (every prunable conv
keeps the fraction ``P`` of its filters) with their calculators (SFP
``utils/cifar_resnet_flop.py``, FPGM ``functions/cal_flop.py``), not by counting a pruned
model:

- only convolution multiply-accumulates count (no fully-connected layer, BatchNorm, ReLU or
  add);
- a conv's MACs are scaled by ``P`` for its output when its filters are pruned and by ``P``
  for its input when that input is a pruned conv's output: the first conv of a block (input:
  the full-width residual stream) counts ``P``, the others ``P**2``; the residual-output conv
  counts ``P**2`` because its output is scattered into the stream (``residual="scatter"``);
  the stem counts ``P`` and the first block's first conv ``P**2`` (its input is the pruned
  stem); projection shortcuts keep their outputs (``P`` or 1, by their input).

:func:`paper_flops` applies exactly this to any model: it analyzes the traced graph with
``residual="scatter"`` (the papers' structure) and gives every conv the factors of the sides
that prune (an axis of prunable channels: ``P``; frozen channels, e.g. the graph input or the
full-width stream: 1), using the conv MACs measured on the example input. Depthwise and grouped
convs scale with their output only. It reproduces the authors' calculators: CIFAR ResNet-20/56/
110 (option A) at ``P = 0.6``: 53.96% / 52.63% / 52.31% (``tests/costs/test_paper_flops.py``), and
ResNet-50 at ``P = 0.7``/``0.6``: 42.22% / 53.51% on the original ResNet layout, whose
calculator puts the stride-2 of a stage's first block in its 1x1 ``conv1``. torchvision/timm
ResNet-50s put it in the 3x3 ``conv2`` (v1.5), so ``conv1`` runs at twice the resolution there
and the same rule gives 41.53% / 52.75%.

These figures are not what a pruned model measures: a layer keeps ``N - floor(N (1 - P))``
filters, not ``N P`` (ResNet-56 at ratio 0.4 keeps 10 of 16), and measured MACs count the
classifier. Report :func:`fxprune.count` of the pruned model too.
"""

from __future__ import annotations

__all__ = ["paper_flops", "paper_flops_cut", "PaperFlops"]

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from fxprune.core.analyze import analyze
from fxprune.core.trace import trace
from fxprune.errors import InputError
from fxprune.ir import meta


@dataclass(frozen=True)
class PaperFlops:
    """Conv MACs (per sample) of the original and under the papers' convention at ``keep``."""

    keep: float
    base: float
    pruned: float
    per_layer: dict[str, tuple[float, float]] = field(default_factory=dict)  # (macs, factor)

    @property
    def cut(self) -> float:
        """The fraction of conv MACs removed (the papers' "FLOPs↓")."""
        return 1.0 - self.pruned / self.base if self.base > 0 else 0.0


def _check_keep(keep: Any) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or math.isnan(keep) or \
            not 0.0 < float(keep) <= 1.0:
        raise InputError(f"keep must be the fraction of filters every layer KEEPS, in (0, 1], got "
                         f"{keep!r}. Hint: the papers' 'pruning rate 40%' is keep=0.6.")
    return float(keep)


def paper_flops(model: nn.Module, keep: float, *, example_inputs: Any = None,
                ignore: Any = None, residual: str = "scatter") -> PaperFlops:
    """The SFP/FPGM FLOPs convention of ``model`` pruned at the uniform keep rate ``keep``.

    Args:
        model: any CNN (not modified); traced on ``example_inputs`` (default as in
            :func:`fxprune.compress`).
        keep: the fraction of filters every prunable conv keeps (the calculators'
            ``prune_rate``; a 40% pruning rate is ``keep=0.6``).
        ignore: modules whose outputs are kept (as in :func:`fxprune.compress`).
        residual: the residual policy the model was pruned under: ``"scatter"`` (default,
            the papers': the stream stays full width) or ``"coupled"`` (the stream's channels
            are a group pruned at ``keep`` too, so the convs that read or write it scale on
            that side as well). The same rule applies to the groups each policy makes.

    Returns:
        :class:`PaperFlops`; ``.cut`` is the fraction the papers print as "FLOPs↓".
    """
    p = _check_keep(keep)
    gm = trace(model, example_inputs)
    # unsupported ops: compress reports them
    if residual not in ("scatter", "coupled"):
        raise InputError(f"residual must be 'scatter' or 'coupled', got {residual!r}")
    analysis = analyze(gm, residual=residual, ignore=ignore, warn=False)
    sizes = torch.tensor([g.size for g in analysis.groups] + [1], dtype=torch.long)
    bound = {(b.target, b.param, b.dim): b.ids for b in analysis.bindings}

    def factor(ids: torch.Tensor | None) -> float:
        if ids is None or ids.numel() == 0:
            return 1.0
        ids = ids.reshape(-1)
        prunable = ~analysis.frozen[ids] & (sizes[analysis.group_of[ids]] > 1)
        frac = float(prunable.double().mean())
        return 1.0 - frac * (1.0 - p)

    per_layer: dict[str, tuple[float, float]] = {}
    base = pruned = 0.0
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(str(n.target))
        shape = n.meta.get(meta.SHAPE)
        if not isinstance(mod, nn.modules.conv._ConvNd) or not isinstance(shape, (tuple, list)):
            continue
        macs = float(math.prod(shape[1:]) * mod.in_channels // mod.groups
                     * math.prod(mod.kernel_size))
        f = factor(bound.get((str(n.target), "weight", 0)))
        if mod.groups == 1:
            f *= factor(bound.get((str(n.target), "weight", 1)))
        per_layer[str(n.target)] = (macs, f)
        base += macs
        pruned += macs * f
    return PaperFlops(p, base, pruned, per_layer)


def paper_flops_cut(model: nn.Module, keep: float, *, example_inputs: Any = None,
                    ignore: Any = None, residual: str = "scatter") -> float:
    """The fraction of conv MACs the SFP/FPGM papers' convention removes at the uniform keep
    rate ``keep`` (e.g. CIFAR ResNet-56, ``keep=0.6``: 0.5263, the printed 52.6%); see
    :func:`paper_flops`."""
    return paper_flops(model, keep, example_inputs=example_inputs, ignore=ignore,
                       residual=residual).cut
