"""Saving and loading pruned models without pickling classes.

A saved file is a ``torch.save`` of plain data (dicts, lists, strings, numbers, tensors), so it
opens with ``torch.load(path, weights_only=True)``:

* ``graph``: the nodes of the GraphModule (op, name, target, args with node references);
* ``modules``: each leaf module as its class path, simple attributes, parameters and buffers;
* ``attrs``: tensors read by ``get_attr`` nodes;
* ``manifest``: the kept indices of every pruned parameter axis.

:func:`load` rebuilds the GraphModule, importing classes and functions only from trusted
packages (torch, torchvision, timm, operator, math, fxprune, plus ``trusted_modules``).
``load(path, model=fresh)`` instead re-applies the manifest to a freshly created original model
(:func:`apply_manifest`) and loads the saved weights into it.
"""

from __future__ import annotations

__all__ = ["save", "load", "apply_manifest"]

import builtins
import importlib
import operator
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from . import meta
from .errors import FxPruneError, InputError
from .trace import EXAMPLE_INPUTS

FORMAT = "fxprune/1"
_TRUSTED = ("torch", "torchvision", "timm", "operator", "_operator", "math", "fxprune")
_MODULE_INTERNALS = set(nn.Module().__dict__) - {"training"}


# --- encoding ---------------------------------------------------------------------------------

def _qualname(obj: Any) -> str:
    """An importable dotted name that resolves back to ``obj``."""
    if obj is builtins.getattr:
        return "builtins.getattr"
    mod = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    candidates = []
    if mod and name:
        candidates.append(f"{mod}.{name}")
    short = getattr(obj, "__name__", None)
    if short:
        candidates += [f"torch.{short}", f"torch.nn.functional.{short}", f"operator.{short}",
                       f"torch.Tensor.{short}", f"math.{short}"]
    for c in candidates:
        try:
            if _resolve(c, trusted=None) is obj:
                return c
        except Exception:  # noqa: BLE001 - try the next candidate
            continue
    raise FxPruneError(
        f"cannot save a reference to {obj!r}: it has no importable name. Hint: use "
        "torch.save(pruned, path) (pickle) for this model, or save the manifest and re-apply "
        "it with fxprune.apply_manifest().")


def _resolve(path: str, trusted: tuple[str, ...] | None) -> Any:
    top = path.split(".")[0]
    if path == "builtins.getattr":
        return builtins.getattr
    if trusted is not None and top not in trusted:
        raise InputError(
            f"the saved model refers to '{path}', outside the trusted packages {trusted}. "
            f"Hint: if you trust this file, pass trusted_modules=['{top}'] to fxprune.load().")
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise InputError(f"cannot import '{path}'")


def _enc(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str, Tensor)):
        return v
    if isinstance(v, fx.Node):
        return {"__node__": v.name}
    if isinstance(v, torch.Size):
        return {"__tuple__": [int(x) for x in v]}
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"__dict__": {k: _enc(x) for k, x in v.items()}}
    if isinstance(v, slice):
        return {"__slice__": [_enc(v.start), _enc(v.stop), _enc(v.step)]}
    if v is Ellipsis:
        return {"__ellipsis__": True}
    if isinstance(v, torch.dtype):
        return {"__dtype__": str(v).replace("torch.", "")}
    if isinstance(v, torch.device):
        return {"__device__": str(v)}
    if isinstance(v, torch.memory_format):
        return {"__memfmt__": str(v).replace("torch.", "")}
    if isinstance(v, (set, frozenset)):
        return {"__set__": [_enc(x) for x in v]}
    if callable(v):
        return {"__ref__": _qualname(v)}
    raise FxPruneError(f"cannot save a value of type {type(v).__name__}: {v!r}")


