"""fxprune's oracle for a model pruned by another tool (Torch-Pruning in the benchmark).

Such a model has no manifest, but its tensors are slices of the original's: with random
weights nearly every value is unique, so the kept indices along each cut axis are found by
locating the pruned tensor's values in the original (:func:`kept_indices`). They give the kept
channels of fxprune's analysis of the original; from there the check is
:func:`fxprune.verify`'s: every tensor must have the original's shape with the kept channels'
axes cut (:func:`fxprune.core.shapes.incompatibility`), and the outputs must equal the zero-channel
oracle (``exact``), or the statistics-aware one (``approximate``).

``unverified`` (not a failure) means the check cannot decide: the other tool cut channels that
fxprune's analysis keeps (an op without a rule, whose channels the oracle would not follow),
an axis fxprune does not bind, or a tensor whose values are not unique enough to locate.
"""

from __future__ import annotations

__all__ = ["kept_indices", "verify_sliced"]

import warnings
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import analyze
from fxprune.core.shapes import incompatibility
from fxprune.core.trace import EXAMPLE_INPUTS, trace
from fxprune.core.verify import kept_from_manifest, verify_analyzed


def kept_indices(orig: Tensor, new: Tensor) -> dict[int, list[int]] | None:
    """``{axis: kept indices}`` for every axis on which ``new`` is a slice of ``orig`` (``{}``
    when the shapes are equal), or None when the values cannot tell (too few unique values,
    values not in ``orig``, or locations that disagree)."""
    if orig.dim() != new.dim() or any(n > o for n, o in zip(new.shape, orig.shape)):
        return None
    cut = [d for d in range(orig.dim()) if new.shape[d] < orig.shape[d]]
    if not cut:
        return {}
    o = orig.detach().flatten().double()
    n = new.detach().flatten().double()
    if n.numel() == 0:
        return None
    srt, order = torch.sort(o)
    unique = torch.ones_like(srt, dtype=torch.bool)  # a value that occurs once in orig
    same = srt[1:] == srt[:-1]
    unique[1:] &= ~same
    unique[:-1] &= ~same
    pos = torch.searchsorted(srt, n).clamp(max=srt.numel() - 1)
    ok = (srt[pos] == n) & unique[pos]
    if float(ok.double().mean()) < 0.5:
        return None
    where = torch.stack(torch.unravel_index(order[pos[ok]], orig.shape), -1)
    at = torch.stack(torch.unravel_index(torch.nonzero(ok).flatten(), new.shape), -1)
    out: dict[int, list[int]] = {}
    for d in cut:
        size = new.shape[d]
        lo = torch.full((size,), orig.shape[d], dtype=torch.long)
        hi = torch.full((size,), -1, dtype=torch.long)
        lo = lo.scatter_reduce(0, at[:, d], where[:, d], "amin")
        hi = hi.scatter_reduce(0, at[:, d], where[:, d], "amax")
        if bool((lo != hi).any()) or bool((hi < 0).any()):
            return None  # an index never located, or located at two places
        out[d] = hi.tolist()
    return out


def _tensors(m: nn.Module) -> dict[str, Tensor]:
    return {**dict(m.named_parameters()), **dict(m.named_buffers())}


def verify_sliced(original: nn.Module, pruned: nn.Module, inputs: Any) -> dict[str, Any]:
    """Check ``pruned`` (any module whose tensors are slices of ``original``'s, under the same
    names) with fxprune's oracle. Returns ``verdict`` (``exact``, ``approximate``,
    ``mismatch``, ``structural_mismatch``, ``shape_mismatch``, ``incompatible`` or
    ``unverified``), ``verdict_note`` (why, for all but ``exact``), and the errors."""
    gm = trace(original, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsupported ops: their channels are frozen
        analysis = analyze(gm)
    bound = {(f"{b.target}.{b.param}" if b.param else b.target, b.dim)
             for b in analysis.bindings}
    before, after = _tensors(original), _tensors(pruned)
    manifest: dict[str, dict[int, list[int]]] = {}
    lost: list[str] = []
    for name, t in after.items():
        o = before.get(name)
        if o is None or o.shape == t.shape:
            continue
        found = kept_indices(o, t)
        if found is None:
            lost.append(name)
            continue
        for d, idx in found.items():
            if (name, d) not in bound:
                return _unverified(f"'{name}' is cut on axis {d}, which fxprune does not bind")
            manifest.setdefault(name, {})[d] = idx
    kept = kept_from_manifest(analysis, manifest)
    frozen_cut = ~kept & analysis.frozen
    if bool(frozen_cut.any()):
        g = analysis.groups[int(analysis.group_of[torch.nonzero(frozen_cut)[0, 0]])]
        return _unverified(f"channels fxprune keeps were cut ({g.frozen_reason})")
    full: dict[str, dict[int, list[int]]] = {}
    for b in analysis.bindings:
        k = kept[b.ids]
        if not bool(k.all()):
            path = f"{b.target}.{b.param}" if b.param else b.target
            full.setdefault(path, {})[b.dim] = torch.nonzero(k).flatten().tolist()
    wrong = [name for name, t in after.items()
             if name in before and list(t.shape) != _expected(before[name], full.get(name))]
    if wrong and all(name in lost for name in wrong):
        return _unverified(f"the kept channels of '{wrong[0]}' are not recoverable from its "
                           "values")
    why = incompatibility(gm, analysis, pruned, full)
    if why is not None:
        return {"verdict": "incompatible", "verdict_note": why}
    report = verify_analyzed(gm, analysis, kept, pruned, gm.meta[EXAMPLE_INPUTS])
    note = "" if report.kind == "exact" else report.status.removeprefix(f"{report.kind}: ")
    return {"verdict": report.kind, "verdict_note": note, "max_abs_err": report.max_abs_err,
            "max_rel_err": report.max_rel_err, "vacuous": report.vacuous}


def _expected(orig: Tensor, cuts: dict[int, list[int]] | None) -> list[int]:
    """The shape ``orig`` has once ``cuts`` (axis -> kept indices) are applied."""
    want = list(orig.shape)
    for d, idx in (cuts or {}).items():
        if want[d] != 1:
            want[d] = len(idx)
    return want


def _unverified(why: str) -> dict[str, Any]:
    return {"verdict": "unverified", "verdict_note": why}
