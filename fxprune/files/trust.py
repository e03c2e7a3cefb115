"""What a file read by :func:`fxprune.load` may name: identifiers, functions, methods, classes.

A saved file is data, and :func:`fxprune.load` turns some of its strings into code: node names
and targets become the Python source torch.fx generates for ``forward``, and dotted paths become
the functions and module classes the graph calls. This module is the one place that decides
which strings are accepted (everything else raises :class:`~fxprune.errors.InputError`):

* **Names** (node names, placeholder names, keyword names, module and attribute paths): ASCII
  Python identifiers that are not keywords and not dunders (``__x__``); a member name must not
  shadow a method or property of the class it is set on (``forward``, ``_parameters``, ...).
  A part of a module or attribute path may also be decimal digits (``nn.Sequential``
  children) or ASCII letters, digits, ``_`` and ``-`` with a ``-`` (torchvision's RegNet names
  its blocks ``block1-0``): torch.fx writes such a part as a string literal
  (``getattr(self.trunk, "block1-0")``), where these characters cannot become code.
* **Functions** (``call_function`` targets, callables stored in module attributes) are reached
  from a trusted top-level package by an attribute walk in which every intermediate step is
  that package's own submodule (``torch.os`` is refused: ``os`` is a re-exported module), never
  a module object, and must be one of:

  - a tensor op: what :func:`torch.overrides.get_overridable_functions` lists (``torch.*``,
    ``torch.nn.functional.*``, ``torch.linalg/fft/special.*``, ``Tensor`` methods), public
    ``torch.nn.functional`` functions, the tensor factories in :data:`TORCH_FACTORIES` and
    ``torch._assert`` (emitted by torch.fx);
  - the pure functions of ``math``, the operators in :data:`OPERATORS` and ``builtins.getattr``
    (with a public attribute name of ``torch.Tensor``, checked by the graph validation);
  - a function registered as a torch.fx leaf function (``torch.fx.wrap``, timm's no-trace
    functions) whose own ``__module__`` is in torch, torchvision, timm or fxprune.

  ``torch.load``, ``torch.save``, ``torch.hub.*``, ``torch.compile``, ``builtins.eval``,
  ``operator.methodcaller`` and the like are therefore refused.
* **Methods** (``call_method`` targets): public callable attributes of ``torch.Tensor``, minus
  :data:`REFUSED_METHODS` (hooks, callbacks, storage access).
* **Module classes**: ``nn.Module`` subclasses defined in ``torch.nn`` / ``torch.ao.nn``
  (not ``torch.nn.parallel``), torchvision, timm or fxprune.

``trusted_modules`` (an argument of :func:`fxprune.load`) adds top-level packages whose
functions and classes are accepted as a whole: the user vouches for that code.
"""

from __future__ import annotations

__all__ = ["OPERATORS", "TORCH_FACTORIES", "REFUSED_METHODS", "check_name", "check_path",
           "check_member", "resolve", "tensor_method", "tensor_attribute"]

import builtins
import functools
import importlib
import inspect
import keyword
import operator
import sys
import types
from typing import Any

import torch
import torch.nn as nn

from fxprune.errors import InputError
from fxprune.files.legacy import current_name

MODEL_PACKAGES = ("torch", "torchvision", "timm", "fxprune")
OPERATORS = frozenset((
    "abs", "add", "and_", "concat", "contains", "eq", "floordiv", "ge", "getitem", "gt",
    "iadd", "iand", "ifloordiv", "ilshift", "imatmul", "imod", "imul", "index", "inv", "invert",
    "ior", "ipow", "irshift", "is_", "is_not", "isub", "itruediv", "ixor", "le", "lshift", "lt",
    "matmul", "mod", "mul", "ne", "neg", "not_", "or_", "pos", "pow", "rshift", "setitem", "sub",
    "truediv", "truth", "xor"))
TORCH_FACTORIES = frozenset((
    "arange", "as_tensor", "empty", "eye", "full", "linspace", "logspace", "normal", "ones",
    "rand", "randint", "randn", "randperm", "scalar_tensor", "tensor", "tril_indices",
    "triu_indices", "zeros", "broadcast_shapes", "result_type", "promote_types", "can_cast",
    "is_tensor", "get_default_dtype", "_assert"))
REFUSED_METHODS = frozenset((
    "apply_", "map_", "map2_", "register_hook", "register_post_accumulate_grad_hook",
    "retain_grad", "backward", "storage", "untyped_storage", "share_memory_", "tolist",
    "numpy", "data_ptr", "new"))


# --- names ------------------------------------------------------------------------------------

def check_name(name: Any, where: str) -> str:
    """``name`` if it is a plain ASCII identifier (no keyword, no dunder), else InputError."""
    if not isinstance(name, str):
        raise InputError(f"{where}: expected a name (str), got {type(name).__name__} {name!r}")
    if not (name.isascii() and name.isidentifier()) or keyword.iskeyword(name) or (
            name.startswith("__") and name.endswith("__")):
        raise InputError(f"{where}: {name!r} is not a plain Python identifier (names from a "
                         "file must be ASCII identifiers, not keywords or __dunders__)")
    return name


