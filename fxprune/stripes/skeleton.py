"""The Filter Skeleton (SWP, algorithms.md §6.1): insertion, regulariser and threshold.

:func:`insert_skeletons` turns every eligible ``nn.Conv2d`` of a model *in place* into a
:class:`SkeletonConv2d` (same object, same parameters, plus ``fs`` ``[O, K, K]`` initialised to
1 and trainable; the forward uses ``weight * fs[:, None]``), so optimizers, hooks and user
references stay valid and ``fs`` is in the model's ``state_dict``. Eligible: groups 1,
dilation 1, an odd square kernel with ``padding=K//2``, equal strides, zero padding mode. The
other convs are left alone and listed with the reason.

:func:`regularize` adds the L1 subgradient ``alpha * sign(fs)`` to ``fs.grad``;
:func:`threshold` zeroes ``fs`` and its gradient where ``|fs| <= delta`` and zeroes the
``weight``/``bias`` (data and grad) of the BatchNorm that directly follows a conv for the
filters with no live stripe, so that those channels are exactly 0 (§6.1). The paper zeroes
every BN this way in VGG and only the blocks' ``bn1`` in ResNet; fxprune zeroes every BN that
directly follows a skeleton conv [INF], which makes a dead residual-branch filter contribute 0
instead of the constant ``bn2(0)``.
"""

from __future__ import annotations

__all__ = ["SkeletonConv2d", "insert_skeletons", "remove_skeletons", "eligible",
           "following_norms", "regularize", "threshold", "live_stripes", "skeleton_convs"]

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.rules import RULES
from fxprune.rules.conv import ConvRule


class SkeletonConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with a Filter Skeleton ``fs`` (``[O, K, K]``): ``conv(x, W * fs)``."""

    fs: nn.Parameter

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self._conv_forward(x, self.weight * self.fs.unsqueeze(1), self.bias)


class SkeletonConvRule(ConvRule):
    """Conv with a Filter Skeleton (SWP): a conv whose ``fs`` follows its output filters."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        out = super().propagate(ctx)
        ctx.bind("fs", 0, out.reshape(-1), "out")
        return out


RULES[SkeletonConv2d] = SkeletonConvRule()


def eligible(m: nn.Module) -> str | None:
    """None if ``m`` can carry a Filter Skeleton, else why not."""
    if type(m) is not nn.Conv2d:
        return f"{type(m).__name__} is not a plain nn.Conv2d"
    k = m.kernel_size
    if m.groups != 1:
        return f"groups={m.groups} (only groups=1)"
    if m.dilation != (1, 1):
        return f"dilation={m.dilation} (only 1)"
    if k[0] != k[1] or k[0] % 2 == 0:
        return f"kernel_size={k} (only odd square kernels)"
    if m.padding != (k[0] // 2, k[0] // 2):
        return f"padding={m.padding} (only K//2 = {k[0] // 2})"
    if m.stride[0] != m.stride[1]:
        return f"stride={m.stride} (only equal strides)"
    if m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r} (only 'zeros')"
    return None


def insert_skeletons(model: nn.Module, ignore: tuple[str, ...] = ()
                     ) -> tuple[list[str], dict[str, str]]:
    """Give every eligible conv of ``model`` a Filter Skeleton, in place.

    Returns ``(names of the skeleton convs, {name: why not} of the other convs)``. Convs that
    already carry one are kept (and listed as skeleton convs). ``ignore``: module names to skip.
    """
    done, skipped = [], {}
    for name, m in model.named_modules():
        if isinstance(m, SkeletonConv2d):
            done.append(name)
            continue
        if not isinstance(m, nn.modules.conv._ConvNd):
            continue
        why = "ignored" if name in ignore else eligible(m)
        if why is not None:
            skipped[name] = why
            continue
        k = m.kernel_size[0]
        m.__class__ = SkeletonConv2d
        m.fs = nn.Parameter(torch.ones(m.out_channels, k, k, device=m.weight.device,
                                       dtype=m.weight.dtype))
        done.append(name)
    return done, skipped


def skeleton_convs(model: nn.Module) -> dict[str, SkeletonConv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SkeletonConv2d)}


def remove_skeletons(model: nn.Module, fold: bool = True) -> None:
    """Turn every :class:`SkeletonConv2d` back into an ``nn.Conv2d``, in place; with ``fold``
    its weight becomes ``weight * fs`` (the same function), else ``fs`` is dropped."""
    for m in skeleton_convs(model).values():
        with torch.no_grad():
            if fold:
                m.weight.mul_(m.fs.unsqueeze(1))
        del m.fs
        m.__class__ = nn.Conv2d


def following_norms(model: nn.Module, convs: list[str]) -> dict[str, str]:
    """``{conv: BatchNorm}`` for each skeleton conv whose output feeds only a BatchNorm2d of the
    same width (found on a symbolic trace; an untraceable model gets ``{}``)."""
    import torch.fx as fx

    from fxprune.core.tracer import FxPruneTracer

    try:
        graph = FxPruneTracer().trace(model)
    except Exception:  # noqa: BLE001 - BN zeroing is a convenience; finalize stays exact
        return {}
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    wanted = set(convs)
    for n in graph.nodes:
        if n.op != "call_module" or n.target not in wanted or len(n.users) != 1:
            continue
        user: fx.Node = next(iter(n.users))
        bn = modules.get(str(user.target)) if user.op == "call_module" else None
        if isinstance(bn, nn.BatchNorm2d) and bn.affine and \
                bn.num_features == modules[str(n.target)].out_channels:
            out[str(n.target)] = str(user.target)
    return out


def live_stripes(conv: SkeletonConv2d, delta: float) -> Tensor:
    """``[O, K, K]`` bool: the stripes with ``|fs| > delta``."""
    return conv.fs.detach().abs() > delta


@torch.no_grad()
def regularize(convs: dict[str, SkeletonConv2d], alpha: float) -> None:
    """``fs.grad += alpha * sign(fs)`` (the L1 subgradient), for every skeleton with a grad."""
    if alpha == 0:
        return
    for m in convs.values():
        if m.fs.grad is not None:
            m.fs.grad.add_(torch.sign(m.fs), alpha=alpha)


@torch.no_grad()
def threshold(convs: dict[str, SkeletonConv2d], norms: dict[str, nn.Module], delta: float
              ) -> dict[str, Tensor]:
    """Zero ``fs`` (and its grad) where ``|fs| <= delta``; zero the following BN's affine
    entries (and grads) of filters with no live stripe. Returns ``{conv: live [O, K, K]}``."""
    live: dict[str, Tensor] = {}
    for name, m in convs.items():
        keep = live_stripes(m, delta)
        m.fs.mul_(keep)
        if m.fs.grad is not None:
            m.fs.grad.mul_(keep)
        live[name] = keep
        bn = norms.get(name)
        if bn is not None:
            alive = keep.flatten(1).any(1).to(bn.weight.dtype)
            for p in (bn.weight, bn.bias):
                p.mul_(alive)
                if p.grad is not None:
                    p.grad.mul_(alive)
    return live
