"""Whole-batch augmentation for image tensors held in memory (the fast CPU input path).

torchvision's v2 transforms run per item: on 28x28 Fashion-MNIST, per-item crop + flip +
normalize in the DataLoader costs about as much as the ResNet-20 step itself on this project's
2-core machine (``benchmarks/cpu_train_speed.py`` measures both). :class:`BatchAugment` does the
same augmentation (zero-padded random crop, horizontal flip, normalize; an independent draw per
image, from torch's global RNG as the v2 transforms do) on a whole uint8 batch at once, and
:class:`BatchedView` lets a ``DataLoader`` fetch a batch with one indexing op
(``__getitems__``) instead of one ``__getitem__`` per image. ``fit``'s DistributedSampler
sharding works unchanged (it keeps the loader's dataset and ``collate_fn``).
"""

from __future__ import annotations

__all__ = ["BatchAugment", "BatchedView", "collate"]

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate


class BatchAugment:
    """``[B, C, H, W]`` uint8 (or float in [0, 1]) -> normalized float32, per-image augment.

    Args:
        mean, std: per-channel normalization (of images scaled to [0, 1]).
        pad: random-crop padding in pixels (0: no crop); the crop keeps the input size.
        flip: random horizontal flip with probability 0.5.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], pad: int = 0,
                 flip: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pad, self.flip = int(pad), bool(flip)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        b, c, h, w = x.shape
        if self.pad > 0:
            p = self.pad
            padded = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b,))
            ox = torch.randint(0, 2 * p + 1, (b,))
            rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
            x = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                       rows, cols]
        if self.flip:
            m = torch.rand(b) < 0.5
            x = torch.where(m[:, None, None, None], x.flip(-1), x)
        return ((x - self.mean) / self.std).contiguous()

    def __repr__(self) -> str:
        return f"BatchAugment(pad={self.pad}, flip={self.flip})"


class _Batch(tuple):
    """A batch already stacked by :meth:`BatchedView.__getitems__`."""


class BatchedView(Dataset):
    """A map-style view of in-memory ``images``/``labels`` whose batches are built whole.

    ``view[i]`` is one ``(image, label)`` (``transform`` applied to a batch of one);
    ``DataLoader`` fetches a batch through ``__getitems__`` and :func:`collate` passes it on.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: BatchAugment):
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i:i + 1])[0], self.labels[i]

    def __getitems__(self, indices: list[int]) -> _Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return _Batch((self.transform(self.images[idx]), self.labels[idx]))


def collate(batch: Any) -> Any:
    """``collate_fn`` for loaders over a :class:`BatchedView` (anything else: the default)."""
    if isinstance(batch, _Batch):
        return tuple(batch)
    return default_collate(batch)
