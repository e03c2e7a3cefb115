"""Trace a model to a torch.fx GraphModule that fxprune can analyze.

Reads:  the user's model (never modified)
Writes: a GraphModule sharing the model's submodules; ``gm.meta["fxprune.example_inputs"]``

Leaf modules (kept opaque as ``call_module`` nodes): torch.nn's own modules and every module
type that has a channel rule (so timm's ``BatchNormAct2d`` is one node with one rule). timm's
registered no-trace modules without a rule are first traced *through*, so that their channels
can be pruned; any submodule whose forward cannot be traced (timm's no-trace modules that need
it, data-dependent control flow) is retried as an opaque leaf: it then needs a rule, or its
channels are frozen. timm's no-trace functions stay ``call_function`` nodes. A failure in the
top-level forward is reported with the user's source line. Values that tracing leaves in the
model's own caches (timm caches attention biases per device) are removed afterwards, so the
user's model is not changed.
"""

from __future__ import annotations

__all__ = ["trace", "default_example_inputs", "FxPruneTracer", "EXAMPLE_INPUTS"]

import traceback
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxprune.core.concrete import attrs_restore, attrs_snapshot, concrete_graph
from fxprune.core.concrete_meta import concrete_graph_cheapest
from fxprune.core.decompose import needs_shape
from fxprune.core.tracer import FxPruneTracer
from fxprune.errors import InputError, TraceFailure, is_library_file, short_error
from fxprune.ir.hooks import check_root
from fxprune.ir.inputs import check_not_scripted, copied, model_device_dtype, positional_inputs
from fxprune.ir.perf import gc_paused
from fxprune.ir.state import untouched
from fxprune.ir.unused import UNUSED, carry_unused

EXAMPLE_INPUTS = "fxprune.example_inputs"
OPAQUE = "fxprune.opaque"  # gm.meta: {module kept opaque by the trace: why}
TRACER = "fxprune.tracer"  # gm.meta: "symbolic" or "concrete"
_MAX_LEAF_RETRIES = 32


def default_example_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """A random batch of one: timm's ``pretrained_cfg["input_size"]``, else (1, 3, 224, 224)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224))) if isinstance(cfg, dict) else (3, 224, 224)
    device, dtype = model_device_dtype(model)
    gen = torch.Generator().manual_seed(0)
    return (torch.randn((1, *size), generator=gen).to(device=device, dtype=dtype),)


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch and fxprune's own code: the user's line
    (see :func:`fxprune.errors.is_library_file`)."""
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        if is_library_file(fr.filename):
            continue
        return f"{fr.filename}:{fr.lineno} ({fr.name}): {fr.line}"
    return ""


try:  # generates and compiles forward() on first use: the pipeline only interprets the graph
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
except ImportError:  # pragma: no cover - older torch
    _GraphModule = fx.GraphModule

STACK_TRACER = "fxprune.stack_tracer"  # gm.meta: () -> {node name: stack trace}, on demand


def _stack_traces(model: nn.Module, leaves: dict[str, str], inputs: tuple | None = None
                  ) -> dict[str, str]:
    """Trace again, recording stack traces: node names are the same as in the first trace."""
    before = set(model.__dict__)
    with untouched(model):  # tracing runs Python code on real buffers (self.n.add_(1))
        if inputs is not None:
            graph, _ = concrete_graph(model, inputs, _input_shapes(model, inputs), leaves,
                                      record_stack_traces=True, max_retries=1)
        else:
            graph = FxPruneTracer(set(leaves), record_stack_traces=True).trace(model)
        _scrub_proxies(model)
    _drop_added_attrs(model, before)
    return {n.name: n.meta["stack_trace"] for n in graph.nodes if n.meta.get("stack_trace")}


def _scrub_proxies(model: nn.Module) -> None:
    """Remove fx Proxies that tracing left in module attributes or caches (e.g. timm's
    ``attention_bias_cache``): tracing must not change the user's model."""
    for m in model.modules():
        for k, v in list(m.__dict__.items()):
            if isinstance(v, fx.Proxy):
                del m.__dict__[k]
            elif isinstance(v, dict) and not k.startswith("_"):
                for kk in [kk for kk, vv in v.items() if isinstance(vv, fx.Proxy)]:
                    del v[kk]


