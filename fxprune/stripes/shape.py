"""SWP's budget at the grains a dense convolution realizes: kernel row/column pairs and filters.

fxprune's addition (``granularity="shape"`` and ``"shape+filter"`` of
:class:`~fxprune.stripes.StripePruner`): the stripe budget (:mod:`fxprune.stripes.budget`)
removes single stripes, which only the stripe kernel turns into time, and on a CPU that kernel
is slower than the dense convolution on most layers of a CIFAR ResNet. Here the Filter Skeleton
decides whole groups of stripes instead:

- a **kernel pair**: the outermost live rows (or columns) of a conv's live bounding box, in
  every filter, removed as a symmetric pair so that the box stays centred (3x3 -> 1x3 or 3x1 ->
  1x1) and ``finalize(kernel="dense")`` emits a plain smaller ``nn.Conv2d``;
- a **filter** (``"shape+filter"`` only), of a conv that alone produces its output channels (a
  block's inner conv, not one feeding a residual sum): all its stripes, so the exact channel
  clean-up of ``finalize`` also removes the input channel of every conv it feeds.

Cost convention (:func:`realized_fraction`): a conv costs its dense MACs times its live
bounding box's share of the kernel, its live filters' share (exclusive producers) and its live
input channels' share: what ``fxprune.count`` measures on ``finalize(kernel="dense")``.

Greedy, one group at a time, lowest *(share of the layer removed) / (share of the model's MACs
saved)* first. The share of a layer a pair removes is the mean over live filters of their
effective energy in the pair's positions (:func:`~fxprune.stripes.budget.stripe_scores`,
per-filter normalised); a filter's is its importance over the layer's live filters', the
importance being the following BatchNorm's ``|gamma|`` (1 without one) times the norm of the
consuming convs' effective weights on its channel: both are invariant to the filter's own
scale, which BatchNorm makes meaningless. Every conv keeps its centre and one live filter.
"""

from __future__ import annotations

__all__ = ["box_fraction", "exclusive_consumers", "realized_fraction", "shape_live"]

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.stripes.budget import stripe_scores
from fxprune.stripes.skeleton import SkeletonConv2d, following_norms

Consumers = Mapping[str, Mapping[str, Tensor]]  # {producer: {consumer: source filter per input}}


def box_fraction(live: Tensor) -> float:
    """The share of a ``[O, K, K]`` live mask's kernel area inside the bounding box of the
    positions live in any filter (0 when nothing lives)."""
    pos = live.any(0)
    if not bool(pos.any()):
        return 0.0
    rows, cols = pos.any(1).nonzero().flatten(), pos.any(0).nonzero().flatten()
    return (int(rows[-1] - rows[0]) + 1) * (int(cols[-1] - cols[0]) + 1) / pos.numel()


def exclusive_consumers(model: nn.Module, example_inputs: Any, names: list[str]) -> dict[
        str, dict[str, Tensor]]:
    """``{producer conv: {consumer: [C_in] long}}`` for every conv of ``names`` that alone
    produces its output channels (one group, no other producer, nothing frozen or approximate):
    entry ``i`` of a consumer's tensor is the producer filter that feeds its input channel
    ``i`` (-1: another group). A group whose channel also runs through anything but the
    producer's own BatchNorm (a depthwise conv, another norm) is left out: zeroing the filter
    would not make that channel 0 everywhere. Found with fxprune's own analysis on a trace of
    ``model``."""
    from fxprune.core.analyze import analyze
    from fxprune.core.trace import trace

    gm = trace(model, example_inputs)
    analysis = analyze(gm, warn=False)
    norms = following_norms(model, names)
    wanted = set(names)
    out: dict[str, dict[str, Tensor]] = {}
    for g in analysis.groups:
        prods = {m.target for m in g.members if m.role == "out"}
        if len(prods) != 1 or g.frozen_units or g.approx:
            continue
        (p,) = prods
        if p not in wanted:
            continue
        outs = [m for m in g.members if m.role == "out" and m.param == "weight"]
        if len(outs) != 1 or bool((outs[0].units < 0).any()) or \
                outs[0].units.unique().numel() != outs[0].units.numel():
            continue  # a unit per filter (grouped convs repeat units across conv groups)
        filter_of_unit = torch.full((g.size,), -1, dtype=torch.long)
        filter_of_unit[outs[0].units] = torch.arange(outs[0].units.numel())
        # the channel must be 0 wherever it goes once p's filter is: through p's own
        # BatchNorm (zeroed with the filter) into the next layers' inputs, nothing else (a
        # depthwise conv's or another norm's bias would make it a nonzero constant, which
        # finalize's exact clean-up keeps)
        if any(m.role == "channel" and m.target != norms.get(p) for m in g.members):
            continue
        cons: dict[str, Tensor] = {}
        for m in g.members:
            if m.role == "in" and m.param == "weight":
                src = torch.where(m.units >= 0, filter_of_unit[m.units.clamp_min(0)],
                                  torch.full_like(m.units, -1))
                cons[m.target] = src
        out[p] = cons
    return out


