"""SWP with a budget: remove the weakest stripes until the stripe-convention MACs reach F.

fxprune's addition to SWP (not in the paper, whose amounts come out of the L1 strength
``alpha`` alone): :func:`budget_live` ranks every live stripe of the skeleton convs by its
Filter-Skeleton magnitude ``|fs[o, i, j]| * ||W[o, :, i, j]||`` (the effective stripe's norm),
divided by the norm of its filter's effective weights. The division makes the score a share of
the filter: a BatchNorm after the conv makes the layer invariant to each filter's scale, so raw
magnitudes would compare filters by a scale that does not change the function. The lowest
scores are removed, across layers, until the MACs under SWP's stripe convention (§6.3: a conv
costs its live-stripe fraction of its dense MACs) are at most ``fraction`` of the model's; each
conv keeps its strongest stripe, so no layer is removed whole.

The coarser grains (kernel row/column pairs, whole filters) are in :mod:`fxprune.stripes.shape`.
"""

from __future__ import annotations

__all__ = ["stripe_scores", "budget_live"]

from collections.abc import Mapping

import torch
from torch import Tensor

from fxprune.stripes.skeleton import SkeletonConv2d


@torch.no_grad()
def stripe_scores(conv: SkeletonConv2d) -> Tensor:
    """``[O, K, K]``: each stripe's effective norm over its filter's (0 where the filter is 0)."""
    w = conv.weight.detach().float() * conv.fs.detach().float().unsqueeze(1)  # [O, C, K, K]
    s = w.pow(2).sum(1).sqrt()  # [O, K, K]
    return s / s.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]


@torch.no_grad()
def budget_live(convs: Mapping[str, SkeletonConv2d], live: Mapping[str, Tensor],
                layer_macs: Mapping[str, float], total_macs: float, fraction: float
                ) -> dict[str, Tensor]:
    """The live stripes ``{conv: [O, K, K] bool}`` after removing the lowest-scored ones
    (:func:`stripe_scores`) of ``convs`` until the stripe-convention MACs are at most
    ``fraction * total_macs``. ``live`` is the current state (dead stripes stay dead);
    ``layer_macs`` the dense MACs of each conv. Convs not in ``convs`` keep ``live``."""
    out = {n: t.clone() for n, t in live.items()}
    kept = total_macs - sum(layer_macs[n] * (1.0 - float(live[n].float().mean()))
                            for n in live)
    excess = kept - fraction * total_macs
    if excess <= 0 or not convs:
        return out
    scores, costs, where = [], [], []
    for n, conv in convs.items():
        alive = live[n].flatten()
        raw = stripe_scores(conv).flatten().to(alive.device)
        flat = torch.where(alive, raw, torch.full_like(raw, float("inf")))
        if bool(alive.any()):  # the conv's strongest live stripe stays
            flat[torch.where(alive, raw, torch.full_like(raw, -1.0)).argmax()] = float("inf")
        ok = torch.isfinite(flat)
        idx = ok.nonzero().flatten()
        scores.append(flat[idx])
        costs.append(torch.full((idx.numel(),), layer_macs[n] / live[n].numel(),
                                dtype=torch.float64))
        where += [(n, int(i)) for i in idx]
    if not where:
        return out
    score, cost = torch.cat(scores).cpu(), torch.cat(costs)
    order = torch.argsort(score, stable=True)
    cum = torch.cumsum(cost[order], 0)
    k = int(torch.searchsorted(cum, torch.tensor([excess], dtype=torch.float64)).item()) + 1
    for j in order[: min(k, len(where))].tolist():
        n, i = where[j]
        out[n].view(-1)[i] = False
    return out

