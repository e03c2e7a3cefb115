"""Which module's own code does not survive the pruned widths (:func:`fxprune.graft`).

Reads:  a grafted copy (the user's class, pruned leaves), the pruned GraphModule it was made
        from (same leaf names), the example inputs, and the exception the copy raised (if any)
Writes: nothing (both models are run under ``untouched``); returns ``(qualified name, why)``

The pruned GraphModule is run once with every leaf module hooked: the inputs and outputs of
each call are recorded. The copy is then run with every module hooked: a stack of the modules
running, the tensors each completed module returned (right, so far), and for each leaf call a
comparison with the same call in the GraphModule. The first leaf that sees another input or
gives another output, or the first exception, stops the run. The module blamed is the
innermost one on the stack, not a leaf, whose own inputs were all right: its own code (a
``chunk`` into equal pieces, a ``view`` with ``self.num_heads``) made the wrong value.
"""

from __future__ import annotations

__all__ = ["locate", "outputs_close", "same_mode", "GRAFT_RTOL"]

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxprune.core.verify import flat_tensors
from fxprune.errors import short_error
from fxprune.ir.inputs import copied
from fxprune.ir.state import untouched


class _Diverged(Exception):
    def __init__(self, leaf: str, why: str):
        super().__init__(why)
        self.leaf, self.why = leaf, why


def _shapes(ts: list) -> str:
    return ", ".join(str(tuple(t.shape)) for t in ts)


#: Relative tolerance of the grafted-vs-pruned check (absolute: this times the output
#: scale), the oracle's default.
GRAFT_RTOL = 1e-4


def outputs_close(a: Any, b: Any, rtol: float = GRAFT_RTOL) -> bool:
    """Same tensors (number, shapes) and values within ``rtol`` of ``b``'s scale, as the
    oracle compares."""
    x, y = flat_tensors(a), flat_tensors(b)
    if len(x) != len(y) or any(s.shape != t.shape for s, t in zip(x, y)):
        return False
    scale = max((float(t.double().abs().max()) for t in y if t.numel()), default=0.0)
    return all(torch.allclose(s.double(), t.double(), rtol=rtol, atol=rtol * max(scale, 1e-12))
               for s, t in zip(x, y) if s.is_floating_point() or t.is_floating_point()) and \
        all(torch.equal(s, t) for s, t in zip(x, y)
            if not (s.is_floating_point() or t.is_floating_point()))


@contextlib.contextmanager
def same_mode(grafted: nn.Module, pruned: nn.Module) -> Iterator[None]:
    """Run (one model, once) in the mode ``pruned`` was traced in: a graph traced in training
    mode took the ``self.training`` branches, so both run with their training flags (and the
    same random state, for dropout); else in eval mode. Flags, buffers and the random state
    are restored."""
    train = bool(getattr(pruned, "training", False)) and isinstance(pruned, fx.GraphModule)
    with untouched(grafted, pruned, eval_mode=not train), torch.no_grad(), \
            torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield



def _record_pruned(grafted: nn.Module, pruned: nn.Module, leaves: list[str], inputs: tuple
                   ) -> dict[str, list[tuple[list, list]]]:
    """``{leaf: [(inputs, outputs) of each call]}`` during one run of ``pruned``."""
    seen: dict[str, list[tuple[list, list]]] = {}
    handles = []
    for name in leaves:
        try:
            mod = pruned.get_submodule(name)
        except AttributeError:
            continue
        if type(mod) is not type(grafted.get_submodule(name)):  # traced through: its tensors
            continue  # were grafted, its calls are ops of the graph
        seen[name] = []

        def hook(m: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            seen[name].append(([t.detach().clone() for t in flat_tensors(args)],
                               [t.detach().clone() for t in flat_tensors(out)]))

        handles.append(mod.register_forward_hook(hook))
    try:
        with same_mode(grafted, pruned):
            pruned(*copied(inputs))
    finally:
        for h in handles:
            h.remove()
    return seen


class _Watch:
    """The hooks on the grafted copy: the stack of running modules, the tensors completed
    modules returned, and the leaf-by-leaf comparison with the pruned graph."""

    def __init__(self, grafted: nn.Module, seen: dict[str, list[tuple[list, list]]]):
        self.seen, self.calls = seen, Counter[str]()
        self.stack: list[tuple[str, list[int]]] = []
        self.good: dict[int, Any] = {}  # id -> tensor (held, so ids are not reused)
        self.leafy = {n for n, m in grafted.named_modules() if next(m.children(), None) is None}
        self.handles = []
        for name, m in grafted.named_modules():
            self.handles.append(m.register_forward_pre_hook(self._pre(name)))
            self.handles.append(m.register_forward_hook(self._post(name)))

    def _pre(self, name: str) -> Any:
        def hook(m: nn.Module, args: tuple) -> None:
            ins = flat_tensors(args)
            self.stack.append((name, [id(t) for t in ins]))
            if name in self.seen:
                k = self.calls[name]
                self.calls[name] += 1
                ref = self.seen[name]
                if k >= len(ref):
                    raise _Diverged(name, f"'{name}' is called more often than in the pruned "
                                          "model")
                if not outputs_close(ins, ref[k][0]):
                    raise _Diverged(name, f"'{name}' gets inputs of shapes ({_shapes(ins)}) "
                                          f"where the pruned model's gets ({_shapes(ref[k][0])})"
                                    if [t.shape for t in ins] != [t.shape for t in ref[k][0]]
                                    else f"'{name}' gets other input values than in the "
                                         "pruned model")
        return hook

    def _post(self, name: str) -> Any:
        def hook(m: nn.Module, args: tuple, out: Any) -> None:
            outs = flat_tensors(out)
            ref = self.seen.get(name)
            if ref is not None and not outputs_close(outs, ref[self.calls[name] - 1][1]):
                raise _Diverged(name, f"'{name}' returns other values than in the pruned model")
            if self.stack and self.stack[-1][0] == name:
                self.stack.pop()
            for t in outs:
                self.good[id(t)] = t
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def blame(self) -> str:
        """The innermost running module, not a leaf, whose own inputs were all right."""
        for name, ids in reversed(self.stack):
            if name in self.leafy:
                continue
            if all(i in self.good for i in ids):
                return name
        return ""


def locate(grafted: nn.Module, pruned: nn.Module, inputs: tuple, err: BaseException | None
           ) -> tuple[str, str]:
    """``(qualified name, why)`` of the first module of ``grafted`` whose own code computes
    something else than ``pruned`` (``""``: the model's own forward)."""
    leaves = [n for n, m in grafted.named_modules()
              if next(m.children(), None) is None and (m._parameters or m._buffers)]
    seen = _record_pruned(grafted, pruned, leaves, inputs)
    watch = _Watch(grafted, seen)
    run = copied(inputs)
    for t in flat_tensors(run):
        watch.good[id(t)] = t
    why = None
    try:
        with same_mode(grafted, pruned):
            grafted(*run)
    except _Diverged as d:
        why = d.why
    except Exception as e:  # noqa: BLE001 - the exception the copy's own code raised
        why = short_error(e)
    finally:
        watch.remove()
    if why is None:  # every leaf agreed, and the outputs still differ
        why = (short_error(err) if err is not None else
               "every layer computes what the pruned model's does, the outputs differ")
        return "", why
    return watch.blame(), why