def _dead_inputs(live: Mapping[str, Tensor], consumers: Consumers | None
                 ) -> dict[str, Tensor]:
    """``{consumer: [C_in] bool}``: input channels fed only by dead exclusive filters."""
    dead: dict[str, Tensor] = {}
    for p, cons in (consumers or {}).items():
        if p not in live:
            continue
        gone = ~live[p].flatten(1).any(1)
        for c, src in cons.items():
            d = (src >= 0) & gone[src.clamp_min(0).to(gone.device)].cpu()
            dead[c] = dead[c] | d if c in dead else d
    return dead


def _conv_cost(n: str, live: Mapping[str, Tensor], layer_macs: Mapping[str, float],
               consumers: Consumers | None, dead_in: Mapping[str, Tensor]) -> float:
    fo = 1.0
    if consumers and n in consumers:
        fo = float(live[n].flatten(1).any(1).float().mean())
    fi = 1.0 - float(dead_in[n].float().mean()) if n in dead_in else 1.0
    return layer_macs[n] * fo * fi * box_fraction(live[n])


def realized_fraction(live: Mapping[str, Tensor], layer_macs: Mapping[str, float],
                      total_macs: float, consumers: Consumers | None = None) -> float:
    """The model's MACs under the convention above, as a fraction of ``total_macs``."""
    dead_in = _dead_inputs(live, consumers)
    saved = sum(layer_macs[n] - _conv_cost(n, live, layer_macs, consumers, dead_in)
                for n in live)
    saved += sum(layer_macs.get(c, 0.0) * float(d.float().mean())
                 for c, d in dead_in.items() if c not in live)
    return (total_macs - saved) / max(total_macs, 1.0)


def _shrink(pos: Tensor, axis: int) -> Tensor | None:
    """``pos`` (``[K, K]`` bool) without the outermost live row pair (axis 0) or column pair
    (axis 1) of its bounding box; None when the box is 1 wide there."""
    line = pos.any(1 - axis).nonzero().flatten()
    if line.numel() < 3:
        return None
    out = pos.clone()
    idx = torch.tensor([int(line[0]), int(line[-1])], device=pos.device)
    if axis == 0:
        out[idx, :] = False
    else:
        out[:, idx] = False
    return out


def _weight(m: nn.Module) -> Tensor:
    w = m.weight.detach().float()
    return w * m.fs.detach().float().unsqueeze(1) if isinstance(m, SkeletonConv2d) else w