def _member_name(part: str) -> bool:
    """Decimal digits, or ASCII letters, digits, ``_`` and ``-`` with a ``-`` (not a dunder):
    the module names that are not identifiers yet safe in torch.fx's code (see above)."""
    return part.isascii() and (part.isdigit() or (
        "-" in part and not part.startswith("__")
        and all(c.isalnum() or c in "_-" for c in part)))


def check_path(path: Any, where: str, *, members: bool = True) -> str:
    """``path`` if it is a dotted path of :func:`check_name` names or, with ``members`` (a
    module or attribute path), also decimal indices (the children of ``nn.Sequential``:
    ``layer1.0.conv1``) and hyphenated names (``trunk.block1-0``)."""
    if not isinstance(path, str) or not path:
        raise InputError(f"{where}: expected a dotted name (str), got {path!r}")
    for part in path.split("."):
        if not (members and _member_name(part)):
            check_name(part, f"{where} ({path!r})")
    return path


@functools.cache
def _instance_members(cls: type) -> frozenset[str]:
    base = fx_module_names() if issubclass(cls, torch.fx.GraphModule) else frozenset()
    return base | frozenset(nn.Module().__dict__) - {"training"}


@functools.lru_cache(maxsize=1)
def fx_module_names() -> frozenset[str]:
    """Instance attributes torch.fx.GraphModule sets itself (graph, meta, ...)."""
    gm = torch.fx.GraphModule(nn.Module(), torch.fx.Graph())
    return frozenset(gm.__dict__)


def check_member(cls: type, name: Any, where: str) -> str:
    """A name that may be set on an instance of ``cls`` without replacing its behaviour: no
    method, property or other descriptor of the class, no internal attribute of nn.Module."""
    if not (isinstance(name, str) and _member_name(name)):
        check_name(name, where)
    problem = _member_problem(cls, name)
    if problem:
        raise InputError(f"{where}: {problem}")
    return name


@functools.lru_cache(maxsize=4096)
def _member_problem(cls: type, name: str) -> str:
    if name in _instance_members(cls):
        return f"{name!r} would replace an internal attribute of {cls.__name__}"
    try:
        attr = inspect.getattr_static(cls, name)
    except AttributeError:
        return ""
    if callable(attr) or hasattr(attr, "__get__") or isinstance(attr, (property, type)):
        return (f"{name!r} would replace {cls.__name__}.{name}, which is a method or property "
                "of the class")
    return ""


# --- functions and classes --------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _tensor_ops() -> frozenset[int]:
    ops = [f for fs in torch.overrides.get_overridable_functions().values() for f in fs]
    ops += [getattr(torch, n) for n in TORCH_FACTORIES if hasattr(torch, n)]
    return frozenset(id(f) for f in ops if f is torch._assert or (
        not getattr(f, "__name__", "_").startswith("_") and f.__name__ not in REFUSED_METHODS))


@functools.lru_cache(maxsize=1)
def _leaf_functions() -> frozenset[int]:
    """Functions registered as torch.fx leaves (torch.fx.wrap, timm's no-trace functions)."""
    fns: list[Any] = []
    try:
        from torch.fx import _symbolic_trace as st

        for (_, name), glb in dict(getattr(st, "_wrapped_fns_to_patch", {})).items():
            if isinstance(glb, dict) and name in glb:
                fns.append(glb[name])
    except Exception:  # noqa: BLE001 - a torch without the registry: no extra functions
        pass
    try:
        from timm.layers import get_notrace_functions

        fns += list(get_notrace_functions())
    except Exception:  # noqa: BLE001 - timm missing or too old
        pass
    return frozenset(id(f) for f in fns if isinstance(f, types.FunctionType)
                     and _top(f.__module__) in MODEL_PACKAGES)


def _emitted_functions() -> frozenset[int]:
    """Functions that fxprune's own rewrites put into a graph."""
    from fxprune.core.rewrite import scatter_channels

    return frozenset({id(scatter_channels)})


def _top(module: Any) -> str:
    return str(module or "").split(".")[0]


def _is_function(obj: Any) -> bool:
    return isinstance(obj, (types.FunctionType, types.BuiltinFunctionType,
                            types.MethodDescriptorType, types.WrapperDescriptorType,
                            types.BuiltinMethodType))


def _allowed_function(obj: Any, path: str) -> bool:
    if obj is builtins.getattr:
        return True
    own = getattr(obj, "__module__", None)
    if own == "_operator" or path.startswith(("operator.", "_operator.")):
        return getattr(operator, path.rsplit(".", 1)[1], None) is obj and \
            path.rsplit(".", 1)[1] in OPERATORS
    if path.startswith("math."):
        return own == "math" and isinstance(obj, types.BuiltinFunctionType)
    if not callable(obj) or isinstance(obj, type):
        return False
    if id(obj) in _tensor_ops():
        return True
    name = path.rsplit(".", 1)[1]
    if path == f"torch.nn.functional.{name}" and not name.startswith("_") and \
            _is_function(obj) and own in ("torch.nn.functional", "torch._C._nn", "torch"):
        return True
    return id(obj) in _leaf_functions() or id(obj) in _emitted_functions()


