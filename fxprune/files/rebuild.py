"""Rebuilding a GraphModule from the payload of a :func:`fxprune.save` file (used by
:func:`fxprune.load`), without running code from the file.

Values are decoded by :class:`Decoder` (node references only inside the graph, functions and
classes only through :func:`fxprune.files.trust.resolve`), names are checked by
:mod:`fxprune.files.trust`
and the payload against itself by :mod:`fxprune.files.filecheck`; :func:`build` then runs the graph
once on inputs of the saved shapes (``check=True``) and names the node where it fails.
"""

from __future__ import annotations

__all__ = ["Decoder", "build"]

import builtins
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.trace import EXAMPLE_INPUTS
from fxprune.errors import InputError, short_error
from fxprune.files import filecheck, selfcheck, trust
from fxprune.ir import meta
from fxprune.ir.inputs import copied

_MAX_DEPTH = 32


class Decoder:
    """Decodes values of one place in the file: graph arguments (node references, no
    functions, no tensors) or module attributes (functions and classes checked by
    :func:`fxprune.files.trust.resolve`, no node references)."""

    def __init__(self, where: str, extra: tuple[str, ...], nodes: dict[str, fx.Node] | None):
        self.where, self.extra, self.nodes = where, extra, nodes

    def __call__(self, v: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise InputError(f"{self.where}: values nested deeper than {_MAX_DEPTH} levels")
        if isinstance(v, list):
            return [self(x, depth + 1) for x in v]
        if isinstance(v, Tensor):
            if self.nodes is not None:
                raise InputError(f"{self.where}: a tensor inside node arguments (tensors are "
                                 "saved as attributes)")
            return v
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if not isinstance(v, dict) or len(v) != 1:
            raise InputError(f"{self.where}: unknown value {_short(v)}")
        (tag, x), = v.items()
        if tag in ("__tuple__", "__set__", "__slice__", "__dict__"):
            return self._container(tag, x, depth)
        if tag == "__ellipsis__":
            return Ellipsis
        if tag in ("__node__", "__ref__"):
            return self._reference(tag, x)
        if tag in ("__dtype__", "__memfmt__"):
            obj = getattr(torch, self._str(x), None) if self._str(x).isidentifier() else None
            want = torch.dtype if tag == "__dtype__" else torch.memory_format
            if not isinstance(obj, want):
                raise InputError(f"{self.where}: {x!r} is not a torch {want.__name__}")
            return obj
        if tag == "__device__":
            try:
                return torch.device(self._str(x))
            except (RuntimeError, ValueError) as e:
                raise InputError(f"{self.where}: {x!r} is not a device") from e
        raise InputError(f"{self.where}: unknown value {_short(v)}")

    def _container(self, tag: str, x: Any, depth: int) -> Any:
        if tag == "__dict__":
            if not isinstance(x, dict):
                raise InputError(f"{self.where}: __dict__ needs a dict")
            return {self._str(k): self(y, depth + 1) for k, y in x.items()}
        items = [self(y, depth + 1) for y in self._list(x, tag)]
        if tag == "__tuple__":
            return tuple(items)
        if tag == "__slice__":
            if len(items) != 3:
                raise InputError(f"{self.where}: a slice needs 3 values")
            return slice(*items)
        try:
            return set(items)
        except TypeError as e:
            raise InputError(f"{self.where}: unhashable set element ({e})") from e

    def _reference(self, tag: str, x: Any) -> Any:
        if tag == "__ref__":
            if self.nodes is not None:
                raise InputError(f"{self.where}: a function reference inside node arguments")
            return trust.resolve(x, "any", self.where, self.extra)
        if self.nodes is None:
            raise InputError(f"{self.where}: a node reference outside the graph")
        trust.check_name(x, self.where)
        if x not in self.nodes:
            raise InputError(f"{self.where}: refers to node '{x}', which is not defined "
                             "before it")
        return self.nodes[x]

    def _list(self, x: Any, tag: str) -> list[Any]:
        if not isinstance(x, list):
            raise InputError(f"{self.where}: {tag} needs a list")
        return x

    def _str(self, x: Any) -> str:
        if not isinstance(x, str):
            raise InputError(f"{self.where}: expected a str, got {_short(x)}")
        return x


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _build_module(spec: Any, where: str, extra: tuple[str, ...], depth: int = 0
                  ) -> nn.Module:
    if depth > _MAX_DEPTH:
        raise InputError(f"{where}: modules nested deeper than {_MAX_DEPTH} levels")
    filecheck.check_module_spec(spec, where)
    cls = trust.resolve(spec["class"], "class", f"{where}: class", extra)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InputError(f"{where}: {spec['class']} is not an nn.Module class")
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for k, v in spec["attrs"].items():
        trust.check_member(cls, k, f"{where}: attribute")
        m.__dict__[k] = Decoder(f"{where}: attribute '{k}'", extra, None)(v)
    if not isinstance(m.__dict__.get("training", False), bool):
        raise InputError(f"{where}: attribute 'training' must be a bool")
    names: set[str] = set(m.__dict__)
    for kind, items in (("parameter", spec["params"]), ("parameter", spec.get("none", [])),
                        ("buffer", spec["buffers"]), ("buffer", spec.get("none_buffers", [])),
                        ("child", spec["children"])):
        for k in items:
            trust.check_member(cls, k, f"{where}: {kind}")
            if k in names:
                raise InputError(f"{where}: '{k}' is defined twice")
            names.add(k)
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
        m._modules[k] = _build_module(c, f"{where}.{k}", extra, depth + 1)
    filecheck.check_module(m, where)
    selfcheck.check_options(m, where)
    return m


def build(payload: dict[str, Any], extra: tuple[str, ...], check: bool) -> fx.GraphModule:
    root: dict[str, Any] = {}
    for k, s in payload["modules"].items():
        root[k] = _build_module(s, f"module '{k}'", extra)
    for k, a in payload["attrs"].items():
        v = a["value"]
        root[k] = nn.Parameter(v, a.get("requires_grad", True)) if a.get("parameter") else (
            v if isinstance(v, Tensor) else Decoder(f"attrs['{k}']", extra, None)(v))
    _check_root_paths(root)
    graph, nodes = fx.Graph(), {}
    specs = payload["graph"]
    if not specs or not isinstance(specs[-1], dict) or specs[-1].get("op") != "output":
        raise InputError("field 'graph': the last node must be the output node")
    for i, spec in enumerate(specs):
        op, name, where, args, kwargs = filecheck.check_node_spec(i, spec, len(specs))
        if name in nodes:
            raise InputError(f"{where}: the name is used twice")
        dec = Decoder(where, extra, nodes)
        args = dec(args)
        kwargs = {k: dec(v, 1) for k, v in kwargs.items()}
        target = spec["target"]
        if op == "call_function":
            target = trust.resolve(target["__ref__"], "function", f"{where} (target)", extra)
            if target is builtins.getattr:
                if len(args) != 2 or not isinstance(args[0], fx.Node):
                    raise InputError(f"{where}: getattr needs (node, attribute name)")
                trust.tensor_attribute(args[1], f"{where} (attribute)")
        elif op == "call_module" and not isinstance(root.get(target), nn.Module):
            raise InputError(f"{where}: module '{target}' is not in field 'modules'")
        elif op == "get_attr" and (target not in root or isinstance(root[target], nn.Module)):
            raise InputError(f"{where}: attribute '{target}' is not in field 'attrs'")
        if op == "output":
            nodes[name] = graph.output(args[0])
        else:
            nodes[name] = graph.create_node(op, target, tuple(args), kwargs, name=name)
    used = {n.target for n in graph.nodes if n.op in ("call_module", "get_attr")}
    unused = sorted(set(root) - used)
    if unused:
        raise InputError(f"fields 'modules'/'attrs' hold {unused[:5]}, which no node uses")
    graph.lint()
    gm = fx.GraphModule(root, graph, class_name=payload.get("class_name") or "Pruned")
    _restore(gm, payload)
    shapes = filecheck.example_shapes(payload)
    if shapes:  # fresh random inputs of the saved shapes (for verify/count/re-saving)
        gen = torch.Generator().manual_seed(0)
        gm.meta[EXAMPLE_INPUTS] = tuple(torch.randn(s, generator=gen, dtype=d)
                                        for s, d in shapes)
        if check:
            _self_check(gm, gm.meta[EXAMPLE_INPUTS])
    return gm


def _restore(gm: fx.GraphModule, payload: dict[str, Any]) -> None:
    """Flags, ties and meta from the file, each checked against the rebuilt modules."""
    gm.train(bool(payload.get("training", False)))
    if payload.get("module_training") is not None:  # files before it: the root's flag for all
        selfcheck.restore_flags(gm, payload["module_training"])
    selfcheck.retie(gm, payload.get("ties") or {})
    gm.meta[meta.MANIFEST] = payload["manifest"]
    gm.meta[meta.RESIDUAL] = payload.get("residual", "coupled")
    filecheck.check_manifest(payload["manifest"], gm)
    selfcheck.check_manifest_widths(payload["manifest"], payload.get("manifest_widths"), gm)
    selfcheck.check_state_dict(payload["state_dict"], gm)


def _check_root_paths(root: dict[str, Any]) -> None:
    """Module and attribute paths may only add members, never replace a method or internal
    attribute of the GraphModule or of a saved module (see fxprune.files.trust.check_member)."""
    for key in sorted(root, key=lambda k: k.count(".")):
        parts = key.split(".")
        owner: type = fx.GraphModule
        for i, part in enumerate(parts):
            trust.check_member(owner, part, f"module/attribute path '{key}'")
            prefix = ".".join(parts[:i + 1])
            owner = type(root[prefix]) if isinstance(root.get(prefix), nn.Module) else (
                nn.Module)
            if i < len(parts) - 1 and prefix in root and not isinstance(root[prefix], nn.Module):
                raise InputError(f"module/attribute path '{key}' goes through '{prefix}', "
                                 "which is not a module")


class _Checker(fx.Interpreter):
    """Runs the loaded graph once, naming the node where it fails."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.extra_traceback = False

    def run_node(self, n: fx.Node) -> Any:
        try:
            return super().run_node(n)
        except Exception as e:  # noqa: BLE001 - reported as a corrupt file
            raise InputError(
                f"the saved graph fails at node '{n.name}' ({n.op} {_short(n.target)}) on "
                f"inputs of the saved shapes: {short_error(e)[:300]}") from e


def _self_check(gm: fx.GraphModule, inputs: tuple[Tensor, ...]) -> None:
    flags = {m: m.training for m in gm.modules()}
    try:
        gm.eval()
        with torch.no_grad():
            _Checker(gm).run(*copied(inputs))
    finally:
        for m, f in flags.items():
            m.training = f
