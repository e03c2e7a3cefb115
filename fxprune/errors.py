"""Error hierarchy. Every message says what went wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = [
    "FxPruneError",
    "TraceFailure",
    "UnsupportedOpError",
    "GroupConflictError",
    "RewriteError",
    "VerificationError",
    "InputError",
    "node_location",
    "short_error",
    "is_library_file",
]

import functools
import importlib.util
import os

import torch.fx as fx


class FxPruneError(Exception):
    """Base class of every error fxprune raises on purpose."""


class InputError(FxPruneError, ValueError):
    """A bad argument: wrong type, range, shape, device or name."""


class TraceFailure(FxPruneError):
    """The model could not be traced to a torch.fx graph."""


class UnsupportedOpError(FxPruneError):
    """Strict mode: some ops have no channel rule (all of them are listed)."""

    def __init__(self, message: str, ops: list[str]):
        super().__init__(message)
        self.ops = ops


class GroupConflictError(FxPruneError):
    """A keep-set request cannot be honoured by a channel group."""


class RewriteError(FxPruneError):
    """The rewrite pass produced a graph that does not match the analysis."""


class VerificationError(FxPruneError):
    """The pruned model does not match the zero-channel oracle."""


def short_error(e: BaseException) -> str:
    """``Type: message`` without torch.fx's appended graph traceback."""
    msg = str(e).split("\n\nWhile executing")[0].split("\nWhile executing")[0].strip()
    return f"{type(e).__name__}: {msg}"


def node_location(node: fx.Node) -> str:
    """Describe where a node comes from: its name, its module path and the user's source line."""
    where = f"node '{node.name}'"
    stack = node.meta.get("nn_module_stack")
    if node.op == "call_module":
        where += f" (module '{node.target}')"
    elif stack:
        path = list(stack.values())[-1][0] if stack else ""
        if path:
            where += f" (inside module '{path}')"
    src = user_source_line(node)
    if src:
        where += f" at {src}"
    return where


class Located:
    """A reason tied to a node, formatted with :func:`node_location` only when shown.

    Building a node's location may re-trace the model for stack traces (see trace.py), so
    analysis records ``Located`` objects and pays for the message only if it is displayed.
    """

    __slots__ = ("reason", "node")

    def __init__(self, reason: str, node: fx.Node):
        self.reason = reason
        self.node = node

    def __str__(self) -> str:
        return f"{self.reason} ({node_location(self.node)})"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Located) and other.reason == self.reason
                and other.node is self.node)

    def __hash__(self) -> int:
        return hash((self.reason, id(self.node)))


def _stack_trace(node: fx.Node) -> str | None:
    """The node's stack trace, recorded on first use for the whole graph (see trace.py)."""
    if "stack_trace" not in node.meta:
        owner = node.graph.owning_module
        tracer = owner.meta.pop("fxprune.stack_tracer", None) if owner is not None else None
        if tracer is not None:
            try:
                traces = tracer()
            except Exception:  # noqa: BLE001 - a message without a source line is still useful
                traces = {}
            for n in node.graph.nodes:
                if n.name in traces:
                    n.meta["stack_trace"] = traces[n.name]
    return node.meta.get("stack_trace")


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(library folders, model folders inside them): real paths of the installed packages.

    torch's package folder and fxprune's (``fxprune``, ``fxprune.rules``, and
    ``fxprune.passes``, which an editable install maps to the top-level ``passes/``) hold
    library code; ``fxprune.models`` holds model code, whose frames are the user's.
    """
    import torch

    def folder(name: str) -> str | None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.origin:
            return None
        return os.path.realpath(os.path.dirname(spec.origin))

    libs = [os.path.realpath(os.path.dirname(torch.__file__))]
    libs += [d for d in map(folder, ("fxprune", "fxprune.rules", "fxprune.passes")) if d]
    models = [d for d in (folder("fxprune.models"),) if d]
    return tuple(dict.fromkeys(libs)), tuple(models)


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@functools.lru_cache(maxsize=4096)
def is_library_file(filename: str) -> bool:
    """True for a file of torch or of fxprune's own code (not ``fxprune.models``), and for
    generated code (``<eval_with_key>``...). Compares real paths with the installed packages'
    folders, so a user's project under a folder named ``torch`` or ``fxprune`` is still the
    user's."""
    if filename.startswith("<"):
        return True
    path = os.path.realpath(filename)
    libs, models = _library_dirs()
    if any(_under(path, m) for m in models):
        return False
    return any(_under(path, d) for d in libs)


def user_source_line(node: fx.Node) -> str:
    """The innermost frame of the node's recorded stack trace outside torch and fxprune's own
    code (see :func:`is_library_file`): the user's line."""
    trace = _stack_trace(node)
    if not trace:
        return ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
    lines = [ln for ln in lines if not is_library_file(_frame_file(ln))] or lines
    if not lines:
        return ""
    last = lines[-1]
    # 'File "/path/x.py", line 41, in forward' -> '/path/x.py:41 (forward)'
    try:
        path = last.split('"')[1]
        lineno = last.split("line ")[1].split(",")[0]
        func = last.rsplit(" in ", 1)[1]
        return f"{path}:{lineno} ({func})"
    except IndexError:
        return last


def _frame_file(line: str) -> str:
    """``'File "/path/x.py", line 41, in forward'`` -> ``'/path/x.py'``."""
    parts = line.split('"')
    return parts[1] if len(parts) > 2 else line