def _allowed_class(cls: Any) -> bool:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return False
    own = cls.__module__ or ""
    if own.startswith(("torch.nn.", "torch.ao.nn.")):
        return not own.startswith("torch.nn.parallel")
    return _top(own) in ("torchvision", "timm", "fxprune")


def _walk(path: str, extra: tuple[str, ...], where: str) -> Any:
    parts = path.split(".")
    if parts[0] not in (*MODEL_PACKAGES, "operator", "_operator", "math", "builtins", *extra):
        raise InputError(
            f"{where}: the file refers to '{path}', outside the trusted packages "
            f"({', '.join(MODEL_PACKAGES)}, operator, math). Hint: if you trust the code of "
            f"package '{parts[0]}', pass trusted_modules=['{parts[0]}'] to fxprune.load().")
    if parts[0] == "builtins":
        if path != "builtins.getattr":
            raise InputError(f"{where}: the file refers to '{path}'; of the builtins only "
                             "getattr is accepted")
        return builtins.getattr
    try:
        obj: Any = importlib.import_module(parts[0])
    except ImportError as e:
        raise InputError(f"{where}: cannot import '{parts[0]}' for '{path}': {e}") from e
    for i, part in enumerate(parts[1:], start=1):
        prefix = ".".join(parts[:i + 1])
        parent = obj
        if isinstance(parent, types.ModuleType):
            if parent.__name__ != ".".join(parts[:i]):
                raise InputError(f"{where}: '{path}' reaches '{'.'.join(parts[:i])}' through a "
                                 f"re-exported module ({parent.__name__}); refused")
            sub = sys.modules.get(prefix)  # a submodule wins over a same-named attribute
            obj = sub if isinstance(sub, types.ModuleType) and sub.__name__ == prefix else \
                getattr(parent, part, None)  # (fxprune.rewrite: the module, not the function)
            if obj is None and not part.startswith("_"):
                try:  # a submodule not imported yet (fxprune.models, ...)
                    obj = importlib.import_module(prefix)
                except ImportError:
                    obj = None
            if isinstance(obj, types.ModuleType) and obj.__name__ != prefix:
                raise InputError(f"{where}: '{path}' goes through '{prefix}', a re-export of "
                                 f"the module {obj.__name__}; refused")
        elif parent is torch.Tensor and i == len(parts) - 1:
            obj = inspect.getattr_static(parent, part, None)
            obj = getattr(parent, part) if obj is not None else None
        else:
            raise InputError(f"{where}: '{path}' goes through '{'.'.join(parts[:i])}', which "
                             "is not a module; refused")
        if obj is None:
            raise InputError(f"{where}: '{path}' does not exist (no '{part}' in "
                             f"'{'.'.join(parts[:i])}')")
    if isinstance(obj, types.ModuleType):
        raise InputError(f"{where}: '{path}' is a module, not a function or class")
    return obj


def resolve(path: Any, kind: str, where: str, extra: tuple[str, ...] = ()) -> Any:
    """Resolve a dotted ``path`` from a file to a ``kind`` ("function", "class" or "any":
    either) allowed by this module's policy; InputError otherwise."""
    check_path(path, where, members=False)
    path = current_name(path)
    obj = _walk(path, extra, where)
    if _top(path) in extra and _top(getattr(obj, "__module__", "")) in extra:
        return obj  # the user vouches for that package
    if kind in ("class", "any") and _allowed_class(obj):
        return obj
    if kind in ("function", "any") and _allowed_function(obj, path):
        return obj
    what = {"class": "an nn.Module class", "function": "a tensor function",
            "any": "a tensor function or nn.Module class"}[kind]
    raise InputError(
        f"{where}: '{path}' is not {what} that fxprune.load accepts (see fxprune.trust: only "
        "tensor ops, operators, math, torch.fx leaf functions and nn.Module classes of torch, "
        "torchvision, timm and fxprune); refused")


def tensor_method(name: Any, where: str) -> str:
    """A ``call_method`` target: a public method of torch.Tensor (minus REFUSED_METHODS)."""
    check_name(name, where)
    attr = inspect.getattr_static(torch.Tensor, name, None)
    if name.startswith("_") or name in REFUSED_METHODS or attr is None or \
            isinstance(attr, property) or not callable(getattr(torch.Tensor, name)):
        raise InputError(f"{where}: method '{name}' is not a public torch.Tensor method that "
                         "fxprune.load accepts; refused")
    return name


def tensor_attribute(name: Any, where: str) -> str:
    """The attribute of a ``getattr`` call: a public attribute of torch.Tensor."""
    check_name(name, where)
    if name.startswith("_") or name in REFUSED_METHODS or not hasattr(torch.Tensor, name):
        raise InputError(f"{where}: getattr of '{name}' is not a public torch.Tensor "
                         "attribute; refused")
    return name