def _dec(v: Any, nodes: dict[str, fx.Node], trusted: tuple[str, ...]) -> Any:
    if isinstance(v, list):
        return [_dec(x, nodes, trusted) for x in v]
    if not isinstance(v, dict):
        return v
    if "__node__" in v:
        return nodes[v["__node__"]]
    if "__tuple__" in v:
        return tuple(_dec(x, nodes, trusted) for x in v["__tuple__"])
    if "__dict__" in v:
        return {k: _dec(x, nodes, trusted) for k, x in v["__dict__"].items()}
    if "__slice__" in v:
        return slice(*(_dec(x, nodes, trusted) for x in v["__slice__"]))
    if "__ellipsis__" in v:
        return Ellipsis
    if "__dtype__" in v:
        return getattr(torch, v["__dtype__"])
    if "__device__" in v:
        return torch.device(v["__device__"])
    if "__memfmt__" in v:
        return getattr(torch, v["__memfmt__"])
    if "__set__" in v:
        return set(_dec(x, nodes, trusted) for x in v["__set__"])
    if "__ref__" in v:
        return _resolve(v["__ref__"], trusted)
    raise InputError(f"corrupt fxprune file: unknown value {v!r}")


def _module_spec(m: nn.Module) -> dict[str, Any]:
    cls = type(m)
    attrs = {k: _enc(v) for k, v in m.__dict__.items() if k not in _MODULE_INTERNALS}
    return {
        "class": _qualname(cls),
        "attrs": attrs,
        "params": {k: p.detach() for k, p in m._parameters.items() if p is not None},
        "requires_grad": {k: bool(p.requires_grad) for k, p in m._parameters.items()
                          if p is not None},
        "buffers": {k: b for k, b in m._buffers.items() if b is not None},
        "non_persistent": sorted(m._non_persistent_buffers_set),
        "none": sorted([k for k, p in m._parameters.items() if p is None]),
        "none_buffers": sorted([k for k, b in m._buffers.items() if b is None]),
        "children": {k: _module_spec(c) for k, c in m._modules.items() if c is not None},
    }


def _build_module(spec: dict[str, Any], trusted: tuple[str, ...]) -> nn.Module:
    cls = _resolve(spec["class"], trusted)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InputError(f"corrupt fxprune file: {spec['class']} is not an nn.Module class")
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for k, v in spec["attrs"].items():
        m.__dict__[k] = _dec(v, {}, trusted)
    for k, t in spec["params"].items():
        m._parameters[k] = nn.Parameter(t, requires_grad=spec["requires_grad"].get(k, True))
    for k in spec.get("none", []):
        m._parameters[k] = None
    for k, t in spec["buffers"].items():
        m._buffers[k] = t
    for k in spec.get("none_buffers", []):  # e.g. InstanceNorm's running_mean without stats
        m._buffers[k] = None
    m._non_persistent_buffers_set = set(spec["non_persistent"])
    for k, c in spec["children"].items():
        m._modules[k] = _build_module(c, trusted)
    return m


# --- public API -------------------------------------------------------------------------------

def save(pruned: fx.GraphModule, path: str | Path) -> None:
    """Save a pruned GraphModule as plain data (loadable with ``weights_only=True``)."""
    if not isinstance(pruned, fx.GraphModule):
        raise InputError(f"save() expects the GraphModule returned by compress(), got "
                         f"{type(pruned).__name__}")
    graph, modules, attrs = [], {}, {}
    for n in pruned.graph.nodes:
        target = n.target if isinstance(n.target, str) else {"__ref__": _qualname(n.target)}
        graph.append({"op": n.op, "name": n.name, "target": target, "args": _enc(n.args),
                      "kwargs": _enc(dict(n.kwargs))})
        if n.op == "call_module":
            modules[n.target] = _module_spec(pruned.get_submodule(str(n.target)))
        elif n.op == "get_attr":
            obj: Any = pruned
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            attrs[n.target] = {"value": obj.detach() if isinstance(obj, Tensor) else _enc(obj),
                               "parameter": isinstance(obj, nn.Parameter)}
    inputs = pruned.meta.get("fxprune.example_inputs") or ()
    payload = {
        "format": FORMAT,
        "class_name": type(pruned).__name__,
        "graph": graph,
        "modules": modules,
        "attrs": attrs,
        "training": pruned.training,
        "manifest": {k: {int(d): list(v) for d, v in dims.items()}
                     for k, dims in (pruned.meta.get(meta.MANIFEST) or {}).items()},
        "state_dict": pruned.state_dict(),
        "residual": pruned.meta.get(meta.RESIDUAL, "coupled"),
        "example_input_shapes": [list(x.shape) for x in inputs if isinstance(x, Tensor)],
    }
    torch.save(payload, str(path))


