"""Small performance helpers shared by the pipeline stages."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def gc_paused(fn: F) -> F:
    """Run ``fn`` with Python's cyclic GC paused.

    Tracing, analysis and the rewrite allocate many small objects (graph nodes, module copies)
    that trigger full collections over the user's whole model: up to 25% of the time on
    1000-module graphs. Reference counting still frees everything; cyclic garbage made inside
    one stage waits for the next collection after it. Each stage is bounded, so a long search
    that rewrites many candidates (``target_flops=``) does not accumulate garbage.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper  # type: ignore[return-value]
