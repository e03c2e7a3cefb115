"""torch.distributed plumbing for :func:`fxprune.train.fit` (DDP under ``torchrun``).

A process is part of a distributed run when ``torch.distributed`` is already initialized or
when torchrun's environment (``WORLD_SIZE`` > 1 with ``RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) is present; then the process group is created with gloo on CPU and nccl on
CUDA. Training batches come from a :class:`~torch.utils.data.DistributedSampler` (even in one
process, so that 1 process with global batch B and N processes with B/N each see the same
samples in the same global batches); evaluation shards the data without padding and sums the
counts over ranks, so every rank reports the exact full-set numbers.
"""

from __future__ import annotations

__all__ = ["DistInfo", "init_distributed", "shard_train_loader", "shard_eval_loader",
           "all_reduce_sum", "broadcast_buffers", "gather_objects"]

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Sampler
from torch.utils.data import SequentialSampler as _Sequential

from fxprune.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and whether this call created the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(device: torch.device | str | None = None) -> DistInfo:
    """Join (or create, from torchrun's environment) the default process group.

    Backend: nccl when ``device`` is CUDA, else gloo. Without a distributed environment this
    returns rank 0 of a world of 1 and creates nothing.

    Raises:
        InputError: torchrun's variables are incomplete.
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    if _env_world() <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing or not dist.is_available():
        what = ", ".join(missing) or "torch.distributed"
        raise InputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {what} is missing: "
                         "launch with torchrun --nproc_per_node N")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", dist.get_rank())), True)


def shard_train_loader(loader: Any, info: DistInfo, seed: int) -> tuple[Any, Any]:
    """Rebuild a DataLoader of global batch B as this rank's share: batch B/world from a
    seeded :class:`DistributedSampler` (``drop_last``: the last incomplete global batch is
    dropped). Returns ``(loader, sampler)``; other iterables are returned as they are (one
    process only).

    Raises:
        InputError: B is not divisible by the world size, or the loader cannot be sharded.
    """
    if not isinstance(loader, DataLoader) or loader.batch_size is None or isinstance(
            loader.dataset, IterableDataset):
        if info.enabled:
            raise InputError("under torchrun, train_loader must be a torch DataLoader over a "
                             "map-style dataset with a batch_size (fit shards it per rank)")
        return loader, None
    batch = loader.batch_size
    if batch % info.world_size:
        raise InputError(f"the global batch {batch} is not divisible by {info.world_size} "
                         f"processes: use a multiple of {info.world_size}")
    shuffle = not isinstance(loader.sampler, _Sequential)
    sampler = DistributedSampler(loader.dataset, num_replicas=info.world_size, rank=info.rank,
                                 shuffle=shuffle, seed=seed, drop_last=True)
    per_rank = batch // info.world_size
    if len(sampler) < per_rank:
        raise InputError(f"{len(loader.dataset)} training examples make no full batch of "
                         f"{batch}: lower the batch size")
    new = DataLoader(loader.dataset, batch_size=per_rank, sampler=sampler, drop_last=True,
                     num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                     pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
                     persistent_workers=loader.persistent_workers if loader.num_workers else False)
    return new, sampler


class _Strided(Sampler[int]):
    """Indices ``rank, rank + world, ...``: a partition of the data, no padding."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def shard_eval_loader(loader: Iterable | None, info: DistInfo) -> Iterable | None:
    """This rank's part of an evaluation DataLoader (unchanged in one process)."""
    if loader is None or not info.enabled:
        return loader
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        raise InputError("under torchrun, val_loader must be a torch DataLoader over a "
                         "map-style dataset (fit shards it per rank)")
    return DataLoader(loader.dataset, batch_size=loader.batch_size or 256,
                      sampler=_Strided(len(loader.dataset), info.rank, info.world_size),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks (in place; a no-op in one process)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BN running statistics drift per rank)."""
    if info.enabled:
        for b in module.buffers():
            dist.broadcast(b.data, src)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
