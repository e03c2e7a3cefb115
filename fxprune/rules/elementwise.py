"""Elementwise ops (activations, arithmetic, dropout, casts), pooling/resampling, reductions,
softmax-like ops and constant-tensor creation.

Families:
* ``Broadcast``: every tensor input is coupled elementwise with broadcasting. An input that is
  broadcast along an axis (data size 1) with a constant id never couples channels: this is what
  keeps ``x * gate`` prunable when ``gate`` has one channel.
* ``Passthrough``: the output has the ids of the first input (casts, copies).
* ``Spatial``: pooling/resampling of the trailing ``k`` dims; channel ids pass through.
* ``AlongDim``: ops that mix along one ``dim`` (softmax, cumsum): ids must not vary along it.
* ``Reduce``: mean/sum/max over dims; reducing over channels freezes them.
* ``Constant``: tensors created from sizes (zeros, ones...): a fresh, prunable channel space on
  axis 1 whose literal size is patched by the rewrite.
"""

from __future__ import annotations

__all__ = ["Broadcast", "ResidualAdd", "Passthrough", "Spatial", "AlongDim", "Reduce", "Constant"]

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fxprune.ir import meta
from fxprune.ir.channels import FREE, at_axis, fit
from fxprune.rules import Rule, register_rule
from fxprune.rules.util import (
    align,
    channel_axes_beside,
    dims_arg,
    last_axes,
    norm_dim,
    tensor_args,
)


class Broadcast(Rule):
    """Elementwise op with broadcasting: couples the channels of all its tensor inputs."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        out = ctx.out
        nd = out.dim()
        shape = tuple(out.shape)
        items = [(align(i, nd), (1,) * (nd - v.dim()) + tuple(v.shape))
                 for i, v in tensor_args(ctx.node, ctx.args, ctx.kwargs)]
        varying = {d for ids, _ in items for d in range(nd) if ids.shape[d] > 1}
        part = []
        for ids, vshape in items:
            bcast = any(vshape[d] == 1 and shape[d] > 1 and d in varying for d in range(nd))
            if bcast and ids.numel() == 1:
                continue  # a broadcast scalar-like value: never couples channels
            part.append(ids)
        if not part:
            return torch.full((1,) * nd, FREE, dtype=torch.long)
        part.sort(key=lambda t: -t.numel())
        base = part[0]
        for other in part[1:]:
            ctx.union(base, other)
        # same rank (aligned) and broadcast-compatible: the target is the per-dim maximum
        # (torch.broadcast_shapes is a Python reference implementation, 10x slower here)
        target = tuple(max(dims) for dims in zip(*(p.shape for p in part)))
        return base.expand(target).contiguous() if tuple(base.shape) != tuple(target) else base


class ResidualAdd(Broadcast):
    """Addition: couples its inputs; with residual="scatter", a conv(+BN) branch keeps its own."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        if ctx.residual == "scatter":
            out = self._scatter(ctx)
            if out is not None:
                return out
        return super().propagate(ctx)

    def _scatter(self, ctx):  # type: ignore[no-untyped-def]
        node = ctx.node
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node)
                                                         for a in node.args):
            return None
        a, b = ctx.args
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape or (
                a.dim() < 2):
            return None
        for i in (0, 1):
            norm = _conv_branch(node.args[i], ctx.modules)
            if norm is False:
                continue
            branch, stream = ctx.ids(i), ctx.ids(1 - i)
            if not _per_channel(branch):
                continue
            why = "residual stream (residual='scatter' keeps it full width)"
            chain = stream_source(node.args[1 - i], ctx.modules)
            if chain is not None and _per_channel(stream) and torch.equal(
                    stream.reshape(-1), meta.get_ids(chain[0]).reshape(-1)):
                # the stem (or a block output that is a conv's own channels) joins the stream
                ctx.scatter_stream(1 - i, stream.reshape(-1), tuple(n.name for n in chain[1:]))
                out = ctx.frozen_ids(ctx.out.shape, why)
            else:
                ctx.freeze(stream, why)
                out = stream
            ctx.scatter(i, branch.reshape(-1), norm)
            return out
        return None


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# per-channel ops that map a channel that is constant over space to a constant (the stem chain)
CHAIN_ACTS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.ELU, nn.Mish,
              nn.Identity)
