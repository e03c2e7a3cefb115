"""Concrete-value tracing: torch.fx proxies that carry the example run's values.

Reads:  the user's model and its example inputs (the model is never modified)
Writes: a torch.fx Graph (see :func:`concrete_graph`), used by :func:`fxprune.trace` when
        symbolic tracing fails or has to keep modules opaque

Every proxy holds the value the op computed on the example inputs (the real op runs while it
is recorded), so what Python itself needs to know resolves to the example's value:
``list(x.chunk(2, 1))``, unpacking tuples of tensors, ``len()``, iteration, ``int()`` of a
size, ``if`` on a size. Containers an op returns (``chunk``, ``split``, ``topk``, a module
returning a tuple or dict) are real Python containers of proxies. Each value also carries
where it comes from (``CONST`` < ``SIZE`` < ``DATA``, for tensors separately for the shape and
the contents):

* a Python decision on a ``SIZE`` value (an input's height, a count derived from it) takes the
  example's branch and records a guard in the graph, ``torch._assert(value == example)``, so a
  run on an input that would branch otherwise fails loudly;
* a decision on ``DATA`` (``bool(tensor)``, ``.item()`` of an activation, the size of a
  ``nonzero``/``nms``/boolean-mask result) is never specialised: :class:`ValueDependent` is
  raised, and :func:`fxprune.trace` keeps the innermost module that made it as an opaque leaf
  (its channels are kept) with that reason.

[INF] Containers split along dim 0 of a tensor whose shape depends on data (``unbind(0)`` of
``nonzero``'s result) are data-dependent; along other dims their length is treated as a size.

Objects that carry proxies but are not containers (a dataclass output such as Hugging Face's
``ModelOutput``, torchvision's ``ImageList``) are rebuilt in the graph by :func:`build_object`,
so a traced model returns the same output class; their tensors are kept (frozen) by the rule
in :mod:`fxprune.rules.objects`.
"""

from __future__ import annotations

__all__ = ["ConcreteTracer", "ValueDependent", "build_object", "CONST", "SIZE", "DATA"]

import builtins
import contextlib
import dataclasses
import inspect
import operator
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor
from torch.fx._symbolic_trace import _assert_is_none, _orig_module_call

from fxprune.core.concrete_values import (
    CONST,
    CONSTANT_ATTRS,
    DATA,
    META_READS,
    PLAIN,
    SIZE,
    SPLITS,
    any_proxy,
    arg,
    attrs_restore,
    attrs_snapshot,
    deps,
    holds_proxy,
    op_name,
    remake_dict,
    tensorish,
    unwrap,
    with_node,
)
from fxprune.core.tracer import FxPruneTracer
from fxprune.rules.objects import build_object, length


class ValueDependent(Exception):
    """Python control flow on tensor contents, which a trace must not specialise."""


class ConcreteProxy(fx.Proxy):
    """A proxy with the example run's value (``_cv``) and where it comes from."""

    def __bool__(self) -> bool:
        return bool(self.tracer.specialise(self, "a condition"))  # type: ignore[attr-defined]

    def __index__(self) -> int:
        return operator.index(self.tracer.specialise(self, "an index"))  # type: ignore

    def __int__(self) -> int:
        return int(self.tracer.specialise(self, "int()"))  # type: ignore[attr-defined]

    def __float__(self) -> float:
        return float(self.tracer.specialise(self, "float()"))  # type: ignore[attr-defined]

    def __len__(self) -> int:
        v = self._cv
        if isinstance(v, Tensor):
            return self.tracer.length(self, 0)  # type: ignore[attr-defined]
        return len(v)  # the dims of a torch.Size: static

    def __iter__(self) -> Iterator[Any]:
        return iter([self[i] for i in range(len(self))])

    def keys(self) -> Any:
        return list(self._cv.keys())

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(proxy, torch.Tensor) holds for a tensor's proxy
        v = self.__dict__.get("_cv")
        return type(v) if isinstance(v, Tensor) else type(self)

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__") or k in ("_cv", "_dep", "_cdep"):
            raise AttributeError(k)
        if k in CONSTANT_ATTRS and isinstance(self._cv, Tensor):
            return getattr(self._cv, k)  # x.dtype, weight.device: constants of the trace
        return ConcreteAttribute(self, k)


class ConcreteAttribute(fx.proxy.Attribute, ConcreteProxy):
    """``x.attr`` (a method about to be called, or a read: ``x.shape``)."""

    def __init__(self, root: ConcreteProxy, attr: str):
        super().__init__(root, attr)
        self._cv = getattr(root._cv, attr)
        if attr in META_READS:
            self._dep = self._cdep = CONST
        elif attr == "shape" or isinstance(self._cv, Tensor):
            self._dep, self._cdep = root._dep, (root._dep if attr == "shape" else root._cdep)
        else:
            self._dep = self._cdep = root._cdep


