"""More checks of a loaded file against itself, after :mod:`fxprune.files.filecheck` (issue 24).

A file loaded without the original model is believed only as far as it agrees with itself:

- module options are within what the module's class accepts (:func:`check_options`: conv
  padding and padding modes, norm epsilons, momenta and flags, dropout rates, ``inplace``);
- BatchNorm-style running statistics are finite, with non-negative variance
  (:func:`check_options`);
- every tensor of the rebuilt module is the ``state_dict`` entry of that name: same shape,
  dtype and values (:func:`check_state_dict`; entries beyond them are the parameters
  ``forward`` never reads, which only ``load(model=...)`` uses);
- manifest indices are within the original widths the file records, and the tensors of one
  module that share a channel axis (a conv's weight and bias, a BatchNorm's four vectors) keep
  the same indices (:func:`check_manifest_widths`);
- the records of tied parameters and of training flags name what the file defines, and tied
  parameters hold the same values (:func:`retie`, :func:`restore_flags`).

Each refusal is an :class:`~fxprune.errors.InputError` naming the field, module or entry.
"""

from __future__ import annotations

__all__ = ["check_options", "check_state_dict", "check_manifest_widths", "retie",
           "restore_flags"]

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.errors import InputError

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ints(v: Any, n: int, minimum: int = 0) -> bool:
    return isinstance(v, tuple) and len(v) == n and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in v)


def _conv(m: nn.Module, where: str) -> None:
    k = len(m.kernel_size)
    mode = m.__dict__.get("padding_mode")
    allowed = ("zeros",) if m.transposed else _PADDING_MODES
    if mode not in allowed:
        raise InputError(f"{where}: attribute 'padding_mode' is {mode!r}; "
                         f"{type(m).__name__} accepts {' or '.join(map(repr, allowed))}")
    pad = m.__dict__.get("padding")
    if isinstance(pad, str):
        if pad not in ("same", "valid") or m.transposed or (
                pad == "same" and any(s != 1 for s in m.stride)):
            raise InputError(f"{where}: attribute 'padding' is {pad!r}, which "
                             f"{type(m).__name__} with stride {m.stride} does not accept")
        want = [0, 0] * k
        if pad == "same":
            for d, ks, i in zip(m.dilation, m.kernel_size, range(k - 1, -1, -1)):
                total = d * (ks - 1)
                want[2 * i], want[2 * i + 1] = total // 2, total - total // 2
    elif _ints(pad, k):
        want = [p for p in reversed(pad) for _ in range(2)]
    else:
        raise InputError(f"{where}: attribute 'padding' {pad!r} is not {k} non-negative ints, "
                         "'same' or 'valid'")
    out_pad = m.__dict__.get("output_padding")
    if not _ints(out_pad, k) or (not m.transposed and any(out_pad)) or (m.transposed and any(
            p >= max(s, d) for p, s, d in zip(out_pad, m.stride, m.dilation))):
        raise InputError(f"{where}: attribute 'output_padding' {out_pad!r} is not what "
                         f"{type(m).__name__} accepts with stride {m.stride}")
    rev = m.__dict__.get("_reversed_padding_repeated_twice")
    if not isinstance(rev, (list, tuple)) or list(rev) != want:
        raise InputError(f"{where}: attribute '_reversed_padding_repeated_twice' {rev!r} does "
                         f"not follow from padding {pad!r} (expected {want})")


def _flag(m: nn.Module, name: str, where: str) -> Any:
    v = m.__dict__.get(name)
    if not isinstance(v, bool):
        raise InputError(f"{where}: attribute '{name}' must be True or False, got {v!r}")
    return v


def _eps(m: nn.Module, where: str) -> None:
    eps = m.__dict__.get("eps")
    if not _real(eps) or eps <= 0:
        raise InputError(f"{where}: attribute 'eps' must be a finite number > 0, got {eps!r}")


def _affine(m: nn.Module, flag: str, where: str) -> None:
    has = [getattr(m, k, None) is not None for k in ("weight", "bias")]
    if _flag(m, flag, where) != has[0] or (flag == "affine" and has[0] != has[1]):
        raise InputError(f"{where}: attribute '{flag}' is {m.__dict__[flag]}, but the file "
                         f"{'holds' if has[0] else 'does not hold'} its weight")


