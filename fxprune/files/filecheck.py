"""Checks of a file read by :func:`fxprune.load` against itself (see also
:mod:`fxprune.files.trust`).

Every check raises :class:`~fxprune.errors.InputError` saying what is wrong and where (field,
node or module). :func:`fxprune.load` runs them in this order: the payload's fields and their
types (:func:`check_payload`), each node spec (:func:`check_node_spec`), each module spec
(:func:`check_module_spec`), parameter shapes against module attributes (:func:`check_module`),
the manifest against the saved tensors (:func:`check_manifest`), and finally one forward pass
on random inputs of the saved example-input shapes (``load(check=True)``).
"""

from __future__ import annotations

__all__ = ["MAX_EXAMPLE_NUMEL", "MAX_EXAMPLE_INPUTS", "check_payload", "check_node_spec",
           "check_module_spec", "check_module", "check_manifest", "example_shapes"]

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.errors import InputError
from fxprune.files import trust

MAX_EXAMPLE_NUMEL = 2 ** 25  # elements of all example inputs together (128 MiB as float32)
MAX_EXAMPLE_INPUTS = 16
MAX_EXAMPLE_NDIM = 8
OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
_FIELDS = {"format": str, "graph": list, "modules": dict, "attrs": dict, "manifest": dict,
           "state_dict": dict}
_OPTIONAL = {"class_name": str, "training": bool, "residual": str,
             "example_input_shapes": list, "example_input_dtypes": list}
_MODULE_FIELDS = {"class": str, "attrs": dict, "params": dict, "requires_grad": dict,
                  "buffers": dict, "non_persistent": list, "none": list, "none_buffers": list,
                  "children": dict}
_MODULE_OPTIONAL = ("none", "none_buffers")  # absent in files written before they existed


def _type(v: Any, t: type, where: str) -> Any:
    if not isinstance(v, t) or (t is int and isinstance(v, bool)):
        raise InputError(f"{where}: expected {t.__name__}, got {type(v).__name__}")
    return v


def check_payload(p: Any) -> None:
    """The top-level fields and their types."""
    for k, t in _FIELDS.items():
        if k not in p:
            raise InputError(f"field '{k}' is missing (the file is not a complete "
                             "fxprune.save file)")
        _type(p[k], t, f"field '{k}'")
    for k, t in _OPTIONAL.items():
        if p.get(k) is not None:
            _type(p[k], t, f"field '{k}'")
    if p.get("class_name") is not None:
        trust.check_name(p["class_name"], "field 'class_name'")
    if p.get("residual", "coupled") not in ("coupled", "scatter"):
        raise InputError(f"field 'residual': expected 'coupled' or 'scatter', got "
                         f"{p['residual']!r}")
    for k, t in p["state_dict"].items():
        trust.check_path(k, "field 'state_dict'")
        _type(t, Tensor, f"state_dict['{k}']")
    for k, a in p["attrs"].items():
        trust.check_path(k, "field 'attrs'")
        _type(a, dict, f"attrs['{k}']")
        if "value" not in a:
            raise InputError(f"attrs['{k}']: no 'value'")
        _type(a.get("parameter", False), bool, f"attrs['{k}']['parameter']")
        if a.get("parameter") and not (isinstance(a["value"], Tensor)
                                       and a["value"].is_floating_point()):
            raise InputError(f"attrs['{k}']: a parameter must be a floating-point tensor")
    for k in p["modules"]:
        trust.check_path(k, "field 'modules'")
    clash = set(p["modules"]) & set(p["attrs"])
    if clash:
        raise InputError(f"fields 'modules' and 'attrs' both define {sorted(clash)}")
    check_manifest_structure(p["manifest"])
    example_shapes(p)


def example_shapes(p: dict[str, Any]) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """The saved example inputs as ``(shape, dtype)``, within the documented bounds."""
    shapes = p.get("example_input_shapes") or []
    dtypes = p.get("example_input_dtypes") or ["float32"] * len(shapes)
    where = "field 'example_input_shapes'"
    if len(shapes) > MAX_EXAMPLE_INPUTS or len(dtypes) != len(shapes):
        raise InputError(f"{where}: {len(shapes)} inputs with {len(dtypes)} dtypes (at most "
                         f"{MAX_EXAMPLE_INPUTS} inputs, one dtype each)")
    out, total = [], 0
    for i, (s, d) in enumerate(zip(shapes, dtypes)):
        _type(s, list, f"{where}[{i}]")
        if len(s) > MAX_EXAMPLE_NDIM or any(isinstance(x, bool) or not isinstance(x, int)
                                            or x < 1 for x in s):
            raise InputError(f"{where}[{i}]: {s!r} is not a shape of at most "
                             f"{MAX_EXAMPLE_NDIM} positive ints")
        total += math.prod(s)
        if total > MAX_EXAMPLE_NUMEL:
            raise InputError(f"{where}: the example inputs have more than {MAX_EXAMPLE_NUMEL} "
                             "elements in all; refused")
        dtype = getattr(torch, d, None) if isinstance(d, str) else None
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise InputError(f"field 'example_input_dtypes'[{i}]: {d!r} is not a "
                             "floating-point dtype")
        out.append((tuple(s), dtype))
    return out