CHAIN_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
CHAIN_FUNCS = (F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.hardswish)


def _per_channel(ids: Tensor) -> bool:
    return ids.dim() >= 2 and ids.shape[1] > 1 and all(
        s == 1 for d, s in enumerate(ids.shape) if d != 1)


def stream_source(n: fx.Node, modules: dict) -> list[fx.Node] | None:  # type: ignore[type-arg]
    """For a residual add's stream operand ``n``: ``[conv, op, ..., n]`` when ``n`` is a conv's
    output through per-channel ops (BatchNorm, activations, max-pooling) and also feeds other
    ops (it is a block's input, e.g. the stem's ``relu(bn(conv(x)))``); else None. A
    projection shortcut (``conv -> BN`` used only by the add) is not a source: the papers keep
    its outputs."""
    if len(n.users) < 2:
        return None
    chain = [n]
    cur = n
    while True:
        if cur.op == "call_module":
            m = modules[str(cur.target)]
            if type(m) in _CONV and m.groups == 1:
                return chain[::-1] if (cur is n or len(cur.users) == 1) else None
            ok = (type(m) in _BN and m.track_running_stats) or isinstance(
                m, CHAIN_ACTS + CHAIN_POOLS)
        elif cur.op == "call_function":
            ok = cur.target in CHAIN_FUNCS
        else:
            ok = cur.op == "call_method" and cur.target == "relu"
        if not ok or not cur.args or not isinstance(cur.args[0], fx.Node) or (
                cur is not n and len(cur.users) != 1):
            return None
        cur = cur.args[0]
        chain.append(cur)


def _conv_branch(n: fx.Node, modules: dict) -> str | None | bool:  # type: ignore[type-arg]
    """For ``conv -> [BatchNorm] -> add``: the norm's node name (None without one); else False."""
    if n.op != "call_module" or len(n.users) != 1:
        return False
    m = modules[str(n.target)]
    norm = None
    if type(m) in _BN and m.track_running_stats:
        norm, n = n.name, n.args[0]
        if not isinstance(n, fx.Node) or n.op != "call_module" or len(n.users) != 1:
            return False
        m = modules[str(n.target)]
    if type(m) in _CONV and m.groups == 1:
        return norm
    return False


class Passthrough(Rule):
    """Output channels are the first input's channels (casts, copies, in-place wrappers)."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        ids = ctx.ids(0, "input")
        if not isinstance(ids, Tensor):
            ids = ctx.ids(0, "self")
        return fit(align(ids, ctx.out.dim()), ctx.out.shape)


class Spatial(Rule):
    """Pools, pads or resamples its last ``k`` axes; channel ids on the other axes pass through.

    ``k`` comes from the op's definition: a ``Kd`` pool or pad works on the last ``K`` axes of
    a batched (``K+2``-D) or unbatched (``K+1``-D) input alike; ``interpolate``/``Upsample``
    on every axis after the first two (``k=None``). Channels on a worked axis are mixed (or
    padded) there: they are frozen, e.g. ``max_pool3d`` on a 4-D ``[B, C, H, W]`` tensor pools
    over ``C``, ``avg_pool2d`` on ``y.flatten(2)`` too.
    """

    def __init__(self, k: int | None = None):
        self.k = k

    def _k(self, ctx) -> int:  # type: ignore[no-untyped-def]
        if self.k is not None:
            return self.k
        return max(1, ctx.out.dim() - 2)

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        ids = ctx.ids(0, "input")
        out = ctx.out[0] if isinstance(ctx.out, tuple) else ctx.out  # (values, indices)
        k = min(self._k(ctx), ids.dim())
        worked = [d for d in range(ids.dim() - k, ids.dim()) if ids.shape[d] > 1]
        result = fit(ids, out.shape)
        if worked:
            name = type(ctx.module).__name__ if ctx.module is not None else _name(ctx.node)
            ctx.freeze(ids, f"{name} works on axes {last_axes(ids.dim(), k)} of a {ids.dim()}-D "
                            f"input, and axes {worked} carry channels")
            if result is None:  # fresh (frozen) channels of the resized axes
                result = ctx.opaque_ids(out.shape, f"output of {name} over channels")
        elif result is None:
            from fxprune.ir.propctx import Unsupported

            raise Unsupported("changes the size of a channel axis")
        return tuple(result for _ in ctx.out) if isinstance(ctx.out, tuple) else result


class AlongDim(Rule):
    """Mixes values along ``dim`` (softmax, cumsum): channels must not vary along it."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        from fxprune.ir.propctx import Unsupported

        ids = ctx.ids(0, "input")
        dim = getattr(ctx.module, "dim", None) if ctx.module is not None else ctx.arg(1, "dim")
        if dim is None:
            raise Unsupported("implicit dim")
        d = norm_dim(int(dim), ctx.out.dim())
        if ids.shape[d] > 1:
            ctx.freeze(ids, f"{ctx.node.target} mixes channels along dim {d}")
        return ids


