"""The tracer: torch.fx's, keeping as leaves the modules that carry an op rule (and timm's
no-trace modules until tracing them fails), tracing decomposable modules as their ops, and
holding the trace lock while it traces (:func:`fxprune.ir.threads.locked_trace`). The
concrete-value tracer (:mod:`.concrete`) extends it; :func:`.trace.trace` chooses between them.
"""

from __future__ import annotations

__all__ = ["FxPruneTracer"]

from typing import Any

import torch.fx as fx
import torch.nn as nn

from fxprune.core.decompose import decomposes, decomposition
from fxprune.ir.threads import locked_trace
from fxprune.rules import RULES


def _timm_notrace() -> tuple[set[type], list[Any]]:
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except Exception:  # timm missing or too old: nothing extra to honour
        return set(), []
    return set(get_notrace_modules()), list(get_notrace_functions())


class FxPruneTracer(fx.Tracer):
    """A tracer that keeps rule-carrying and timm no-trace modules as leaves."""

    def __init__(self, extra_leaves: set[str] | None = None, record_stack_traces: bool = False,
                 shapes: dict[str, tuple[int, ...]] | None = None):
        mods, fns = _timm_notrace()
        super().__init__(autowrap_functions=tuple(fns))
        # Stack traces cost a third of the tracing time; they are recorded lazily, only when
        # a message needs a source line (see STACK_TRACER and fxprune.errors.node_location).
        self.record_stack_traces = record_stack_traces
        self._notrace = mods
        self.extra_leaves = set(extra_leaves or ())
        self.shapes = dict(shapes or {})  # module path -> input shape on the example inputs
        self.current_path: list[str] = []
        self.failed_path: str | None = None

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:  # type: ignore[override]
        # torch.fx patches nn.Module's class while tracing: one trace at a time, and other
        # threads keep running their modules unpatched (see fxprune.ir.threads)
        return locked_trace(self, root, concrete_args)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        t = type(m)
        if module_qualified_name in self.extra_leaves:
            return True
        if decomposes(m):
            return False  # call_module traces its decomposition, or keeps it one op
        if t in RULES:
            return True
        if t in self._notrace:
            return False  # try tracing through; a failure makes it a leaf (see trace())
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):  # type: ignore[no-untyped-def]
        path = self.path_of_module(m)
        self.current_path.append(path)
        try:
            if decomposes(m) and path not in self.extra_leaves:
                fn = decomposition(m, args, kwargs, self.shapes.get(path))
                if fn is None:  # this call stays one opaque op
                    return self.create_proxy("call_module", path, args, kwargs)
                forward = fn
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_path is None:  # innermost module whose forward failed
                self.failed_path = self.current_path[-1]
            raise
        finally:
            self.current_path.pop()