def check_manifest_structure(manifest: Any) -> dict[str, dict[int, list[int]]]:
    """``{param path: {dim: kept indices}}`` with sorted, unique, non-negative indices."""
    _type(manifest, dict, "field 'manifest'")
    for path, dims in manifest.items():
        where = f"manifest['{path}']"
        trust.check_path(path, "field 'manifest'")
        _type(dims, dict, where)
        for d, idx in dims.items():
            _type(d, int, f"{where} (a dim)")
            _type(idx, list, f"{where}[{d}]")
            if d < 0 or not idx or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                       for i in idx):
                raise InputError(f"{where}[{d}]: expected a non-negative dim and a non-empty "
                                 "list of non-negative int indices")
            if any(a >= b for a, b in zip(idx, idx[1:])):
                raise InputError(f"{where}[{d}]: kept indices must be sorted and unique")
    return manifest


def _saved(module: nn.Module, path: str) -> Any:
    """The saved tensor a manifest path names: a parameter or buffer, or for a weight under
    the old weight_norm hook (no ``weight`` parameter), its direction ``weight_v``."""
    for p in (path, f"{path}_v"):
        for get in (module.get_parameter, module.get_buffer):
            try:
                return get(p)
            except AttributeError:
                continue
    raise InputError(f"manifest['{path}']: the file holds no such parameter or buffer")


def check_manifest(manifest: dict[str, dict[int, list[int]]], module: nn.Module) -> None:
    """Each manifest entry names a saved tensor whose size along ``dim`` is its kept count."""
    for path, dims in manifest.items():
        t = _saved(module, path)
        for d, idx in dims.items():
            if d >= t.ndim or t.shape[d] != len(idx):
                raise InputError(
                    f"manifest['{path}'][{d}]: {len(idx)} kept indices, but the saved tensor "
                    f"has shape {tuple(t.shape)}")


def _wrapped(v: Any, tag: str, t: type, where: str) -> Any:
    if not (isinstance(v, dict) and set(v) == {tag} and isinstance(v[tag], t)):
        got = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
        raise InputError(f"{where}: expected {{'{tag}': {t.__name__}}}, got {got}")
    return v[tag]


def check_node_spec(i: int, spec: Any, n_nodes: int
                    ) -> tuple[str, str, str, list[Any], dict[str, Any]]:
    """The structure and names of ``graph[i]``; returns ``(op, name, where, args, kwargs)``
    with args and kwargs still encoded."""
    where = f"graph[{i}]"
    _type(spec, dict, where)
    op, name = spec.get("op"), spec.get("name")
    if op not in OPS:
        raise InputError(f"{where}: unknown op {op!r} (expected one of {', '.join(OPS)})")
    trust.check_name(name, f"{where} (name)")
    where = f"node '{name}' ({where})"
    args = _wrapped(spec.get("args"), "__tuple__", list, f"{where}: args")
    kwargs = _wrapped(spec.get("kwargs"), "__dict__", dict, f"{where}: kwargs")
    if "target" not in spec:
        raise InputError(f"{where}: no 'target'")
    target = spec["target"]
    if op == "output":
        if i != n_nodes - 1 or len(args) != 1 or kwargs:
            raise InputError(f"{where}: the output node must be the last node, with one arg")
    elif op == "placeholder":
        if not isinstance(target, str):
            raise InputError(f"{where}: placeholder target must be a str")
        stars = 2 if target.startswith("**") else 1 if target.startswith("*") else 0
        trust.check_name(target[stars:], f"{where} (target)")
        if kwargs or len(args) > 1 or (args and not isinstance(
                args[0], (type(None), bool, int, float, str))):
            raise InputError(f"{where}: a placeholder takes at most one constant default")
    elif op == "call_method":
        trust.tensor_method(target, f"{where} (target)")
        if not args or not (isinstance(args[0], dict) and "__node__" in args[0]):
            raise InputError(f"{where}: a call_method's first argument must be a node")
    elif op in ("get_attr", "call_module"):
        trust.check_path(target, f"{where} (target)")
    elif not (isinstance(target, dict) and set(target) == {"__ref__"}):
        raise InputError(f"{where}: a call_function target must be a function reference")
    for k in kwargs:
        trust.check_name(k, f"{where} (keyword)")
    return op, name, where, args, kwargs