@gc_paused
def trace(
    model: nn.Module,
    example_inputs: tuple[Any, ...] | Any | None = None,
) -> fx.GraphModule:
    """Symbolically trace ``model`` to a GraphModule (which shares the model's submodules).

    Args:
        model: any ``nn.Module``; it is not modified.
        example_inputs: a tensor, a tuple of ``forward``'s positional arguments or a dict of
            its keyword arguments (``model(**inputs)``), used by later passes; defaults to
            :func:`default_example_inputs`. Stored in ``gm.meta`` as the positional tuple.

    Returns:
        The traced GraphModule.

    Raises:
        InputError: ``model`` is not an ``nn.Module``.
        TraceFailure: the top-level forward uses a construct torch.fx cannot trace.

    Example::

        >>> import fxprune, timm
        >>> gm = fxprune.trace(timm.create_model("resnet18"))
    """
    if isinstance(model, fx.GraphModule) and not isinstance(model, nn.Module):
        raise InputError("model must be a torch.nn.Module")
    if not isinstance(model, nn.Module):
        raise InputError(
            f"fxprune expects a torch.nn.Module, got {type(model).__name__}. "
            "Hint: pass the model object itself (e.g. timm.create_model('resnet18')), "
            "not its state_dict or class."
        )
    check_not_scripted(model)
    check_root(model)  # hooks on the model itself are not traced
    if example_inputs is None:
        example_inputs = default_example_inputs(model)
    example_inputs = copied(positional_inputs(model, example_inputs))  # the user's stay theirs
    before = set(model.__dict__)  # the tracer stores tensor constants on the model
    with untouched(model):  # tracing runs Python code on real buffers (self.n.add_(1))
        graph, leaves, concrete = _best_graph(model, example_inputs,
                                              _input_shapes(model, example_inputs))
    name = type(model).__name__
    gm = _GraphModule(model, graph, class_name=name)
    _drop_added_attrs(model, before)  # gm holds its own references
    gm.meta[EXAMPLE_INPUTS] = example_inputs
    gm.meta[UNUSED] = carry_unused(model, gm)  # forward never reads them: kept as they are
    # GraphModule makes fresh containers (training=True): give them the model's flags, which
    # the rewrite copies to the result module by module
    flags = {name: m.training for name, m in model.named_modules()}
    for name, m in gm.named_modules():
        if name in flags and m.training != flags[name]:
            m.training = flags[name]
    gm.meta["fxprune.leaf_fallbacks"] = tuple(sorted(leaves))
    gm.meta[OPAQUE] = dict(leaves)
    gm.meta[TRACER] = "concrete" if concrete else "symbolic"
    gm.meta[STACK_TRACER] = lambda: _stack_traces(model, leaves, example_inputs if concrete
                                                  else None)
    return gm


def _best_graph(model: nn.Module, inputs: tuple, shapes: dict[str, tuple[int, ...]]
                ) -> tuple[fx.Graph, dict[str, str], bool]:
    """torch.fx's symbolic trace where it traces everything; else the concrete-value trace
    (:mod:`fxprune.core.concrete`) where it keeps fewer modules opaque (or the symbolic one fails).
    Returns the graph, ``{opaque module: reason}`` and whether the trace is concrete."""
    snap = attrs_snapshot(model)  # a forward may cache values on its modules
    try:
        graph, leaves = _trace_graph(model, shapes)
    except TraceFailure as e:
        attrs_restore(snap)
        try:
            cgraph, copaque = concrete_graph_cheapest(model, inputs, shapes)
        except Exception:  # noqa: BLE001 - the symbolic trace's message names the user's line
            raise e from None
        return cgraph, copaque, True
    attrs_restore(snap)
    if not leaves:
        return graph, leaves, False
    try:
        cgraph, copaque = concrete_graph_cheapest(model, inputs, shapes)
    except Exception:  # noqa: BLE001 - the symbolic graph (with its opaque leaves) stands
        return graph, leaves, False
    if len(copaque) < len(leaves):
        return cgraph, copaque, True
    return graph, leaves, False


def _input_shapes(model: nn.Module, inputs: tuple) -> dict[str, tuple[int, ...]]:
    """The first input's shape of every module whose decomposition specialises on it, from one
    forward pass on the example inputs (none when the model has no such module)."""
    wanted = {name: m for name, m in model.named_modules() if needs_shape(m)}
    if not wanted:
        return {}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault(name, tuple(args[0].shape))
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in wanted.items()]
    try:
        with untouched(model, eval_mode=True), torch.no_grad():
            model(*copied(inputs))
    except Exception:  # noqa: BLE001 - the trace or the analysis reports bad inputs
        return {}
    finally:
        for h in handles:
            h.remove()
    return shapes


def _trace_graph(model: nn.Module, shapes: dict[str, tuple[int, ...]] | None = None
                 ) -> tuple[fx.Graph, dict[str, str]]:
    """Trace, retrying with each failing submodule as an opaque leaf ({path: reason})."""
    leaves: dict[str, str] = {}
    for _ in range(_MAX_LEAF_RETRIES):
        tracer = FxPruneTracer(leaves, shapes=shapes)
        try:
            graph = tracer.trace(model)
            break
        except Exception as e:  # noqa: BLE001 - re-raised below with context
            _scrub_proxies(model)
            failing = tracer.failed_path or ""
            if failing and failing not in leaves:
                leaves[failing] = f"cannot be traced: {short_error(e)}"  # retry it opaque
                continue
            where = _user_frame(e)
            raise TraceFailure(
                f"torch.fx could not trace {type(model).__name__}: {short_error(e)}\n"
                f"  where: {where or 'top-level forward'}\n"
                "Hint: data-dependent Python control flow (if/for on tensor values) cannot be "
                "traced. Move it into a submodule (fxprune then treats that submodule as one op), "
                "or wrap the function with torch.fx.wrap."
            ) from e
    else:  # pragma: no cover - pathological models
        raise TraceFailure(f"gave up tracing {type(model).__name__} after {len(leaves)} retries")

    _scrub_proxies(model)
    return graph, leaves


def _drop_added_attrs(model: nn.Module, before: set[str]) -> None:
    """Remove what torch.fx's tracer set on the model (``_tensor_constant0``, ...: tensors
    created in ``forward``): the model stays as it was, and the next trace of it uses the same
    names again (``fxprune.verify`` matches a re-trace with the pruned model by name)."""
    for k in set(model.__dict__) - before:
        if k.startswith(("_tensor_constant", "_torchbind_obj")):
            del model.__dict__[k]
