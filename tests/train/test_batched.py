"""Whole-batch augmentation (fxprune.train.batched) against torchvision's per-item transforms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxprune.train import data
from fxprune.train.batched import BatchAugment, BatchedView, collate


def _splits(augment: bool = True) -> data.DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 12, 12), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    return data._tensor_splits("synthetic", x[:30], y[:30], x[30:], y[30:], val_fraction=0.2,
                               seed=0, augment=augment, pad=2, flip=True)


def test_eval_batches_equal_the_per_item_transform():
    s = _splits()
    _, v, t = data.make_loaders(s, 4)
    for loader, ds in ((v, s.val), (t, s.test)):
        xs, ys = next(iter(loader))
        want = torch.stack([ds[i][0] for i in range(len(ys))])
        torch.testing.assert_close(xs, want, rtol=0, atol=1e-6)
        assert torch.equal(ys, ds.labels[: len(ys)])


def test_every_augmented_image_is_a_crop_or_flip_of_its_source():
    s = _splits()
    aug = s.train.batch_transform
    assert aug.pad == 2 and aug.flip
    torch.manual_seed(0)
    src = s.train.images[:16]
    out = aug(src)
    norm = BatchAugment(s.mean, s.std)
    padded = F.pad(src.float() / 255.0, (2, 2, 2, 2))
    flips = set()
    for i in range(len(src)):
        cands = []
        for dy in range(5):
            for dx in range(5):
                crop = padded[i:i + 1, :, dy:dy + 12, dx:dx + 12]
                for flip in (False, True):
                    c = crop.flip(-1) if flip else crop
                    cands.append(((c - norm.mean) / norm.std, flip))
        hits = [f for c, f in cands if torch.allclose(out[i:i + 1], c, atol=1e-5)]
        assert hits, f"image {i} is no crop/flip of its source"
        flips.update(hits)
    assert flips == {False, True}  # both orientations occur in 16 draws


def test_no_augmentation_means_the_eval_transform():
    s = _splits(augment=False)
    assert s.train.batch_transform.pad == 0 and not s.train.batch_transform.flip


def test_loader_shapes_match_the_per_item_path_and_view_items():
    s = _splits()
    for batched in (True, False):
        tr, _, _ = data.make_loaders(s, 8, batched=batched)
        x, y = next(iter(tr))
        assert x.shape == (8, 1, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.long
        assert isinstance(tr.dataset, BatchedView) == batched
    view = BatchedView(s.val.images, s.val.labels, s.val.batch_transform)
    x0, y0 = view[0]
    torch.testing.assert_close(x0, s.val[0][0], rtol=0, atol=1e-6)
    assert collate([(x0, y0), (x0, y0)])[0].shape == (2, 1, 12, 12)
