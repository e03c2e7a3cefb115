"""Parameters and buffers that ``forward`` never reads, carried into traced and pruned models.

torch.fx's ``GraphModule`` keeps only the attributes its graph uses, so a parameter the model
holds but does not use in ``forward`` (an auxiliary head's scale, a parameter kept for a later
stage) would vanish from ``state_dict``. :func:`carry_unused` puts each one back under its
qualified name, unpruned (no channel of it is bound, so none is cut).
"""

from __future__ import annotations

__all__ = ["carry_unused", "UNUSED"]

from collections.abc import Callable, Collection

import torch.nn as nn
from torch import Tensor

UNUSED = "fxprune.unused"  # gm.meta: qualified names of the tensors forward never reads


def carry_unused(src: nn.Module, dst: nn.Module, copy: Callable[[Tensor], Tensor] = lambda t: t,
                 names: Collection[str] | None = None) -> tuple[str, ...]:
    """Install in ``dst`` every parameter/buffer of ``src`` that ``dst`` lacks (by name; only
    those in ``names`` if given).

    ``copy`` makes the value to install (identity for a traced model that shares the user's
    tensors, a copy for a pruned model). Missing containers on the way are plain modules, as
    ``GraphModule`` makes them. Returns the names installed.
    """
    have = {n for n, _ in dst.named_parameters(remove_duplicate=False)}
    have |= {n for n, _ in dst.named_buffers(remove_duplicate=False)}
    done: list[str] = []
    owners = dict(src.named_modules(remove_duplicate=False))
    tensors = [(n, t, True) for n, t in src.named_parameters(remove_duplicate=False)]
    tensors += [(n, t, False) for n, t in src.named_buffers(remove_duplicate=False)]
    for name, t, is_param in tensors:
        if name in have or (names is not None and name not in names):
            continue
        path, _, attr = name.rpartition(".")
        owner = _container(dst, path)
        if owner is None or attr in owner.__dict__ or attr in owner._modules:
            continue  # a name taken by something else: leave it
        value = copy(t)
        if is_param:
            owner.register_parameter(attr, value if isinstance(value, nn.Parameter) else
                                     nn.Parameter(value, requires_grad=t.requires_grad))
        else:
            persistent = attr not in owners[path]._non_persistent_buffers_set
            owner.register_buffer(attr, value, persistent=persistent)
        have.add(name)
        done.append(name)
    return tuple(done)


def _container(root: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path`` in ``root``, making empty ``nn.Module`` containers as needed."""
    cur = root
    for part in path.split(".") if path else ():
        nxt = cur._modules.get(part)
        if nxt is None:
            if part in cur.__dict__ or part in cur._parameters or part in cur._buffers:
                return None
            nxt = nn.Module()
            cur.add_module(part, nxt)
        cur = nxt
    return cur
