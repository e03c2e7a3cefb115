"""``compress(..., keep_class=True)``: the pruned model as a copy of the user's own class.

Reads:  the user's model, and a function that prunes it with a given ``ignore`` (the rest of
        :func:`fxprune.compress`'s pipeline, with ``chunk`` pieces kept equal)
Writes: the grafted copy (:func:`fxprune.graft`), ``copy.fxprune_meta``: the pruned graph's
        metadata as plain data (``fxprune.verify``: the report's fields, ``fxprune.allocation``,
        the manifest...; no example inputs), ``fxprune.kept``: ``{module: why its channels
        were kept}``, ``fxprune.width_attrs``: the width attributes set

The graph is pruned, then grafted into a copy of the model. Where the copy's own code does not
survive the new widths (it reads them from attributes: YOLO11's attention reads
``self.num_heads`` and ``self.key_dim`` in ``view``/``split``), the module the graft names is
added to ``ignore`` (its channels, and its children's, are kept) and the model is pruned
again, at most :data:`MAX_ROUNDS` times. Each kept module is recorded with its reason, and one
warning lists them.
"""

from __future__ import annotations

__all__ = ["prune_keeping_class", "plain_meta", "KEPT", "MAX_ROUNDS"]

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxprune.core.trace import EXAMPLE_INPUTS
from fxprune.errors import InputError
from fxprune.plan.graft import GraftError, graft

KEPT = "fxprune.kept"  # model.fxprune_meta: {module: why its channels were kept}
MAX_ROUNDS = 8


def _plain(value: Any) -> Any:
    """``value`` as builtins (a report as the dict of its fields): a checkpoint of the model
    (ultralytics' ``best.pt``) pickles ``fxprune_meta`` with it, and must load without
    fxprune."""
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = _plain(dataclasses.asdict(value))
        if isinstance(getattr(value, "ok", None), bool):
            out["ok"] = value.ok
        return out
    return str(value)


def plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A pruned GraphModule's metadata as builtins, without the example inputs (a checkpoint
    would carry them)."""
    return {k: _plain(v) for k, v in meta.items() if k != EXAMPLE_INPUTS}


def _with(ignore: Any, extra: list[str]) -> Any:
    if not extra:
        return ignore
    if ignore is None:
        return list(extra)
    given = list(ignore) if isinstance(ignore, (list, tuple, set, frozenset)) else [ignore]
    return given + extra


def prune_keeping_class(model: nn.Module, prune: Callable[[Any], nn.Module], ignore: Any
                        ) -> nn.Module:
    """``graft(model, prune(ignore'))``, where ``ignore'`` grows by the modules whose own code
    does not survive the pruned widths, until the graft holds (at most :data:`MAX_ROUNDS`
    prunes)."""
    kept: dict[str, str] = {}
    for _ in range(MAX_ROUNDS):
        pruned = prune(_with(ignore, list(kept)))
        if not isinstance(pruned, fx.GraphModule):  # its own forward is opaque: already a
            meta = pruned.__dict__.setdefault("fxprune_meta", {})  # copy of its class
            meta[KEPT] = kept
            flags = {n: m.training for n, m in model.named_modules()}
            for n, m in pruned.named_modules():  # pruned in eval mode: the user's flags
                m.training = flags.get(n, m.training)
            return pruned
        try:
            grafted = graft(model, pruned)
        except GraftError as e:
            known = dict(pruned.named_modules())
            if not e.module or e.module in kept or e.module not in known:
                raise
            kept[e.module] = f"{e.cls}: {e.reason}"
            continue
        grafted.__dict__["fxprune_meta"] = {**plain_meta(pruned.meta), KEPT: dict(kept),
                                            **grafted.__dict__.get("fxprune_meta", {})}
        if kept:
            listed = "; ".join(f"'{k}' ({v})" for k, v in kept.items())
            warnings.warn(
                f"keep_class: the channels of {len(kept)} module(s) are kept, their own code "
                f"reads the widths: {listed[:800]}. They are in "
                "result.fxprune_meta['fxprune.kept'].", stacklevel=3)
        return grafted
    raise InputError(f"keep_class: the pruned {type(model).__name__} still does not run as "
                     f"its own class after keeping {len(kept)} modules ({', '.join(kept)}). "
                     "Hint: use the GraphModule compress returns without keep_class, or "
                     "ignore=[...] the modules whose forward reads their widths.")
