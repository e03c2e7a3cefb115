"""Is a pruned model made from this original? The shape check behind ``incompatible``.

:func:`fxprune.verify` first checks that the pruned model's manifest names channel axes the
analyzed original binds, with kept indices in range, and that every tensor of the pruned model
has the original's shape with those axes cut; only then does it run the oracle.
"""

from __future__ import annotations

__all__ = ["incompatibility"]

from typing import Any

import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis
from fxprune.ir.unused import UNUSED


def _tensors(m: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers, persistent or not, under every name they have."""
    return {**dict(m.named_parameters(remove_duplicate=False)),
            **dict(m.named_buffers(remove_duplicate=False))}


def _normed_weight(name: str) -> str:
    """The weight that a weight_norm tensor stands for (``m.weight_g`` / ``m.weight_v``, or
    ``m.parametrizations.weight.original0/1``): the manifest names that weight, and g and v
    are cut like it (g only along its non-1 axis)."""
    head, _, last = name.rpartition(".")
    if last in ("weight_g", "weight_v"):
        return f"{head}.weight" if head else "weight"
    mod, sep, rest = head.partition(".parametrizations.") if ".parametrizations." in head \
        else ("", "", head.removeprefix("parametrizations.")) if head.startswith(
            "parametrizations.") else ("", "", "")
    if last in ("original0", "original1") and rest:
        return f"{mod}.{rest}" if mod else rest
    return name


def incompatibility(gm: fx.GraphModule, analysis: Analysis, pruned: nn.Module,
                    manifest: Any) -> str | None:
    """Why ``pruned`` cannot come from the analyzed original ``gm``, or None.

    Every manifest entry must name a channel axis the original binds, with kept indices in
    range, and every tensor of the pruned model must have the original's shape with the
    manifest's axes cut to their kept counts (the rewrite's own constants excepted).
    """
    if not isinstance(manifest, dict):
        return "its manifest is not a mapping"
    sizes: dict[tuple[str, int], int] = {}
    for b in analysis.bindings:
        sizes[(f"{b.target}.{b.param}" if b.param else b.target, b.dim)] = b.ids.numel()
    for path, dims in manifest.items():
        if not isinstance(dims, dict):
            return f"manifest entry {path!r} is not a mapping"
        for d, idx in dims.items():
            n = sizes.get((path, d))
            if n is None:
                return f"the original has no prunable axis {d} of '{path}'"
            if not isinstance(idx, (list, tuple)) or not all(
                    isinstance(i, int) and 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
                return f"the kept indices of '{path}' axis {d} do not fit its {n} channels"
    original = _tensors(gm)
    mine = _tensors(pruned)
    unused = set(gm.meta.get(UNUSED, ()))  # a file keeps only what forward uses
    missing = [k for k in original if k not in mine and k not in unused]
    if missing:
        return f"it has no tensor '{missing[0]}'" + (
            f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    for name, t in mine.items():
        if name.rsplit(".", 1)[-1].startswith("fxprune_"):
            continue  # residual="scatter" constants
        o = original.get(name)
        if not isinstance(t, Tensor):
            continue
        if o is None:
            return f"the original has no tensor '{name}'"
        want = list(o.shape)
        for d, idx in (manifest.get(name) or manifest.get(_normed_weight(name)) or {}).items():
            if isinstance(d, int) and 0 <= d < len(want) and want[d] != 1:
                want[d] = len(idx)
        if list(t.shape) != want:
            return f"'{name}' has shape {tuple(t.shape)}, expected {tuple(want)}"
    return None
