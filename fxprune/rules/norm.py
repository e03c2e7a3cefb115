"""Normalization layers and other per-channel parameter ops.

* BatchNorm / InstanceNorm / PReLU: exact channelwise ops; every parameter and buffer whose
  length is the channel count is sliced.
* GroupNorm: each group must keep the same number of channels (position ``j`` of every group is
  one unit). Group statistics change when channels go, so pruning through it is *approximate*
  (unless ``num_groups == num_channels``).
* LayerNorm over the channel axis (channels-last, or timm's ``LayerNorm2d``): approximate, the
  mean/variance over channels change.

GroupNorm and LayerNorm have one rule each for the module and the functional form
(``F.group_norm``, ``F.layer_norm``, e.g. torchvision's ``LayerNorm2d``: permute, layer_norm
over the last axis, permute back): a functional call's ``weight``/``bias`` are coupled with its
channels (their ``get_attr`` ids are bound to the attribute), its literal ``normalized_shape``
or one-group-per-channel ``num_groups`` is patched by the rewrite, and :meth:`pruned_args`
gives the statistics-aware oracle the same arguments for the kept channels.
"""

from __future__ import annotations

__all__ = ["ChannelParams", "GroupNormRule", "LayerNormRule"]

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fxprune.ir import meta
from fxprune.rules import Rule, register_rule
from fxprune.rules.util import align, last_axes

_PER_CHANNEL_ATTRS = ("num_features", "num_channels", "num_parameters", "channels")


def bind_channel_tensors(ctx, m: nn.Module, ids, c: int) -> None:  # type: ignore[no-untyped-def]
    """Bind axis 0 of every own parameter/buffer of ``m`` that has ``c`` entries to ``ids``."""
    for name, t in list(m.named_parameters(recurse=False)) + list(
            m.named_buffers(recurse=False)):
        if t is not None and t.dim() >= 1 and t.shape[0] == c:
            ctx.bind(name, 0, ids, "channel")


class ChannelParams(Rule):
    """Per-channel op on ``axis`` (BatchNorm, InstanceNorm, PReLU): params follow channels."""

    approx: str | None = None

    def __init__(self, axis: int = 1, approx: str | None = None):
        self.axis = axis
        self.approx = approx

    def _axis(self, nd: int) -> int:
        return self.axis if self.axis >= 0 else nd + self.axis

    def channels(self, m: nn.Module) -> int:
        for a in _PER_CHANNEL_ATTRS:
            if getattr(m, a, None) is not None:
                return int(getattr(m, a))
        return int(m.weight.shape[0])

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        m = ctx.module
        x = align(ctx.ids(0, "input"), ctx.out.dim())
        nd = x.dim()
        axis = self._axis(nd) if nd > 1 else 0
        c = self.channels(m)
        if c == 1 and ctx.out.shape[axis] != 1:  # a single shared parameter (PReLU default)
            return x
        ids = ctx.channel_ids(x, axis, c, type(m).__name__)
        bind_channel_tensors(ctx, m, ids, c)
        if self.approx is not None:
            ctx.approximate(ids, self.approx)
        return x

    def update_module(self, new: nn.Module, old: nn.Module) -> None:
        tensors = [t for t in (*new.parameters(recurse=False), *new.buffers(recurse=False))
                   if t is not None and t.dim() >= 1]
        if not tensors:
            return
        n = tensors[0].shape[0]
        for a in _PER_CHANNEL_ATTRS:
            if getattr(new, a, None) is not None:
                setattr(new, a, n)


register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
              nn.PReLU)(ChannelParams())


