"""Shrinking a failing spec (greedy test-case reduction) and fuzz campaigns."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fxprune.tools.fuzz.blocks import Spec
from fxprune.tools.fuzz.cases import CaseResult, run_case, run_spec

# --- shrinking ----------------------------------------------------------------------------

def _walk(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, i))


def _get(root: Any, path: tuple) -> Any:
    for p in path:
        root = root[p]
    return root


def _edited(spec: Spec, path: tuple, fn: Callable[[Any], None]) -> Spec:
    new = copy.deepcopy(spec)
    fn(_get(new, path))
    return new


_SIMPLER = {"bn": False, "bias": False, "act": "none", "identity": False, "proj": False,
            "extra_out": False, "stride": 1, "mult": 1, "literal": False, "cbam": False}


def _children(spec: Spec) -> Iterator[Spec]:
    """Candidate simplifications of a spec, most aggressive first."""
    nodes = list(_walk(spec))
    for path, node in nodes:  # 1. delete a block from a list of blocks
        if isinstance(node, list) and node and all(isinstance(b, dict) and "op" in b
                                                   for b in node):
            for i in range(len(node)):
                yield _edited(spec, path, lambda lst, i=i: lst.pop(i))
    for path, node in nodes:  # 2. replace a compound block by one of its sub-sequences
        if isinstance(node, dict) and "op" in node and path[:1] == ("body",):
            for sub in ([node["body"]] if "body" in node else []) + node.get("branches", []):
                new = copy.deepcopy(spec)
                _get(new, path[:-1])[path[-1]] = {"op": "seq", "body": copy.deepcopy(sub)}
                yield new
    for path, node in nodes:  # 3. drop options, halve widths
        if not isinstance(node, dict):
            continue
        for k, v in _SIMPLER.items():
            if k in node and node[k] != v:
                yield _edited(spec, path, lambda d, k=k, v=v: d.__setitem__(k, v))
        for k in ("c", "hidden"):
            if k in node and int(node[k]) > 4:
                yield _edited(spec, path,
                              lambda d, k=k: d.__setitem__(k, max(4, int(d[k]) // 2)))
    if spec.get("head", {}).get("kind") != "gap":  # 4. simpler head, smaller input
        yield {**spec, "head": {**spec["head"], "kind": "gap", "flatten": "torch"}}
    if spec["input"][1:] != [16, 16]:
        yield {**spec, "input": [spec["input"][0], 16, 16]}


def shrink(spec: Spec, ratio: float, criterion: str,
           same: Callable[[CaseResult], bool] | None = None, max_steps: int = 400,
           **compress_kwargs: Any) -> Spec:
    """Greedy test-case reduction: the smallest spec that still fails the same way.

    ``same(result)`` decides whether a failing result is "the same failure" (default: the
    same stage as the original failure). Example::

        >>> r, c = case_config(seed); small = shrink(random_spec(seed), r, c)
        >>> print(build(small)[0])
    """
    first = run_spec(spec, ratio, criterion, **compress_kwargs)
    if first.ok:
        return spec

    def same_stage(r: CaseResult) -> bool:
        return (not r.ok) and r.stage == first.stage

    same = same or same_stage
    best, steps, progress = spec, 0, True
    while progress and steps < max_steps:
        progress = False
        for cand in _children(best):
            steps += 1
            res = run_spec(cand, ratio, criterion, **compress_kwargs)
            if res.stage != "create" and same(res) and cand != best:
                best, progress = cand, True
                break
            if steps >= max_steps:
                break
    return best


def campaign(seeds: Iterable[int], progress: Callable[[CaseResult], None] | None = None,
             **compress_kwargs: Any) -> list[CaseResult]:
    """Run many cases; returns every result (failures have ``ok=False``)."""
    out = []
    for s in seeds:
        r = run_case(s, **compress_kwargs)
        out.append(r)
        if progress is not None:
            progress(r)
    return out
