"""Files that lie about themselves: mutations of a saved payload that keep it well formed but
make it contradict itself (issue 24, item 4). :func:`fxprune.load` without ``model=`` must
refuse every one (``tests/files/test_hostile_files.py``); the random mutation fuzz there covers
malformed fields, names and bytes.

Each mutation edits a deep copy of a payload returned by :func:`fxprune.files.serialize.read`:
a ``state_dict`` entry of another shape or other values than its module's tensor, manifest
indices beyond the recorded original width or different between tensors of one module that
share channels, BatchNorm statistics that are not finite or negative variances (edited in the
module and the ``state_dict`` alike, as one tensor), module options the class does not accept
(padding modes, paddings, epsilons, momenta, flags that disagree with the saved tensors), and
records of ties, training flags and widths that name what is not there.
"""

from __future__ import annotations

__all__ = ["lies"]

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch

Lie = tuple[str, Callable[[dict[str, Any]], None]]


def _specs(p: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, module spec) of every saved module and child, depth first."""
    stack = list(p["modules"].items())
    while stack:
        path, spec = stack.pop(0)
        yield path, spec
        stack[:0] = [(f"{path}.{k}", c) for k, c in spec["children"].items()]


def _state_lies(p: dict[str, Any]) -> Iterator[Lie]:
    entries = list(p["state_dict"].items())
    for k, t in entries[::max(1, len(entries) // 8)]:  # eight entries, spread out
        def reshape(q: dict[str, Any], k: str = k, t: torch.Tensor = t) -> None:
            shape = list(t.shape) or [1]
            shape[0] += 1
            q["state_dict"][k] = torch.zeros(shape, dtype=t.dtype)

        def revalue(q: dict[str, Any], k: str = k) -> None:
            q["state_dict"][k] = q["state_dict"][k].clone()
            q["state_dict"][k].view(-1)[0] += 1

        yield f"state_dict['{k}'] reshaped", reshape
        yield f"state_dict['{k}'] other values", revalue
    yield "state_dict entry dropped", lambda q: q["state_dict"].pop(next(iter(q["state_dict"])))


def _coupled_entry(p: dict[str, Any]) -> str | None:
    """A manifest path of a 1-D tensor whose module has another manifest entry on dim 0."""
    m = p["manifest"]
    for path in m:
        owner, _, name = path.rpartition(".")
        if name in ("bias", "running_var") and 0 in m[path] and 0 in m.get(f"{owner}.weight", {}):
            return path
    return None


def _manifest_lies(p: dict[str, Any]) -> Iterator[Lie]:
    widths = p.get("manifest_widths") or {}
    for path, dims in widths.items():
        d, n = next(iter(dims.items()))
        for bad in (n, n + 5, 10**9):
            def past(q: dict[str, Any], path: str = path, d: int = d, bad: int = bad) -> None:
                idx = q["manifest"][path][d]
                q["manifest"][path][d] = sorted(set(idx[:-1]) | {bad})

            yield f"manifest['{path}'][{d}] index {bad} >= width {n}", past
        yield f"manifest_widths['{path}'] too small", lambda q, path=path, d=d: q[
            "manifest_widths"][path].update({d: len(q["manifest"][path][d]) - 1 or 0})
        break
    path = _coupled_entry(p)
    if path is not None:
        def shifted(q: dict[str, Any], path: str = path) -> None:
            idx = q["manifest"][path][0]
            free = next(i for i in range(idx[-1] + 2) if i not in idx)
            q["manifest"][path][0] = sorted(idx[1:] + [free])

        yield f"manifest['{path}'][0] other channels than its weight", shifted


def _bn_lies(p: dict[str, Any]) -> Iterator[Lie]:
    for path, spec in _specs(p):
        if "running_var" not in spec["buffers"]:
            continue
        for buf, value in (("running_var", -1.0), ("running_var", float("nan")),
                           ("running_var", float("inf")), ("running_mean", float("nan")),
                           ("running_mean", -float("inf"))):
            def edit(q: dict[str, Any], path: str = path, buf: str = buf, v: float = value
                     ) -> None:
                spec = dict(_specs(q))[path]
                spec["buffers"][buf][0] = v  # one tensor: the state_dict entry changes too

            yield f"module '{path}': {buf}[0] = {value}", edit
        for attr, value in (("eps", 0.0), ("eps", -1e-5), ("eps", float("nan")), ("eps", "x"),
                            ("momentum", 2.0), ("momentum", float("nan")), ("affine", False),
                            ("track_running_stats", False), ("track_running_stats", 1)):
            yield f"module '{path}': {attr} = {value!r}", _set_attr(path, attr, value)
        break


def _set_attr(path: str, attr: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(q: dict[str, Any]) -> None:
        dict(_specs(q))[path]["attrs"][attr] = value

    return edit


def _conv_lies(p: dict[str, Any]) -> Iterator[Lie]:
    for path, spec in _specs(p):
        a = spec["attrs"]
        if "padding_mode" not in a:
            continue
        k = len(a["kernel_size"]["__tuple__"])
        bad = ["bogus", "", "Zeros", 3, None] + (["reflect"] if a.get("transposed") else [])
        for mode in bad:
            yield f"module '{path}': padding_mode = {mode!r}", _set_attr(path, "padding_mode",
                                                                         mode)
        for attr, value in (("padding", {"__tuple__": [-1] * k}), ("padding", "full"),
                            ("padding", {"__tuple__": [1] * (k + 1)}),
                            ("output_padding", {"__tuple__": [1] * k}),
                            ("_reversed_padding_repeated_twice", {"__tuple__": [7] * 2 * k})):
            yield f"module '{path}': {attr} = {value!r}", _set_attr(path, attr, value)
        break


def _record_lies(p: dict[str, Any]) -> Iterator[Lie]:
    params = [(f"{path}.{k}", t) for path, spec in _specs(p) for k, t in spec["params"].items()]
    a, b = params[0], next((q for q in params[1:] if q[1].shape != params[0][1].shape), None)
    if b is not None:
        yield f"ties: '{b[0]}' tied to '{a[0]}' of another shape", lambda q: q.setdefault(
            "ties", {}).update({b[0]: a[0]})
    same = next((q for q in params[1:] if q[1].shape == a[1].shape
                 and not torch.equal(q[1], a[1])), None)
    if same is not None:
        yield f"ties: '{same[0]}' tied to '{a[0]}' of other values", lambda q: q.setdefault(
            "ties", {}).update({same[0]: a[0]})
    yield "ties: an alias of a missing parameter", lambda q: q.setdefault("ties", {}).update(
        {a[0]: "nowhere.weight"})
    yield "ties: a parameter tied to itself", lambda q: q.setdefault("ties", {}).update(
        {a[0]: a[0]})
    yield "module_training: 'yes'", lambda q: q.setdefault("module_training", {}).update(
        {"": "yes"})
    yield "module_training: an unknown module", lambda q: q.setdefault(
        "module_training", {}).update({"ghost": True})


def lies(payload: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(description, lying payload)`` for every mutation above that applies to ``payload``
    (a deep copy each; ``payload`` is not changed)."""
    for make in (_state_lies, _manifest_lies, _bn_lies, _conv_lies, _record_lies):
        for what, edit in make(payload):
            q = copy.deepcopy(payload)
            edit(q)
            yield what, q