def _norm(m: nn.Module, where: str) -> None:
    _eps(m, where)
    mom = m.__dict__.get("momentum")
    if mom is not None and not (_real(mom) and 0 <= mom <= 1):
        raise InputError(f"{where}: attribute 'momentum' must be None or in [0, 1], got {mom!r}")
    _affine(m, "affine", where)
    track = _flag(m, "track_running_stats", where)
    mean, var = m.running_mean, m.running_var
    if track != (mean is not None) or (mean is None) != (var is None):
        raise InputError(f"{where}: attribute 'track_running_stats' is {track}, but the file "
                         f"{'does not hold' if mean is None else 'holds'} running statistics")
    for name, t in (("running_mean", mean), ("running_var", var)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise InputError(f"{where}: buffer '{name}' holds NaN or infinite values (every "
                             "output would be NaN)")
    if var is not None and bool((var < 0).any()):
        raise InputError(f"{where}: buffer 'running_var' holds negative variances "
                         f"(min {float(var.min()):.3g}); a variance is >= 0")


def check_options(m: nn.Module, where: str) -> None:
    """Module options within what the module's class accepts (see the module docstring)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        _conv(m, where)
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        _norm(m, where)
    elif isinstance(m, nn.GroupNorm):
        _eps(m, where)
        _affine(m, "affine", where)
    elif isinstance(m, nn.LayerNorm):
        _eps(m, where)
        _affine(m, "elementwise_affine", where)
    elif isinstance(m, nn.modules.dropout._DropoutNd):
        p = m.__dict__.get("p")
        if not (_real(p) and 0 <= p <= 1):
            raise InputError(f"{where}: attribute 'p' must be a probability in [0, 1], got "
                             f"{p!r}")
    if "inplace" in m.__dict__:
        _flag(m, "inplace", where)


def _same(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return True  # the file stored one tensor for both (torch.save keeps shared storage)
    return bool(((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all())


def check_state_dict(state: dict[str, Tensor], gm: nn.Module) -> None:
    """Field 'state_dict' holds the rebuilt module's state, entry for entry. It may hold more:
    parameters and buffers that ``forward`` never reads, which only ``load(model=...)`` uses
    (and checks against that model)."""
    own = gm.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise InputError(f"field 'state_dict' lacks {missing[:3]}, which the saved modules "
                         "define")
    for k, mine in own.items():
        t = state[k]
        if tuple(t.shape) != tuple(mine.shape) or t.dtype != mine.dtype:
            raise InputError(f"state_dict['{k}']: shape {tuple(t.shape)} ({t.dtype}), but the "
                             f"rebuilt module's {k} is {tuple(mine.shape)} ({mine.dtype})")
        if not _same(t, mine):
            raise InputError(f"state_dict['{k}']: its values differ from the saved module's "
                             f"{k}; the file contradicts itself")


def _coupled(m: nn.Module) -> list[tuple[tuple[str, int], ...]]:
    """Tensors of one module that share a channel axis: (name, dim) tuples per axis."""
    if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        return [(("weight", 0), ("bias", 0))]
    if isinstance(m, nn.Linear):
        return [(("weight", 0), ("bias", 0))]
    if isinstance(m, nn.modules.batchnorm._NormBase):
        return [(("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0))]
    if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
        return [(("weight", d), ("bias", d)) for d in range(getattr(m.weight, "ndim", 0))]
    return []


def check_manifest_widths(manifest: dict[str, dict[int, list[int]]],
                          widths: dict[str, dict[int, int]] | None, gm: nn.Module) -> None:
    """Indices within the recorded original widths; one module's coupled tensors agree."""
    for path, dims in (widths or {}).items():
        if path not in manifest or set(dims) != set(manifest[path]):
            raise InputError(f"manifest_widths['{path}']: names dims {sorted(dims)}, but the "
                             f"manifest has {sorted(manifest.get(path, {}))} for it")
        for d, n in dims.items():
            idx = manifest[path][d]
            if isinstance(n, bool) or not isinstance(n, int) or idx[-1] >= n or len(idx) > n:
                raise InputError(f"manifest['{path}'][{d}]: kept index {idx[-1]} is out of "
                                 f"range for the original width {n!r} (manifest_widths)")
    for name, m in gm.named_modules():
        for axis in _coupled(m):
            kept = [(f"{name}.{t}", d, manifest.get(f"{name}.{t}", {}).get(d)) for t, d in axis]
            kept = [k for k in kept if k[2] is not None]
            for path, d, idx in kept[1:]:
                if idx != kept[0][2]:
                    raise InputError(f"manifest['{path}'][{d}]: keeps other indices than "
                                     f"manifest['{kept[0][0]}'][{kept[0][1]}], which shares "
                                     "its channels")


def retie(gm: nn.Module, ties: dict[str, str]) -> None:
    """Field 'ties' ``{alias: parameter}``: the alias becomes that same parameter again."""
    for alias, name in ties.items():
        where = f"ties['{alias}']"
        try:
            p = gm.get_parameter(name)
            owner_name, _, attr = alias.rpartition(".")
            owner = gm.get_submodule(owner_name)
        except AttributeError as e:
            raise InputError(f"{where}: names a parameter the file does not define "
                             f"({e})") from e
        old = owner._parameters.get(attr) if attr in owner._parameters else None
        if old is None or alias == name:
            raise InputError(f"{where}: '{alias}' is not a parameter of the file (or is "
                             f"'{name}' itself)")
        if not _same(old.detach(), p.detach()):
            raise InputError(f"{where}: '{alias}' and '{name}' are saved as one parameter but "
                             "hold different shapes or values")
        owner._parameters[attr] = p


def restore_flags(gm: nn.Module, flags: dict[str, bool]) -> None:
    """Field 'module_training' ``{module name: training}`` for every module of the result."""
    modules = dict(gm.named_modules())
    unknown = sorted(set(flags) - set(modules))
    if unknown:
        raise InputError(f"field 'module_training' names {unknown[:3]}, which the file does not "
                         "define")
    for name, flag in flags.items():
        modules[name].training = flag
