"""Objects in a concrete-value trace (:mod:`fxprune.core.concrete`): rebuilt outputs and guards.

:func:`build_object` rebuilds, in the graph, an object that carries tensors but is not a
container: a dataclass output (Hugging Face's ``ModelOutput``: the traced model returns the
same class, with ``.logits``) or a plain object passed between modules (torchvision's
``ImageList``). Its rule keeps the channels of every tensor packed into it: what reads them
out is code fxprune does not see. :func:`length` is ``len()`` of a container (the guard on a
number of items).
"""

from __future__ import annotations

__all__ = ["build_object", "length", "PackedObject", "Length", "Meshgrid"]

import dataclasses
import sys
from typing import Any

import torch
import torch.fx as fx

from . import Rule, register_rule


def build_object(cls_path: str, fields: dict[str, Any]) -> Any:
    """Rebuild an object traced through: a dataclass from its fields (``ModelOutput``), any
    other class from its ``__dict__`` (torchvision's ``ImageList``). ``cls_path`` is
    ``"module:QualName"``; the module must be imported already (a loaded file cannot make
    this import anything)."""
    module, _, name = cls_path.rpartition(":")
    cls: Any = sys.modules.get(module)
    for part in name.split("."):
        cls = getattr(cls, part, None)
    if not isinstance(cls, type) or cls.__module__ != module:
        raise TypeError(f"build_object: {cls_path!r} is not a class of an imported module")
    if dataclasses.is_dataclass(cls):
        return cls(**fields)
    obj = cls.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def length(x: Any) -> int:
    """``len(x)`` of a container, in the graph (a concrete trace's guard on its items)."""
    return len(x)


fx.wrap("build_object")
fx.wrap("length")


@register_rule(build_object)
class PackedObject(Rule):
    """An object rebuilt from tensors (a model output class): their channels are kept."""

    def propagate(self, ctx: Any) -> Any:
        cls = str(ctx.node.args[0]).rpartition(":")[2]
        for ids in ctx.tensor_input_ids():
            ctx.freeze(ids, f"packed into a {cls} object")
        return None


@register_rule(length)
class Length(Rule):
    """The number of items of a container: no channels."""

    def propagate(self, ctx: Any) -> Any:
        return None


@register_rule(torch.meshgrid)
class Meshgrid(Rule):
    """A coordinate grid (anchors from feature-map sizes): no channels."""

    def propagate(self, ctx: Any) -> Any:
        for ids in ctx.tensor_input_ids():
            ctx.freeze(ids, "read by a coordinate grid (meshgrid)")
        return tuple(ctx.opaque_ids(t.shape, "a coordinate grid") for t in ctx.out)
