"""Small performance helpers shared by the pipeline stages."""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_LOCK = threading.Lock()
_PAUSED = [0, 0]  # [stages running with the GC paused (all threads), stages ended meanwhile]
_TLS = threading.local()
_COLLECT_EVERY = 8  # stages that end while others still run, between explicit collections


def gc_paused(fn: F) -> F:
    """Run ``fn`` with Python's cyclic GC paused.

    Tracing, analysis and the rewrite allocate many small objects (graph nodes, module copies)
    that trigger full collections over the user's whole model: up to 25% of the time on
    1000-module graphs. Reference counting still frees everything; cyclic garbage made inside
    one stage waits for the next collection after it. Each stage is bounded, so a long search
    that rewrites many candidates (``target_flops=``) does not accumulate garbage. Stages in
    several threads share one count: the GC resumes when the last of them ends, and while
    stages overlap without pause, every 8th one to end collects.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            # nested in a stage of this thread, or paused by the caller: nothing to do
            owned = not getattr(_TLS, "inside", False) and (_PAUSED[0] > 0 or gc.isenabled())
            if owned:
                _PAUSED[0] += 1
                gc.disable()
        if not owned:
            return fn(*args, **kwargs)
        _TLS.inside = True
        collect = False
        try:
            return fn(*args, **kwargs)
        finally:
            _TLS.inside = False
            with _LOCK:
                _PAUSED[0] -= 1
                if _PAUSED[0] == 0:
                    _PAUSED[1] = 0
                    gc.enable()
                else:
                    _PAUSED[1] += 1
                    collect = _PAUSED[1] % _COLLECT_EVERY == 0
            if collect:
                gc.collect()

    return wrapper  # type: ignore[return-value]
