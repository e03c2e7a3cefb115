"""CLR, cross-layer ranking (Lin et al., CLR-RNF, TNNLS 2023): the pool of ranked weights.

Every weight of a ranked layer scores ``|w| / c_l**lambda``; one threshold over all of them sets
each layer's ratio (the fraction of its own weights below it). Two cost conventions
(``clr_cost``):

- ``"authors"`` (default): CLR as the authors' ``cifar.py``/``imagenet.py`` run it.
  * **Ranked layers**: convolutions that alone produce their channel group, i.e. every conv of
    a plain net (VGG) and the inner convs of residual blocks. Residual streams, convs scattered
    into a stream (``residual="scatter"``) and Linear layers are not ranked (kept).
  * **Cost** ``c_l`` [INF, reconstructed: no derivation is published]: the FLOPs of the segment
    the layer opens, divided by the first segment's and rounded to 5 decimals. The segment of a
    ranked conv is itself plus the unranked convs after it (graph order) up to the next ranked
    conv; convs before the first ranked one (the stem) join the first segment. A conv costs
    ``out elements x (C_in/groups x prod(kernel) + bias)``, plus 4 per output element when a
    BatchNorm directly follows it (thop's count); pooling, activations, adds and Linear layers
    cost nothing. This reproduces the authors' hard-coded ``flops_cfg`` tables exactly: VGG-16
    (their model, conv biases) ``[1.0, 18.15625, 9.07812, ..., 4.50488]`` and ResNet-56/110
    per block ``[1.0, 0.9052 x 8, 0.67278, 0.89297 x 8, 0.66667, 0.88685 x 8]``
    (``tests/core/test_clr.py``). Their ImageNet ResNet-50 table (``[2, 1.5, 1, 0.5]`` per stage)
    is hand-set; pass it as a mapping.
  * **Scores** in the weights' dtype, ``|w / c**lambda|`` (their float32 arithmetic), threshold
    = the ``int(T (1 - amount))``-th largest of the ``T`` pooled scores, layer ratio ``r`` =
    the fraction of the layer's weights *strictly* below it, and the layer keeps
    ``int(N (1 - r))`` filters (at least one: their code crashes on zero).
- ``"macs"``: fxprune's own convention. ``c_l`` = the layer's MACs per output filter divided
  by the first layer's (from the traced shapes, no rounding); every prunable group is ranked,
  a residual group pooling the filters of all its producers (one ratio per coupled stream,
  like the authors' per-stage conv3 pooling on ResNet-50); a group loses
  ``floor(prunable x fraction below)`` units.
- a mapping ``{module name or glob: c}`` or a sequence of ``c`` in the ranked layers' graph
  order (e.g. the authors' table verbatim), with the ``"authors"`` ranking and rounding.

No group loses more than ``max_ratio`` of its units when one is given; CLR has no cap by
default.
"""

from __future__ import annotations

__all__ = ["CLR_COSTS", "layer_costs", "authors_costs", "ranked_groups", "ClrPool"]

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.errors import InputError
from fxprune.ir import meta

CLR_COSTS = ("authors", "macs")
_CONV = nn.modules.conv._ConvNd
_BN = nn.modules.batchnorm._BatchNorm


def _tensor(root: nn.Module, m: meta.ParamSlice) -> Tensor | None:
    try:
        return m.tensor(root)
    except AttributeError:
        return None


def layer_costs(analysis: Analysis) -> dict[tuple[str, str], float]:
    """``clr_cost="macs"``'s ``c_l`` per producer parameter: MACs per output filter / those of
    the first layer (weights per filter times the output's elements per channel)."""
    nodes = {n.name: (i, n) for i, n in enumerate(analysis.gm.graph.nodes)}
    raw: dict[tuple[str, str], tuple[int, float]] = {}
    for g in analysis.groups:
        for m in g.members:
            if m.role != "out" or (m.target, m.param) in raw:
                continue
            w = _tensor(analysis.gm, m)
            if w is None or w.dim() < 2 or w.shape[0] == 0:  # biases are not filters
                continue
            idx, node = nodes.get(m.node, (len(nodes), None))
            shape = node.meta.get(meta.SHAPE) if node is not None else None
            spatial = (math.prod(shape) / w.shape[0] if isinstance(shape, (tuple, list))
                       and all(isinstance(d, int) for d in shape) else 1.0)
            raw[(m.target, m.param)] = (idx, w[0].numel() * max(spatial, 1.0))
    if not raw:
        return {}
    first = min(raw.values())[1]
    return {k: c / first for k, (_, c) in raw.items()}


def _filters(analysis: Analysis, g: meta.Group) -> list[meta.ParamSlice]:
    out = []
    for m in g.members:
        w = _tensor(analysis.gm, m) if m.role == "out" else None
        if w is not None and w.dim() >= 2:
            out.append(m)
    return out


def ranked_groups(analysis: Analysis, groups: Sequence[meta.Group]
                  ) -> list[tuple[meta.Group, meta.ParamSlice]]:
    """The groups ``clr_cost="authors"`` ranks, with their one conv: groups produced by a single
    convolution that is not part of a residual scatter, in graph order."""
    scattered: set[int] = set()
    for sc in analysis.scatters:
        ids = sc.branch_ids[sc.branch_ids >= 0]
        scattered.update(int(i) for i in analysis.group_of[ids].unique() if int(i) >= 0)
    order = {n.name: i for i, n in enumerate(analysis.gm.graph.nodes)}
    found = []
    for g in groups:
        filters = _filters(analysis, g)
        if len(filters) != 1 or g.id in scattered:
            continue
        try:  # a functional conv's weight is an attribute, not a module: not ranked
            mod = analysis.gm.get_submodule(filters[0].target)
        except AttributeError:
            continue
        if isinstance(mod, _CONV):
            found.append((g, filters[0]))
    return sorted(found, key=lambda p: order.get(p[1].node, len(order)))