def _read(path: str | Path) -> dict[str, Any]:
    try:
        payload = torch.load(str(path), weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise
    except Exception as e:
        raise InputError(f"{path} is not an fxprune file ({type(e).__name__}: {e}). Hint: "
                         "files written by torch.save(pruned) load with "
                         "torch.load(path, weights_only=False).") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path} is not an fxprune file (expected format {FORMAT})")
    return payload


def load(path: str | Path, model: nn.Module | None = None, *,
         trusted_modules: list[str] | tuple[str, ...] = ()) -> fx.GraphModule:
    """Load a model saved with :func:`save`.

    Args:
        path: the file.
        model: optional freshly created *original* model (same architecture): the saved
            manifest is re-applied to it and the saved weights loaded, without using the saved
            graph code.
        trusted_modules: extra top-level packages whose classes/functions may be imported.
    """
    payload = _read(path)
    if model is not None:
        shapes = payload.get("example_input_shapes") or None
        inputs = tuple(torch.randn(s) for s in shapes) if shapes else None
        pruned = apply_manifest(model, payload["manifest"], example_inputs=inputs,
                                residual=payload.get("residual", "coupled"))
        pruned.load_state_dict(payload["state_dict"])
        return pruned
    trusted = tuple(_TRUSTED) + tuple(trusted_modules)
    root: dict[str, Any] = {k: _build_module(s, trusted) for k, s in payload["modules"].items()}
    for k, a in payload["attrs"].items():
        v = a["value"]
        root[k] = nn.Parameter(v) if a["parameter"] else (
            v if isinstance(v, Tensor) else _dec(v, {}, trusted))
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for spec in payload["graph"]:
        target = spec["target"]
        target = _dec(target, nodes, trusted) if isinstance(target, dict) else target
        args = _dec(spec["args"], nodes, trusted)
        kwargs = _dec(spec["kwargs"], nodes, trusted)
        if spec["op"] == "output":
            nodes[spec["name"]] = graph.output(args[0])
        else:
            nodes[spec["name"]] = graph.create_node(spec["op"], target, tuple(args), kwargs,
                                                    name=spec["name"])
    gm = fx.GraphModule(root, graph, class_name=payload.get("class_name", "Pruned"))
    gm.train(bool(payload.get("training", False)))
    gm.meta[meta.MANIFEST] = payload["manifest"]
    gm.meta[meta.RESIDUAL] = payload.get("residual", "coupled")
    shapes = payload.get("example_input_shapes") or []
    if shapes:  # fresh random inputs of the saved shapes (for verify/count/re-saving)
        gen = torch.Generator().manual_seed(0)
        gm.meta[EXAMPLE_INPUTS] = tuple(torch.randn(s, generator=gen) for s in shapes)
    return gm


def apply_manifest(model: nn.Module, manifest: dict[str, dict[int, list[int]]],
                   example_inputs: Any = None, residual: str = "coupled") -> fx.GraphModule:
    """Prune a freshly created original model to the keep-sets recorded in ``manifest``.

    ``manifest`` is ``pruned.meta["fxprune.manifest"]`` (also stored by :func:`save`);
    ``residual`` must be the policy the model was pruned with.
    """
    from .analyze import analyze
    from .rewrite import rewrite
    from .select import annotate
    from .trace import trace
    from .verify import kept_from_manifest

    gm = trace(model, example_inputs)
    analysis = analyze(gm, residual=residual)
    kept = kept_from_manifest(analysis, manifest)
    keep: dict[int, meta.KeepSet] = {}
    for g in analysis.groups:
        keep[g.id] = meta.KeepSet(g.id, g.size, ())
    sel: dict[int, set[int]] = {g.id: set() for g in analysis.groups}
    ids = torch.nonzero(kept).flatten()
    ids = ids[analysis.group_of[ids] >= 0]
    for gid, u in zip(analysis.group_of[ids].tolist(), analysis.unit_index[ids].tolist()):
        sel[gid].add(u)
    keep = {g: meta.KeepSet(g, analysis.groups[g].size, tuple(sorted(s))) for g, s in
            sel.items()}
    annotate(gm, kept)
    gm.meta[meta.KEEPSETS] = keep
    return rewrite(gm)


_ = operator