class Reduce(Rule):
    """Reduces over dims (mean/sum/max...); reducing over channels freezes them."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        ids = ctx.ids(0, "input")
        x = ctx.arg(0, "input")
        dims = dims_arg(ctx.arg(1, "dim"), x.dim())
        keep = bool(ctx.arg(2, "keepdim", False))
        if any(ids.shape[d] > 1 for d in dims):
            ctx.freeze(ids, f"{_name(ctx.node)} reduces over channels")
        out = ids
        for d in sorted(dims, reverse=True):
            out = out.narrow(d, 0, 1)
            if not keep:
                out = out.squeeze(d)
        if isinstance(ctx.out, tuple):  # torch.max(x, dim) -> (values, indices)
            return tuple(out for _ in ctx.out)
        return fit(out, ctx.out.shape) if isinstance(ctx.out, Tensor) else out


class Constant(Rule):
    """A tensor made from sizes (zeros, ones, full...): a fresh prunable space on its channel
    axis, whose literal size the rewrite patches.

    The channel axis is the one along which the values it is combined with (the other
    arguments of its users, ``x + torch.zeros(B, H, W, C)``, ``cat([x, zeros], 1)``) carry
    channels, when they agree on one; else axis 1 (a conv's)."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        out = ctx.out
        if out.dim() == 0:
            return torch.tensor(1)
        axes = channel_axes_beside(ctx.node, ctx.node.users, tuple(out.shape))
        axis = axes.pop() if len(axes) == 1 else 1 if out.dim() > 1 else 0
        return at_axis(ctx.new_ids(out.shape[axis]), axis, out.dim())

    def is_size_arg(self, node: fx.Node, key: int | str) -> bool:
        fill = {torch.full: 1, "new_full": 2}.get(node.target)  # type: ignore[call-overload]
        return key != "fill_value" and key != fill

    def rewrite_node(self, node: fx.Node, ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.patch_shape_args(node, first=1 if node.op == "call_method" else 0)


def _name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _register(rule: Rule, *targets: object) -> None:
    register_rule(*targets)(rule)


_ACT_MODULES = [
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold, nn.LogSigmoid, nn.RReLU,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout,
]
_ACT_FUNCS = [
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_, F.selu, F.celu, F.gelu,
    F.silu, F.mish, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.hardtanh_,
    F.softplus, F.softsign, F.tanhshrink, F.softshrink, F.hardshrink, F.threshold, F.logsigmoid,
    F.rrelu, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.feature_alpha_dropout, torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp,
    torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.neg, torch.sin, torch.cos, torch.erf,
    torch.square, torch.reciprocal, torch.sign, torch.floor, torch.ceil, torch.round,
    torch.clamp, torch.clip, torch.nan_to_num, torch.sigmoid_, torch.exp_, torch.log1p,
    torch.expm1, torch.log2, torch.log10,
]
_ACT_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "log", "sqrt",
    "rsqrt", "abs", "abs_", "neg", "sin", "cos", "erf", "square", "reciprocal", "sign", "floor",
    "ceil", "round", "clamp", "clamp_", "clip", "clamp_min", "clamp_min_", "clamp_max", "sin_",
    "cos_", "sqrt_", "neg_", "nan_to_num", "log1p", "expm1", "hardtanh", "hardtanh_", "pow_",
    "__neg__", "__abs__", "__invert__", "logical_not", "softplus", "gelu", "silu", "mish",
    "hardswish", "hardsigmoid", "erf_",
]
_BINARY = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.neg, operator.mod,
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_,
    operator.or_, operator.xor, operator.invert,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.pow, torch.maximum, torch.minimum, torch.fmax, torch.fmin,
    torch.where, torch.addcmul, torch.addcdiv, torch.lerp, torch.eq, torch.ne, torch.lt,
    torch.le, torch.gt, torch.ge, torch.logical_and, torch.logical_or, torch.atan2,
    torch.remainder, torch.fmod, torch.rsub, torch.masked_fill,
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "pow",
    "maximum", "minimum", "where", "addcmul", "addcmul_", "addcdiv", "lerp", "lerp_", "eq",
    "ne", "lt", "le", "gt", "ge", "masked_fill", "masked_fill_", "__add__", "__radd__",
    "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "__pow__",
    "__iadd__", "__imul__", "fmod", "remainder", "logical_and", "logical_or", "rsub",
    "copy_",
]
_PASS = [
    "to", "type", "type_as", "float", "half", "double", "bfloat16", "int", "long", "bool",
    "contiguous", "clone", "detach", "detach_", "cpu", "cuda", "requires_grad_", "zero_",
    "fill_", "normal_", "uniform_", "bernoulli_", "bernoulli", torch.bernoulli,
    torch.clone, torch.detach, torch.zeros_like, torch.ones_like, torch.empty_like,
    torch.full_like, torch.rand_like, torch.randn_like, torch.randint_like,
]
_SPATIAL_1D = [
    nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d,
    nn.ZeroPad1d, nn.ReflectionPad1d, nn.ReplicationPad1d, nn.ConstantPad1d, nn.CircularPad1d,
    F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, F.lp_pool1d,
    torch.avg_pool1d, torch.adaptive_avg_pool1d, torch.max_pool1d,
]
_SPATIAL_2D = [
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
    nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ConstantPad2d, nn.CircularPad2d,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d, torch.max_pool2d,
    F.upsample_nearest, F.upsample_bilinear,
]
_SPATIAL_3D = [
    nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.ZeroPad3d,
    nn.ReflectionPad3d, nn.ReplicationPad3d, nn.ConstantPad3d, nn.CircularPad3d,
    F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d, torch.max_pool3d,
    *[f for f in (getattr(nn, "LPPool3d", None), getattr(F, "lp_pool3d", None)) if f],
]
_RESAMPLE = [nn.Upsample, F.interpolate, F.upsample]  # every axis after batch and channels

_register(Broadcast(), *_ACT_MODULES, *_ACT_FUNCS, *_ACT_METHODS, *_BINARY)
_register(Passthrough(), *_PASS)
_register(ResidualAdd(), operator.add, operator.iadd, torch.add, "add", "add_", "__add__",
          "__radd__", "__iadd__")
_register(Spatial(1), *_SPATIAL_1D)
_register(Spatial(2), *_SPATIAL_2D)
_register(Spatial(3), *_SPATIAL_3D)
_register(Spatial(), *_RESAMPLE)
_register(AlongDim(), nn.Softmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
          torch.cumsum, torch.cumprod, "softmax", "log_softmax", "cumsum", "cumprod",
          nn.LogSoftmax, nn.Softmin, F.softmin)
_register(Reduce(), torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var,
          torch.prod, torch.logsumexp, "mean", "sum",
          "amax", "amin", "std", "var", "prod", "logsumexp", "max", "min", "norm", torch.norm,
          torch.max, torch.min, "all", "any")
_register(Constant(), torch.zeros, torch.ones, torch.full, torch.empty, torch.rand, torch.randn,
          "new_zeros", "new_ones", "new_full", "new_empty")