class InstanceNormRule(ChannelParams):
    """InstanceNormKd: per-channel parameters; statistics over the last K axes.

    As torch defines it, a ``K+1``-D input is unbatched (channels on axis 0) and a ``K+2``-D
    one batched (axis 1). Without running statistics (the default) it normalizes every
    channel over its last K axes: channels found on those axes (``InstanceNorm2d`` on
    ``y.flatten(2)``, ``InstanceNorm3d`` on a 4-D tensor) are mixed there, and frozen.
    """

    def __init__(self, k: int):
        super().__init__(axis=1)
        self.k = k

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        m = ctx.module
        x = align(ctx.ids(0, "input"), ctx.out.dim())
        nd = x.dim()
        stats = [d for d in range(max(nd - self.k, 0), nd) if x.shape[d] > 1]
        if stats and not (m.track_running_stats and getattr(m, "running_mean", None) is not None):
            name = type(m).__name__
            ctx.freeze(x, f"{name} normalizes axes {last_axes(nd, self.k)} of a {nd}-D input over "
                          f"instance statistics, and axes {stats} carry channels")
            return x
        axis = 0 if nd == self.k + 1 else 1
        c = self.channels(m)
        if x.shape[axis] == 1 and ctx.out.shape[axis] != c:  # no parameters apply: pass
            return x
        ids = ctx.channel_ids(x, axis, c, type(m).__name__)
        bind_channel_tensors(ctx, m, ids, c)
        return x


register_rule(nn.InstanceNorm1d)(InstanceNormRule(1))
register_rule(nn.InstanceNorm2d)(InstanceNormRule(2))
register_rule(nn.InstanceNorm3d)(InstanceNormRule(3))


def _affine_ids(ctx, ids: Tensor, c: int) -> None:  # type: ignore[no-untyped-def]
    """A norm's per-channel ``weight``/``bias`` follow its channels: bound (module form) or
    coupled with the ids of the tensors passed in (functional form, e.g. a ``get_attr``)."""
    if ctx.module is not None:
        for name in ("weight", "bias"):
            if getattr(ctx.module, name, None) is not None:
                ctx.bind(name, 0, ids, "channel")
        return
    for i, name in ((2, "weight"), (3, "bias")):
        w, value = ctx.ids(i, name), ctx.arg(i, name)
        if isinstance(w, Tensor) and isinstance(value, Tensor):
            if value.numel() != c:
                ctx.freeze(ids, f"{name} of another shape than the {c} channels")
                ctx.freeze(w, f"{name} of another shape than the {c} channels")
            else:
                ctx.union(ids, w.reshape(-1) if w.numel() == c else w.reshape(-1)[:1])


def _put(args: list, kwargs: dict, i: int, name: str, value: object) -> None:
    """Set argument ``i`` (or keyword ``name``) where the call passes it."""
    if i < len(args):
        args[i] = value
    else:
        kwargs[name] = value


def _value(args: list, kwargs: dict, i: int, name: str) -> object:
    """The concrete value of argument ``i`` (or keyword ``name``) of a call."""
    return args[i] if i < len(args) else kwargs.get(name)


def _arg(node: fx.Node, i: int, name: str) -> object:
    return node.args[i] if i < len(node.args) else node.kwargs.get(name)


def _is_computed(v: object) -> bool:
    """Does a literal argument hold graph values (``x.shape[-1:]``)? They recompute."""
    if isinstance(v, fx.Node):
        return True
    return isinstance(v, (list, tuple)) and any(isinstance(e, fx.Node) for e in v)