def _conv_flops(gm: Any, node: Any, mod: nn.Module) -> float:
    shape = node.meta.get(meta.SHAPE)
    if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) for d in shape):
        return 0.0
    elems = math.prod(shape[1:])  # per sample
    per = mod.in_channels // mod.groups * math.prod(mod.kernel_size) + (mod.bias is not None)
    users = list(node.users)
    bn = (len(users) == 1 and users[0].op == "call_module"
          and isinstance(gm.get_submodule(str(users[0].target)), _BN))
    return float(elems * (per + (4 if bn else 0)))


def authors_costs(analysis: Analysis, ranked: Sequence[str]) -> dict[str, float]:
    """``c_l`` of the ranked conv modules (qualified names), the authors' convention (above)."""
    gm = analysis.gm
    want = set(ranked)
    cost: dict[str, float] = {}
    prefix, current, first = 0.0, None, None
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(str(n.target))
        if not isinstance(mod, _CONV):
            continue
        f = _conv_flops(gm, n, mod)
        if str(n.target) in want:
            current = str(n.target)
            if first is None:
                first, f = current, f + prefix
            cost[current] = cost.get(current, 0.0) + f
        elif current is None:
            prefix += f
        else:
            cost[current] += f
    if first is None or cost[first] <= 0:
        return {}
    return {k: round(v / cost[first], 5) for k, v in cost.items()}


def _given_costs(spec: Any, names: list[str]) -> dict[str, float]:
    if isinstance(spec, Mapping):
        out = {}
        for name in names:
            hit = spec.get(name)
            if hit is None:
                hit = next((c for p, c in spec.items() if fnmatch.fnmatchcase(name, p)), None)
            if hit is None:
                more = " ..." if len(names) > 8 else ""
                raise InputError(f"clr_cost has no cost for the ranked layer '{name}'. Ranked "
                                 f"layers: {', '.join(names[:8])}{more}")
            out[name] = float(hit)
        return out
    values = [float(c) for c in spec]
    if len(values) != len(names):
        raise InputError(f"clr_cost lists {len(values)} costs but {len(names)} layers are ranked "
                         f"({', '.join(names[:8])}{' ...' if len(names) > 8 else ''}). Hint: "
                         "one cost per ranked conv, in graph order.")
    return dict(zip(names, values))


def _check_cost(spec: Any) -> None:
    if isinstance(spec, str):
        if spec not in CLR_COSTS:
            raise InputError(f"clr_cost must be one of {', '.join(CLR_COSTS)}, a mapping or a "
                             f"sequence of costs, got {spec!r}")
        return
    items = spec.values() if isinstance(spec, Mapping) else spec
    try:
        ok = all(not isinstance(c, bool) and float(c) > 0 and math.isfinite(float(c))
                 for c in items)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"clr_cost values must be positive numbers, got {spec!r}")


class ClrPool:
    """The pooled CLR scores of the free groups; :meth:`removed` gives units removed per group."""

    def __init__(self, analysis: Analysis, groups: Sequence[meta.Group], lam: float,
                 cost: Any = "authors"):
        _check_cost(cost)
        self.authors = cost != "macs"
        # (group, its scores, units the layer's rounding counts)
        self.parts: list[tuple[meta.Group, Tensor, int]] = []
        if self.authors:
            ranked = ranked_groups(analysis, groups)
            names = [m.target for _, m in ranked]
            costs = (authors_costs(analysis, names) if cost == "authors"
                     else _given_costs(cost, names))
            for g, m in ranked:
                w = m.tensor(analysis.gm)
                c = costs.get(m.target)
                if c is None or c <= 0:
                    continue
                vals = (w / math.pow(c, lam)).abs().reshape(-1)  # their dtype and arithmetic
                self.parts.append((g, vals.double(), w.shape[0]))
        else:
            costs_m = layer_costs(analysis)
            for g in groups:
                frozen = torch.zeros(g.size + 1, dtype=torch.bool)
                frozen[list(g.frozen_units)] = True
                vals = []
                for m in _filters(analysis, g):
                    c = costs_m.get((m.target, m.param))
                    if c is None:
                        continue
                    w = m.tensor(analysis.gm)
                    ok = (m.units >= 0) & ~frozen[m.units]
                    vals.append(w[ok].abs().reshape(-1).double() / c ** lam)
                if vals:
                    self.parts.append((g, torch.cat(vals), g.prunable))
        self.size = sum(v.numel() for _, v, _ in self.parts)
        self._pool: Tensor | None = None

    def _kth(self, k: int) -> Tensor:
        """The k-th smallest pooled score (1-based); selection, not a sort of the pool."""
        if self._pool is None:
            self._pool = torch.cat([v for _, v, _ in self.parts])
        return torch.kthvalue(self._pool, k).values

    def removed(self, amount: float) -> dict[int, int]:
        """Units each ranked group loses when ``amount`` of the pooled weights are pruned."""
        out = {g.id: 0 for g, _, _ in self.parts}
        if not self.parts:
            return out
        if self.authors:
            preserve = int(self.size * (1 - amount))
            if preserve >= self.size:
                return out
            tau = self._kth(self.size - preserve + 1) if preserve > 0 else None
            for g, v, n in self.parts:
                below = v.numel() if tau is None else int((v < tau).sum())
                out[g.id] = n - int(n * (1 - below / v.numel()))
            return out
        k = min(self.size, math.floor(amount * self.size + 1e-9))
        if k > 0:
            tau = self._kth(k)
            for g, v, n in self.parts:
                below = int((v <= tau).sum()) / v.numel()
                out[g.id] = math.floor(n * below + 1e-9)
        return out