def check_module_spec(spec: Any, where: str) -> None:
    """The fields of one saved module and their types (names are checked when built)."""
    _type(spec, dict, where)
    for k, t in _MODULE_FIELDS.items():
        if k not in spec and k not in _MODULE_OPTIONAL:
            raise InputError(f"{where}: field '{k}' is missing")
        _type(spec.get(k, []), t, f"{where}: field '{k}'")
    for k, v in spec["params"].items():
        _type(v, Tensor, f"{where}: parameter '{k}'")
        if not (v.is_floating_point() or v.is_complex()):
            raise InputError(f"{where}: parameter '{k}' is a {v.dtype} tensor (parameters are "
                             "floating point)")
    for k, v in spec["requires_grad"].items():
        _type(v, bool, f"{where}: requires_grad['{k}']")
    for k, v in spec["buffers"].items():
        _type(v, Tensor, f"{where}: buffer '{k}'")
    for k in (*spec["non_persistent"], *spec.get("none", []), *spec.get("none_buffers", [])):
        _type(k, str, f"{where}: a buffer or parameter name")
    if not set(spec["non_persistent"]) <= set(spec["buffers"]):
        raise InputError(f"{where}: non_persistent names buffers that are not saved")


def _shape(m: nn.Module, name: str, want: tuple[int, ...], where: str) -> None:
    t = getattr(m, name, None)
    if t is not None and tuple(t.shape) != want:
        raise InputError(f"{where}: {name} has shape {tuple(t.shape)}, but the module's "
                         f"attributes say {want}")


def _ints(m: nn.Module, names: tuple[str, ...], where: str, positive: bool = True) -> None:
    for k in names:
        v = getattr(m, k, None)
        if isinstance(v, bool) or not isinstance(v, int) or (positive and v < 1):
            raise InputError(f"{where}: attribute '{k}' must be a positive int, got {v!r}")


def check_module(m: nn.Module, where: str) -> None:
    """Parameter and buffer shapes against the attributes that define them."""
    if isinstance(m, nn.modules.conv._ConvNd):
        _ints(m, ("in_channels", "out_channels", "groups"), where)
        if not isinstance(getattr(m, "transposed", None), bool):
            raise InputError(f"{where}: attribute 'transposed' must be a bool")
        k = getattr(m, "kernel_size", None)
        if not (isinstance(k, tuple) and all(isinstance(x, int) and x > 0 for x in k)):
            raise InputError(f"{where}: kernel_size {k!r} is not a tuple of positive ints")
        for a in ("stride", "dilation"):
            v = getattr(m, a, None)
            if not (isinstance(v, tuple) and len(v) == len(k)
                    and all(isinstance(x, int) and x > 0 for x in v)):
                raise InputError(f"{where}: {a} {v!r} is not {len(k)} positive ints")
        if m.in_channels % m.groups or m.out_channels % m.groups:
            raise InputError(f"{where}: groups={m.groups} does not divide in_channels="
                             f"{m.in_channels} and out_channels={m.out_channels}")
        lead = ((m.in_channels, m.out_channels // m.groups) if m.transposed
                else (m.out_channels, m.in_channels // m.groups))
        _shape(m, "weight", (*lead, *k), where)
        _shape(m, "bias", (m.out_channels,), where)
    elif isinstance(m, nn.Linear):
        _ints(m, ("in_features", "out_features"), where)
        _shape(m, "weight", (m.out_features, m.in_features), where)
        _shape(m, "bias", (m.out_features,), where)
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        _ints(m, ("num_features",), where)
        for name in ("weight", "bias", "running_mean", "running_var"):
            _shape(m, name, (m.num_features,), where)
    elif isinstance(m, nn.GroupNorm):
        _ints(m, ("num_groups", "num_channels"), where)
        if m.num_channels % m.num_groups:
            raise InputError(f"{where}: num_groups={m.num_groups} does not divide "
                             f"num_channels={m.num_channels}")
        for name in ("weight", "bias"):
            _shape(m, name, (m.num_channels,), where)
    elif isinstance(m, nn.LayerNorm):
        s = getattr(m, "normalized_shape", None)
        if not (isinstance(s, tuple) and all(isinstance(x, int) and x > 0 for x in s)):
            raise InputError(f"{where}: normalized_shape {s!r} is not a tuple of positive ints")
        for name in ("weight", "bias"):
            _shape(m, name, s, where)
    elif isinstance(m, nn.PReLU):
        _ints(m, ("num_parameters",), where)
        _shape(m, "weight", (m.num_parameters,), where)
    elif isinstance(m, nn.Embedding):
        _ints(m, ("num_embeddings", "embedding_dim"), where)
        _shape(m, "weight", (m.num_embeddings, m.embedding_dim), where)