class GroupNormRule(ChannelParams):
    """GroupNorm, F.group_norm: equal channels kept per group; approximate (unless 1 per group)."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        m = ctx.module
        c = m.num_channels if m is not None else int(ctx.arg(0, "input").shape[1])
        g = m.num_groups if m is not None else int(ctx.arg(1, "num_groups"))
        x = align(ctx.ids(0, "input"), ctx.out.dim())
        ids = ctx.channel_ids(x, 1, c, "GroupNorm")
        if 1 < g < c:
            v = ids.view(g, -1)
            ctx.union(v[:1], v)
        if g != c:
            ctx.approximate(ids, "GroupNorm statistics span the pruned channels")
        _affine_ids(ctx, ids, c)
        return x

    def update_module(self, new: nn.Module, old: nn.Module) -> None:
        if new.affine:
            new.num_channels = new.weight.shape[0]
        if old.num_groups == old.num_channels:
            new.num_groups = new.num_channels

    def pruned_args(self, node: fx.Node, args: list, kwargs: dict) -> None:
        """Arguments of F.group_norm for its input's kept channels (``args[0]``): one group per
        channel stays one group per channel."""
        old_c = node.args[0].meta[meta.SHAPE][1]
        if int(_value(args, kwargs, 1, "num_groups")) == old_c:  # type: ignore[call-overload]
            _put(args, kwargs, 1, "num_groups", int(args[0].shape[1]))

    def is_size_arg(self, node: fx.Node, key: int | str) -> bool:
        return key in (1, "num_groups")  # a group count is a size (recomputed, not pinned)

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        if node.op == "call_function" and not _is_computed(_arg(node, 1, "num_groups")):
            old = ctx.old(node)
            args, kwargs = list(node.args), dict(node.kwargs)
            new_c = ctx.new_shape(old.args[0])[1]
            if int(ctx.arg_value(old, 1, "num_groups")) == ctx.old_shape(old.args[0])[1]:
                _put(args, kwargs, 1, "num_groups", new_c)
            node.args, node.kwargs = tuple(args), kwargs


register_rule(nn.GroupNorm, F.group_norm, torch.group_norm)(GroupNormRule())


class LayerNormRule(Rule):
    """LayerNorm, F.layer_norm over one channel axis: params follow channels; approximate."""

    approx = "LayerNorm statistics span the pruned channels"

    def __init__(self, axis: int = -1):
        self.axis = axis

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        from fxprune.ir.propctx import Unsupported

        m = ctx.module
        x = align(ctx.ids(0, "input"), ctx.out.dim())
        nd = x.dim()
        if m is not None:
            shape, affine = tuple(m.normalized_shape), getattr(m, "weight", None) is not None
        else:
            ns = ctx.arg(1, "normalized_shape")
            shape = (int(ns),) if isinstance(ns, int) else tuple(int(v) for v in ns)
            affine = ctx.arg(2, "weight") is not None
        axis = self.axis if self.axis >= 0 else nd + self.axis
        if len(shape) != 1:
            if any(x.shape[d] > 1 for d in range(nd - len(shape), nd)):
                raise Unsupported("LayerNorm over several axes that carry channels")
            return x
        ids = ctx.channel_ids(x, axis, shape[0], "LayerNorm")
        if not affine:
            ctx.freeze(ids, "LayerNorm without affine parameters")
        elif x.shape[axis] > 1:
            ctx.approximate(ids, self.approx)
        _affine_ids(ctx, ids, shape[0])
        return x

    def update_module(self, new: nn.Module, old: nn.Module) -> None:
        if len(old.normalized_shape) == 1 and getattr(new, "weight", None) is not None:
            new.normalized_shape = (new.weight.shape[0],)

    def pruned_args(self, node: fx.Node, args: list, kwargs: dict) -> None:
        """Arguments of F.layer_norm for its input's kept channels (``args[0]``)."""
        ns = _value(args, kwargs, 1, "normalized_shape")
        if isinstance(ns, int) or len(ns) == 1:  # type: ignore[arg-type]
            _put(args, kwargs, 1, "normalized_shape", (int(args[0].shape[-1]),))

    def is_size_arg(self, node: fx.Node, key: int | str) -> bool:
        return key in (1, "normalized_shape")  # x.shape[-1:] is recomputed, not pinned

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        if node.op != "call_function" or _is_computed(_arg(node, 1, "normalized_shape")):
            return
        old = ctx.old(node)
        ns = ctx.arg_value(old, 1, "normalized_shape")
        if isinstance(ns, int) or len(ns) == 1:
            args, kwargs = list(node.args), dict(node.kwargs)
            _put(args, kwargs, 1, "normalized_shape", (ctx.new_shape(old.args[0])[-1],))
            node.args, node.kwargs = tuple(args), kwargs


register_rule(nn.LayerNorm, F.layer_norm, torch.layer_norm)(LayerNormRule(-1))
register_rule(nn.LocalResponseNorm)(type("LocalResponseNormRule", (Rule,), {
    "__doc__": "LocalResponseNorm mixes neighbouring channels: they are frozen.",
    "propagate": lambda self, ctx: _freeze_pass(ctx, "LocalResponseNorm mixes channels"),
})())


def _freeze_pass(ctx, why: str):  # type: ignore[no-untyped-def]
    x = ctx.ids(0, "input")
    ctx.freeze(x, why)
    return x
