"""Run a user's modules without changing them.

fxprune runs the user's own modules (analysis, criteria, the oracle, the rewrite's check), and a
forward may change its module: ``self.calls.add_(1)``, an EMA, BatchNorm running statistics in
training mode, a buffer reassigned, a training flag set. :func:`untouched` snapshots what a run
can change and restores it afterwards, so the model is bit-identical before and after:

- every module's ``training`` flag;
- every buffer: the same tensor object under the same name, with its values (buffers are small
  next to parameters, so they are cloned; ``num_batches_tracked`` included), and buffers that a
  forward added or removed;
- every parameter: the same object under the same name, its ``requires_grad``, its ``.grad``
  and its storage (``p.data = ...`` is undone).

A thread that runs these modules holds them (:func:`fxprune.ir.threads.model_guard`): another
thread running the same model waits instead of snapshotting the first one's changes.

Parameter *values* are not cloned (that would copy the whole model on every run). A forward
that writes into a parameter in place is detected by the tensor's version counter and raises
:class:`~fxprune.errors.InputError` naming the parameter, after everything else is restored.
"""

from __future__ import annotations

__all__ = ["untouched"]

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fxprune.errors import InputError
from fxprune.ir.threads import model_guard


class _Snapshot:
    def __init__(self, modules: tuple[nn.Module, ...]):
        seen: dict[int, tuple[str, nn.Module]] = {}
        for root in modules:
            if not isinstance(root, nn.Module):
                continue  # not a model: the caller reports it
            for name, m in root.named_modules(remove_duplicate=False):
                seen.setdefault(id(m), (name, m))
        self.modules = list(seen.values())
        self.flags = [(m, m.training) for _n, m in self.modules]
        self.buffers: list[tuple[str, nn.Module, dict[str, Any]]] = []
        self.params: list[tuple[str, nn.Module, dict[str, Any]]] = []
        saved: dict[int, Tensor] = {}  # a buffer shared by two modules is cloned once
        for name, m in self.modules:
            bufs = dict(m._buffers)
            self.buffers.append((name, m, {k: (b, _clone(b, saved)) for k, b in bufs.items()}))
            self.params.append((name, m, {
                k: (p, None if p is None else (p.requires_grad, p.grad, p.data, p._version))
                for k, p in m._parameters.items()}))

    def restore(self) -> list[str]:
        """Put everything back; returns the parameters whose values a forward changed."""
        for m, t in self.flags:
            m.training = t
        with torch.no_grad():
            for _name, m, bufs in self.buffers:
                for k in [k for k in m._buffers if k not in bufs]:
                    del m._buffers[k]
                for k, (b, copy) in bufs.items():
                    m._buffers[k] = b
                    if b is not None and copy is not None:
                        _put_back(b, copy)
        changed: list[str] = []
        for name, m, params in self.params:
            for k in [k for k in m._parameters if k not in params]:
                del m._parameters[k]
            for k, (p, state) in params.items():
                m._parameters[k] = p
                if p is None or state is None:
                    continue
                requires, grad, data, version = state
                if p.data.data_ptr() != data.data_ptr() or p.shape != data.shape:
                    p.data = data
                elif p._version != version:
                    changed.append(f"{name}.{k}" if name else k)
                if p.requires_grad != requires:
                    p.requires_grad_(requires)
                if p.grad is not grad:
                    p.grad = grad
        return changed


def _clone(b: Tensor | None, saved: dict[int, Tensor]) -> Tensor | None:
    if b is None:
        return None
    if id(b) not in saved:
        with torch.inference_mode(b.is_inference()):
            saved[id(b)] = b.detach().clone()
    return saved[id(b)]


def _put_back(b: Tensor, copy: Tensor) -> None:
    if b.shape != copy.shape or b.dtype != copy.dtype or b.device != copy.device:
        b.data = copy  # a forward replaced ``b.data``: the original values are in ``copy``
        return
    if b.data_ptr() == copy.data_ptr() or torch.equal(b, copy):
        return  # nan-free and unchanged: no write (inference tensors stay untouched)
    with torch.inference_mode(b.is_inference()):
        b.copy_(copy)


@contextlib.contextmanager
def untouched(*modules: nn.Module, eval_mode: bool = False) -> Iterator[None]:
    """Restore flags, buffers and parameters of ``modules`` (and their submodules) on exit.

    Args:
        modules: the modules to protect (shared submodules are handled once).
        eval_mode: switch every module to eval mode inside the block (the flags are restored).

    Raises:
        InputError: a forward run inside the block wrote into a parameter in place (raised
            after everything else is restored; an exception from the block itself wins).
    """
    with model_guard(*modules):  # one thread at a time changes (and restores) these modules
        yield from _untouched(modules, eval_mode)


def _untouched(modules: tuple[nn.Module, ...], eval_mode: bool) -> Iterator[None]:
    snap = _Snapshot(modules)
    failed = False
    try:
        if eval_mode:
            for _n, m in snap.modules:
                m.training = False
        yield
    except BaseException:
        failed = True
        raise
    finally:
        changed = snap.restore()
        if changed and not failed:
            raise InputError(
                f"the model's forward wrote into parameter(s) {', '.join(changed[:5])} in place "
                "while fxprune ran it; fxprune restores buffers and flags but does not copy "
                "parameters. Hint: update parameters outside forward(), or pass a copy: "
                "compress(copy.deepcopy(model), ...).")
