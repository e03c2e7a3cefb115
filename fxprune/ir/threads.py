"""What makes fxprune safe to call from several threads at once.

fxprune's own state is per call (the traced graph, its ``meta``, the analysis). Three pieces of
process-wide state remain, each handled here:

- **torch.fx's tracer patches classes.** ``Tracer.trace`` replaces ``nn.Module.__call__`` and
  ``nn.Module.__getattr__`` on the class for the length of the trace, and restores them in the
  order it found them. A second thread then runs its modules through the first thread's tracer
  (``NameError: module is not installed as a submodule``), and two traces restoring out of
  order leave the process patched for good. :func:`locked_trace` serialises traces with one
  lock (measured: README, "Threads") and installs the class patches through
  :class:`_ThreadPatcher`, whose replacements dispatch on the thread: the tracing thread gets
  the tracer's, every other thread torch's originals. Functions torch.fx wraps in module
  globals (``torch.fx.wrap``, ``math``, timm's no-trace functions) pass non-proxy arguments
  through, so other threads may call them during a trace.
- **Running a model changes it for the length of the run** (eval mode, buffers, see
  :func:`fxprune.ir.state.untouched`). Two threads running the same model would snapshot each
  other's changes. :func:`model_guard` gives a thread the modules it runs, all of them or none
  (so two threads never wait on each other in a cycle); a second thread on the same model (or
  a model sharing a submodule) waits, threads on different models do not.
- **Global module hooks** (``FlopCounterMode``'s module tracker, used by
  :func:`fxprune.count`) fire in every thread: :func:`this_thread_only` filters them.
"""

from __future__ import annotations

__all__ = ["model_guard", "locked_trace", "this_thread_only", "TRACE_LOCK"]

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch.fx as fx
import torch.fx._symbolic_trace as _st
import torch.nn as nn

#: Held by the thread that runs torch.fx's symbolic trace (re-entrant: a trace may trace).
TRACE_LOCK = threading.RLock()

_OWNERS: dict[int, list[Any]] = {}  # id(module) -> [thread id, depth, module]
_CHANGED = threading.Condition()


def _modules(roots: Iterable[Any]) -> dict[int, nn.Module]:
    found: dict[int, nn.Module] = {}
    for root in roots:
        if isinstance(root, nn.Module):
            for m in root.modules():
                found.setdefault(id(m), m)
    return found


@contextlib.contextmanager
def model_guard(*roots: Any) -> Iterator[None]:
    """Hold every module of ``roots`` (and their submodules) for this thread.

    Re-entrant. All of them are taken at once, when no other thread holds any of them, so
    threads that wait hold nothing they took here; non-modules are ignored.
    """
    me = threading.get_ident()
    mods = _modules(roots)
    with _CHANGED:
        while any(_OWNERS[k][0] != me for k in mods if k in _OWNERS):
            _CHANGED.wait()
        for k, m in mods.items():
            entry = _OWNERS.setdefault(k, [me, 0, m])
            entry[1] += 1
    try:
        yield
    finally:
        with _CHANGED:
            for k in mods:
                entry = _OWNERS[k]
                entry[1] -= 1
                if entry[1] == 0:
                    del _OWNERS[k]
            _CHANGED.notify_all()


def _for_this_thread(new_fn: Callable[..., Any], orig_fn: Callable[..., Any]
                     ) -> Callable[..., Any]:
    """``new_fn`` in the calling thread, ``orig_fn`` in every other thread."""
    owner = threading.get_ident()
    get_ident = threading.get_ident

    @functools.wraps(new_fn)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if get_ident() == owner:
            return new_fn(*args, **kwargs)
        return orig_fn(*args, **kwargs)

    return dispatch


class _ThreadPatcher(_st._Patcher):
    """torch.fx's patcher, with class patches that apply to the tracing thread only."""

    def patch_method(self, cls: type, name: str, new_fn: Callable[..., Any],
                     deduplicate: bool = True) -> None:
        super().patch_method(cls, name, _for_this_thread(new_fn, getattr(cls, name)),
                             deduplicate)


def locked_trace(tracer: fx.Tracer, root: Any, concrete_args: Any = None) -> fx.Graph:
    """``tracer.trace(root)`` with :data:`TRACE_LOCK` held and class patches per thread."""
    with TRACE_LOCK:
        plain = _st._Patcher
        _st._Patcher = _ThreadPatcher
        try:
            return fx.Tracer.trace(tracer, root, concrete_args)
        finally:
            _st._Patcher = plain


def this_thread_only(hook: Callable[..., Any]) -> Callable[..., Any]:
    """A global module hook that does nothing when another thread runs a module."""
    owner = threading.get_ident()

    @functools.wraps(hook)
    def filtered(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == owner:
            return hook(*args, **kwargs)
        return None

    return filtered
