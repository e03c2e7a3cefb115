"""The prunable layers of an analyzed graph, as the latency table sees them.

A *layer* is one convolution (``Conv1d/2d/3d``, grouped and depthwise included) or ``Linear``
module call, together with the ``BatchNorm`` that is its only user and the activation module
that is that norm's only user (their cost follows the conv's output width and its memory
layout, so they are timed as one block). For each layer :func:`find_layers` records

- the configuration needed to rebuild it at any width (:meth:`LayerSpec.build`), and its input
  shape as seen on the example inputs (batch replaced by the measured batch);
- how its input and output widths follow the channel groups: for every prunable group, how
  many of the layer's input (output) channel positions belong to each unit of the group
  (``in_counts``/``out_counts``), plus the positions that never change (``in_fixed``/
  ``out_fixed``). With kept units known, the width is exact: ``fixed + counts[kept].sum()``;
- a *signature*: layers with equal signatures cost the same at equal widths and share one grid
  of measurements (resnet50's 16 bottleneck 3x3 convs come down to 4 signatures).
"""

from __future__ import annotations

__all__ = ["LayerSpec", "find_layers", "grouped_conv_groups", "ACTIVATIONS"]

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.ir import meta
from fxprune.ir.channels import axis_ids

ACTIVATIONS: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.Mish,
    nn.ELU, nn.Sigmoid, nn.Tanh, nn.PReLU, nn.Identity)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class LayerSpec:
    """One prunable layer block (see the module docstring)."""

    name: str  # qualified module name of the conv/linear
    nodes: tuple[str, ...]  # fx nodes the block covers (conv/linear, then norm, then act)
    module: nn.Module  # the original conv/linear (not modified)
    followers: tuple[nn.Module, ...]  # the norm and activation modules (not modified)
    input_shape: tuple[int, ...]  # batch = the example's; replaced when measuring
    in_full: int
    out_full: int
    in_counts: dict[int, Tensor] = field(default_factory=dict)  # group id -> [units] positions
    out_counts: dict[int, Tensor] = field(default_factory=dict)
    in_fixed: int = 0
    out_fixed: int = 0

    @property
    def kind(self) -> str:
        return "linear" if isinstance(self.module, nn.Linear) else "conv"

    @property
    def depthwise(self) -> bool:
        m = self.module
        return isinstance(m, _CONVS) and m.groups > 1 and m.groups == m.in_channels

    @property
    def groups(self) -> int:
        """Conv groups that stay fixed when pruning (1 for dense and depthwise layers)."""
        m = self.module
        return int(m.groups) if isinstance(m, _CONVS) and not self.depthwise else 1

    @property
    def varies_in(self) -> bool:
        return bool(self.in_counts) and not self.depthwise

    @property
    def varies_out(self) -> bool:
        return bool(self.out_counts)

    @property
    def signature(self) -> str:
        """Equal signatures cost the same at equal widths (shape, config, followers)."""
        m = self.module
        if isinstance(m, _CONVS):
            conf = (f"{type(m).__name__}|k{tuple(m.kernel_size)}|s{tuple(m.stride)}|"
                    f"p{m.padding if isinstance(m.padding, str) else tuple(m.padding)}|"
                    f"d{tuple(m.dilation)}|g{'dw' if self.depthwise else m.groups}|"
                    f"pm{m.padding_mode}")
        else:
            conf = "Linear"
        bias = getattr(m, "bias", None) is not None
        fol = ",".join(type(f).__name__ for f in self.followers)
        var = f"{'i' if self.varies_in else ''}{'o' if self.varies_out else ''}"
        return (f"{conf}|b{int(bias)}|x{tuple(self.input_shape[1:])}|{fol}|"
                f"{self.in_full}x{self.out_full}|{var}")

    def width_in(self, kept: dict[int, Tensor]) -> float:
        """Input width under kept-unit masks ``{group id: bool[size]}`` (absent: all kept)."""
        if self.depthwise:
            return self.width_out(kept) * self.in_full / max(1, self.out_full)
        return _width(self.in_fixed, self.in_counts, kept)

    def width_out(self, kept: dict[int, Tensor]) -> float:
        return _width(self.out_fixed, self.out_counts, kept)

    def snap(self, w_in: float, w_out: float) -> tuple[int, int]:
        """Widths this layer can really have: whole conv groups, depthwise in = out / mult."""
        g = self.groups
        w_out_i = max(g, int(math.ceil(w_out / g)) * g)
        if self.depthwise:
            mult = max(1, self.out_full // max(1, self.in_full))
            w_out_i = max(mult, int(math.ceil(w_out / mult)) * mult)
            return w_out_i // mult, w_out_i
        return max(g, int(math.ceil(w_in / g)) * g), w_out_i

    def build(self, w_in: int, w_out: int, batch: int, device: torch.device,
              dtype: torch.dtype) -> tuple[nn.Module, Tensor]:
        """A fresh single-layer block at these widths and a random input for it."""
        m = self.module
        if isinstance(m, _CONVS):
            groups = w_in if self.depthwise else m.groups
            new: nn.Module = type(m)(
                w_in, w_out, m.kernel_size, stride=m.stride, padding=m.padding,
                dilation=m.dilation, groups=groups, bias=m.bias is not None,
                padding_mode=m.padding_mode)
            shape = (batch, w_in, *self.input_shape[2:])
        else:
            new = nn.Linear(w_in, w_out, bias=m.bias is not None)
            shape = (batch, *self.input_shape[1:-1], w_in)
        parts = [new] + [_narrow(f, self.out_full, w_out) for f in self.followers]
        block = nn.Sequential(*parts).to(device=device, dtype=dtype).eval()
        x = torch.randn(shape, device=device, dtype=dtype)
        return block, x


def _width(fixed: int, counts: dict[int, Tensor], kept: dict[int, Tensor]) -> float:
    w = float(fixed)
    for gid, c in counts.items():
        k = kept.get(gid)
        w += float(c.sum() if k is None else c[k].sum())
    return w


def _narrow(mod: nn.Module, full: int, width: int) -> nn.Module:
    """A copy of a per-channel module (norm, PReLU...) cut to its first ``width`` channels."""
    new = copy.deepcopy(mod)
    for name, t in list(new.named_parameters(recurse=True)) + list(
            new.named_buffers(recurse=True)):
        if t is not None and t.dim() >= 1 and t.shape[0] == full and full != width:
            owner = new.get_submodule(name.rpartition(".")[0]) if "." in name else new
            leaf = name.rpartition(".")[2]
            cut = t.detach()[:width].clone()
            if isinstance(t, nn.Parameter):
                setattr(owner, leaf, nn.Parameter(cut, requires_grad=t.requires_grad))
            else:
                owner.register_buffer(leaf, cut)
    if hasattr(new, "num_features"):
        new.num_features = width
    return new


def _sole_user(n: fx.Node) -> fx.Node | None:
    users = list(n.users)
    return users[0] if len(users) == 1 else None


def _followers(gm: fx.GraphModule, n: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    nxt = _sole_user(n)
    if nxt is not None and nxt.op == "call_module" and isinstance(
            gm.get_submodule(str(nxt.target)), nn.modules.batchnorm._BatchNorm):
        out.append(nxt)
        act = _sole_user(nxt)
        if act is not None and act.op == "call_module" and isinstance(
                gm.get_submodule(str(act.target)), ACTIVATIONS):
            out.append(act)
    return out


def _counts(analysis: Analysis, ids: Tensor | None, axis: int, size: int, prunable: set[int]
            ) -> tuple[dict[int, Tensor], int]:
    """Per-group unit counts of the positions along ``axis`` (and the fixed positions)."""
    if not isinstance(ids, Tensor) or ids.dim() <= axis:
        return {}, size
    flat = axis_ids(ids, axis, size)
    if flat is None or flat.numel() != size:
        return {}, size
    valid = (flat >= 0) & (flat < analysis.n_ids)
    gid = torch.full_like(flat, -1)
    gid[valid] = analysis.group_of[flat[valid]]
    out: dict[int, Tensor] = {}
    fixed = size
    for g in sorted(set(gid.tolist()) & prunable):
        sel = gid == g
        units = analysis.unit_index[flat[sel]]
        out[g] = torch.bincount(units, minlength=analysis.groups[g].size).to(torch.float64)
        fixed -= int(sel.sum())
    return out, fixed


def grouped_conv_groups(layers: list[LayerSpec]) -> frozenset[int]:
    """Channel groups that set a grouped (not depthwise) conv's input or output width.

    Their units are positions inside every conv group, and the width step applies to each
    conv group's width (see :mod:`fxprune.costs.latency.table`): they are pruned ``step`` units at a
    time, not ``step`` channels.
    """
    return frozenset(gid for s in layers if s.groups > 1
                     for gid in (*s.in_counts, *s.out_counts))


def find_layers(analysis: Analysis) -> list[LayerSpec]:
    """Every conv/linear block of an analyzed graph, in graph order (see the module docs)."""
    gm = analysis.gm
    prunable = {g.id for g in analysis.groups if g.prunable > 0 and g.size > 1}
    out: list[LayerSpec] = []
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(str(n.target))
        if not isinstance(mod, (*_CONVS, nn.Linear)) or not n.args or \
                not isinstance(n.args[0], fx.Node):
            continue
        x = n.args[0]
        shape = x.meta.get(meta.SHAPE)
        if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) for d in shape):
            continue
        shape = tuple(shape)
        conv = isinstance(mod, _CONVS)
        if conv and len(shape) != mod.weight.dim():
            continue  # unbatched conv input: not timed
        in_axis, out_axis = (1, 1) if conv else (len(shape) - 1, None)
        c_in = int(mod.in_channels if conv else mod.in_features)
        c_out = int(mod.out_channels if conv else mod.out_features)
        ids_out = meta.get_ids(n)
        out_ax = out_axis if out_axis is not None else (
            ids_out.dim() - 1 if isinstance(ids_out, Tensor) else 0)
        in_counts, in_fixed = _counts(analysis, meta.get_ids(x), in_axis, c_in, prunable)
        out_counts, out_fixed = _counts(analysis, ids_out, out_ax, c_out, prunable)
        fol = _followers(gm, n)
        out.append(LayerSpec(
            name=str(n.target), nodes=(n.name, *(f.name for f in fol)), module=mod,
            followers=tuple(gm.get_submodule(str(f.target)) for f in fol),
            input_shape=shape, in_full=c_in, out_full=c_out, in_counts=in_counts,
            out_counts=out_counts, in_fixed=in_fixed, out_fixed=out_fixed))
    return out