class ConcreteTracer(FxPruneTracer):
    """:class:`~fxprune.trace.FxPruneTracer` whose proxies carry the example's values."""

    def __init__(self, inputs: tuple, extra_leaves: set[str] | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None):
        super().__init__(extra_leaves, shapes=shapes)
        self.inputs = tuple(inputs)
        self._evaluating = False
        self._ph: dict[str, Any] = {}
        self._guarded: set[tuple[str, str]] = set()

    # --- values --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _concrete(self) -> Iterator[None]:
        old, self._evaluating = self._evaluating, True
        try:
            with torch.no_grad():
                yield
        finally:
            self._evaluating = old

    def proxy(self, node: fx.Node) -> fx.Proxy:
        p = ConcreteProxy(node, self)
        p.__dict__.update(_cv=None, _dep=CONST, _cdep=CONST)
        return p

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m, forward, args, kwargs):  # type: ignore[no-untyped-def]
        if self._evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def _evaluate(self, kind: str, target: Any, args: Any, kwargs: Any) -> tuple[Any, int, int]:
        if kind == "placeholder":
            v = self._ph[target]
            return v, SIZE, DATA
        with self._concrete():
            if kind == "get_attr":
                v = self.root
                for part in str(target).split("."):
                    v = getattr(v, part)
                return v, CONST, DATA if isinstance(v, Tensor) else CONST
            a, kw = unwrap(args), unwrap(kwargs)
            if kind == "call_function":
                v = target(*a, **kw)
            elif kind == "call_method":
                v = getattr(a[0], target)(*a[1:], **kw)
            else:
                v = _orig_module_call(self.root.get_submodule(target), *a, **kw)
        return (v, *deps(kind, target, args, kwargs, v))

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None,  # type: ignore
                     proxy_factory_fn=None):
        if kind == "output":
            return super().create_proxy(kind, target, args, kwargs, name, type_expr)
        value, dep, cdep = self._evaluate(kind, target, args, kwargs)
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if not isinstance(p, ConcreteProxy):
            return p
        p.__dict__.update(_cv=value, _dep=dep, _cdep=cdep)
        if target is builtins.getattr or kind == "get_attr" or type(value) not in (
                list, tuple, dict, OrderedDict):
            return p  # a namedtuple (topk's) stays one proxy: unpacking it still works
        return self._unpack(p, value, self._length_dep(p, kind, target, args, kwargs))

    def _length_dep(self, p: ConcreteProxy, kind: str, target: Any, args: Any, kwargs: Any
                    ) -> int:
        """How the number of items an op returned was decided."""
        if kind == "placeholder":
            return SIZE
        name = op_name(target)
        if name == "tolist":
            return p._dep
        if name not in SPLITS or not args or not isinstance(args[0], ConcreteProxy):
            return CONST
        if name == "split" and isinstance(arg(args, kwargs, 1, "split_size_or_sections",
                                               "split_size"), (list, tuple)):
            return CONST
        dim = arg(args, kwargs, 1 if name == "unbind" else 2, "dim") or 0
        src = args[0]
        if name != "unbind" and dim != 0:
            return CONST  # n chunks of a channel or spatial axis: n, bar degenerate sizes
        return src._dep if dim == 0 else min(src._dep, SIZE)

    def _unpack(self, p: ConcreteProxy, value: Any, length_dep: int) -> Any:
        if length_dep >= DATA:
            raise ValueDependent(f"the number of items of {p.node.name} depends on tensor "
                                 "values")
        if length_dep == SIZE:
            n = self.create_proxy("call_function", length, (p,), {})
            self._guard(n, len(value), "number of items")
        if isinstance(value, dict):
            items = {k: self.create_proxy("call_function", operator.getitem, (p, k), {})
                     for k in value}
            return with_node(items if type(value) is dict else remake_dict(value, items), p)
        items = [self.create_proxy("call_function", operator.getitem, (p, i), {})
                 for i in range(len(value))]
        return with_node(items if isinstance(value, list) else tuple(items), p)

    # --- decisions Python takes on values ------------------------------------------------
    def specialise(self, p: ConcreteProxy, what: str) -> Any:
        """The example's value of ``p`` for a Python decision; guarded if it is a size."""
        v = p._cv
        dep = p._cdep
        if dep >= DATA:
            where = self.current_path[-1] if self.current_path else "forward"
            raise ValueDependent(f"{what} on tensor values ({p.node.name}) in '{where}'")
        if dep == SIZE:
            self._guard(p, v.item() if isinstance(v, Tensor) else v, what)
        return v

    def length(self, p: ConcreteProxy, dim: int) -> int:
        n = int(p._cv.shape[dim])
        dep = p._dep if dim == 0 else min(p._dep, SIZE)
        if dep >= DATA:
            raise ValueDependent(f"iteration over {p.node.name}, whose size depends on "
                                 "tensor values")
        if dep == SIZE:
            size = self.create_proxy("call_method", "size", (p, dim), {})
            self._guard(size, n, "size")
        return n

    def _guard(self, p: ConcreteProxy, value: Any, what: str) -> None:
        key = (p.node.name, repr(value))
        if key in self._guarded:
            return
        self._guarded.add(key)
        where = self.current_path[-1] if self.current_path else "forward"
        cond = self.create_proxy("call_function", operator.eq, (p, value), {})
        msg = (f"fxprune traced '{where or type(self.root).__name__}' for the example's {what} "
               f"{value!r} ({p.node.name}); this input takes another path: prune with an "
               "example of this size")
        self.create_proxy("call_function", torch._assert, (cond, msg), {})

    # --- the root's arguments and objects ------------------------------------------------
    def create_args_for_root(self, root_fn, is_module, concrete_args=None):  # type: ignore
        """A placeholder per positional parameter of ``forward``: the example's tensors (and
        containers of them) flow as proxies; other values (None, flags, numbers) and the
        defaults of parameters left out are baked in, with a guard that they stay so."""
        sig = inspect.signature(inspect.unwrap(root_fn))
        params = [p for p in list(sig.parameters.values())[1 if is_module else 0:]
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        bound: dict[str, Any] = {}
        for i, param in enumerate(params):
            if i >= len(self.inputs) and (param.default is param.empty or not isinstance(
                    param.default, (type(None), bool, int, float, str))):
                break
            value = self.inputs[i] if i < len(self.inputs) else param.default
            default = () if param.default is param.empty else (param.default,)
            self._ph[param.name] = value
            ph = self.create_proxy("placeholder", param.name, default, {})
            if tensorish(value) or isinstance(value, (dict, list, tuple)):
                bound[param.name] = ph
                continue
            bound[param.name] = value
            msg = (f"{type(self.root).__name__} was traced with {param.name}={value!r}; "
                   "prune with the value you run it with")
            if value is None:
                self.create_proxy("call_function", _assert_is_none, (ph, msg), {})
            else:
                cond = self.create_proxy("call_function", operator.eq, (ph, value), {})
                self.create_proxy("call_function", torch._assert, (cond, msg), {})

        def fn(*args: Any) -> Any:
            return root_fn(*args, **bound)

        return fn, ([self.root] if is_module else [])

    def create_arg(self, a: Any) -> Any:
        if type(a) in (ConcreteProxy, ConcreteAttribute):
            return a.node  # before torch.fx's Tensor check: a proxy passes for its tensor
        if type(a) in PLAIN:
            a = PLAIN[type(a)](a)
        if not isinstance(a, (fx.Proxy, Tensor, list, tuple, str, int, float, bool)) and (
                dataclasses.is_dataclass(a) or holds_proxy(a)) and any_proxy(vars(a)):
            fields = ({f.name: getattr(a, f.name) for f in dataclasses.fields(a)}
                      if dataclasses.is_dataclass(a) else dict(vars(a)))
            cls = type(a)
            path = f"{cls.__module__}:{cls.__qualname__}"
            return self.create_node("call_function", build_object,
                                    (path, self.create_arg(fields)), {})
        return super().create_arg(a)



def concrete_graph(model: nn.Module, inputs: tuple, shapes: dict[str, tuple[int, ...]],
                   leaves: dict[str, str] | None = None, record_stack_traces: bool = False,
                   max_retries: int = 32) -> tuple[fx.Graph, dict[str, str]]:
    """Trace ``model`` on ``inputs`` with :class:`ConcreteTracer`, keeping each module whose
    forward fails (or decides on tensor values) as an opaque leaf; returns the graph and
    ``{leaf path: reason}``. Raises the last error when the top-level forward fails."""
    from fxprune.errors import short_error

    opaque = dict(leaves or {})
    for _ in range(max_retries):
        tracer = ConcreteTracer(inputs, set(opaque), shapes=shapes)
        tracer.record_stack_traces = record_stack_traces
        snap = attrs_snapshot(model)
        try:
            graph = tracer.trace(model)
            for n in reversed(graph.nodes):  # parameters read for their dtype or device only
                if n.op == "get_attr" and not n.users:
                    graph.erase_node(n)
            return graph, opaque
        except Exception as e:  # noqa: BLE001 - retried with the module opaque, or re-raised
            failing = tracer.failed_path or ""
            if not failing or failing in opaque:
                raise
            kind = "decides on tensor values" if isinstance(e, ValueDependent) else \
                "cannot be traced"
            opaque[failing] = f"{kind}: {short_error(e)}"
        finally:
            attrs_restore(snap)
    raise RuntimeError(f"gave up after {max_retries} opaque modules")