@torch.no_grad()
def _importance(p: str, convs: Mapping[str, SkeletonConv2d], cons: Mapping[str, Tensor],
                modules: Mapping[str, nn.Module], norms: Mapping[str, nn.Module]) -> Tensor:
    """``[O]``: |gamma| of the following BatchNorm times the consumers' effective weight norm
    on each filter's channel."""
    o = convs[p].out_channels
    gamma = norms[p].weight.detach().abs().float().cpu() if p in norms else torch.ones(o)
    use = torch.zeros(o)
    for c, src in cons.items():
        w = _weight(modules[c]).cpu()
        col = w.transpose(0, 1).reshape(w.shape[1], -1).pow(2).sum(1)  # [C_in]
        ok = src >= 0
        use.index_add_(0, src[ok], col[ok])
    return gamma * use.sqrt()


def _weakest_filter(n: str, alive: Tensor, imp: Tensor, cons: Mapping[str, Tensor],
                    cost: Mapping[str, float], dead_in: Mapping[str, Tensor],
                    layer_macs: Mapping[str, float]) -> tuple[float, float, int]:
    """Conv ``n``'s least important live filter: (its share of the layer's importance, the
    MACs its removal saves in ``n`` and in its consumers, its index)."""
    w = torch.where(alive.cpu(), imp, torch.full_like(imp, float("inf")))
    o = int(w.argmin())
    share = float(w[o] / imp[alive.cpu()].sum().clamp_min(1e-12))
    saved = cost[n] / int(alive.sum())
    for c, src in cons.items():
        dead = dead_in.get(c)
        hit = (src == o) if dead is None else (src == o) & ~dead
        k = int(hit.sum())
        if k:
            left = src.numel() - (0 if dead is None else int(dead.sum()))
            base = cost[c] if c in cost else layer_macs.get(c, 0.0) * left / src.numel()
            saved += base * k / max(left, 1)
    return share, saved, o


@torch.no_grad()
def shape_live(convs: Mapping[str, SkeletonConv2d], live: Mapping[str, Tensor],
               layer_macs: Mapping[str, float], total_macs: float, fraction: float,
               consumers: Consumers | None = None, modules: Mapping[str, nn.Module] | None = None,
               norms: Mapping[str, nn.Module] | None = None) -> dict[str, Tensor]:
    """The live stripes after removing kernel pairs (and, with ``consumers``, whole filters of
    exclusive producers) until :func:`realized_fraction` is at most ``fraction``."""
    out = {n: t.clone() for n, t in live.items()}
    total = max(float(total_macs), 1.0)
    energy = {n: stripe_scores(c).pow(2).to(live[n].device) for n, c in convs.items()}
    cons = {p: c for p, c in (consumers or {}).items() if p in convs}
    imp = {p: _importance(p, convs, c, modules or {}, norms or {}) for p, c in cons.items()}
    kept = realized_fraction(out, layer_macs, total, consumers) * total
    while kept > fraction * total + 1e-9:
        dead_in = _dead_inputs(out, consumers)
        cost = {n: _conv_cost(n, out, layer_macs, consumers, dead_in) for n in out}
        best: tuple[float, str, Any] | None = None
        best_saved = 0.0
        for n in convs:
            alive = out[n].flatten(1).any(1)
            if not bool(alive.any()):
                continue
            pos = out[n].any(0)
            for axis in (0, 1):
                new = _shrink(pos, axis)
                if new is None:
                    continue
                share = float((energy[n] * (pos & ~new)).flatten(1).sum(1)[alive].mean())
                saved = cost[n] * (1.0 - box_fraction(out[n] & new) / box_fraction(out[n]))
                if saved > 0 and (best is None or share * total / saved < best[0]):
                    best, best_saved = (share * total / saved, n, new), saved
            if n in cons and int(alive.sum()) > 1:
                share, saved, o = _weakest_filter(n, alive, imp[n], cons[n], cost, dead_in,
                                                  layer_macs)
                if saved > 0 and (best is None or share * total / saved < best[0]):
                    best, best_saved = (share * total / saved, n, o), saved
        if best is None:
            break
        _, n, what = best
        if isinstance(what, int):
            out[n][what] = False
        else:
            out[n] &= what
        kept -= best_saved
    return out
