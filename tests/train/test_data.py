"""fxprune.data: IDX parsing (files written here), Fashion-MNIST layouts, digits, ImageFolder,
seeded validation splits, transforms; a smoke test of the Debian package when installed."""

from __future__ import annotations

import gzip
import struct
import sys

import numpy as np
import pytest
import torch

import fxprune.data as fdata
from fxprune.errors import InputError
from fxprune.train import data


def _write_idx(path, arr: np.ndarray, code: int, gz: bool = False) -> None:
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    raw += arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _fake_fmnist(d, n_train=40, n_test=12, gz=False) -> tuple[np.ndarray, np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(d / f"{prefix}-images-idx3-ubyte", images, 0x08, gz)
        _write_idx(d / f"{prefix}-labels-idx1-ubyte", labels, 0x08, gz)
        out.append(images)
    return out[0], out[1]


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx(tmp_path, gz) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", a, 0x08, gz)
    t = data.read_idx(tmp_path / ("a.gz" if gz else "a"))
    assert t.dtype == torch.uint8 and torch.equal(t, torch.from_numpy(a))
    f = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=np.float32)
    _write_idx(tmp_path / "f", f, 0x0D)
    assert torch.equal(data.read_idx(tmp_path / "f"), torch.from_numpy(f))
    s = np.array([-3, 300, 7], dtype=np.int16)
    _write_idx(tmp_path / "s", s, 0x0B)
    assert data.read_idx(tmp_path / "s").tolist() == [-3, 300, 7]


def test_read_idx_errors(tmp_path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(InputError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")
    a = np.zeros((4, 5), dtype=np.uint8)
    _write_idx(tmp_path / "short", a, 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(InputError, match="data bytes"):
        data.read_idx(tmp_path / "short")
    with pytest.raises(InputError, match="no such IDX"):
        data.read_idx(tmp_path / "missing")


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_from_idx(tmp_path, layout) -> None:
    d = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    train_images, test_images = _fake_fmnist(d, gz=layout == "flat")
    s = fdata.fashion_mnist(tmp_path, val_fraction=0.25, seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 10, 12)
    assert (s.num_classes, s.in_chans, s.image_size) == (10, 1, (28, 28))
    x, y = s.test[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and int(y) == 3
    expect = (torch.from_numpy(test_images[3]).float() / 255 - s.mean[0]) / s.std[0]
    torch.testing.assert_close(x[0], expect)
    # mean/std come from the training split only
    assert s.mean[0] == pytest.approx(float(s.train.images.double().mean() / 255), rel=1e-6)
    crops = torch.stack([s.train[0][0] for _ in range(8)])
    assert (crops - crops[0]).abs().amax() > 0, "training augmentation never changed the image"
    assert torch.equal(s.val[0][0], s.val[0][0]), "validation must not be augmented"
    with pytest.raises(InputError, match="no Fashion-MNIST"):
        fdata.fashion_mnist(tmp_path / "nowhere")


def test_digits_splits() -> None:
    pytest.importorskip("sklearn")
    a, b, c = data.digits(seed=0), data.digits(seed=0, augment=False), data.digits(seed=5)
    assert (len(a.train), len(a.val), len(a.test)) == (1294, 144, 359)
    assert (a.num_classes, a.in_chans, a.image_size) == (10, 1, (8, 8))
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.test.images, c.test.images)
    assert not torch.equal(a.val.images, c.val.images)  # the val split follows the seed
    assert torch.equal(b.train[0][0], b.train[0][0])
    big = data.digits(image_size=16)
    assert big.image_size == (16, 16) and big.train[0][0].shape == (1, 16, 16)
    train, val, test = data.make_loaders(a, 64)
    assert len(train) == 1294 // 64 and next(iter(train))[0].shape == (64, 1, 8, 8)


def test_digits_without_sklearn(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(InputError, match=r"fxprune\[data\]"):
        data.digits()


def test_split_indices() -> None:
    rest, carved = data.split_indices(10, 0.3, seed=0)
    assert len(carved) == 3 and sorted(rest.tolist() + carved.tolist()) == list(range(10))
    assert torch.equal(carved, data.split_indices(10, 0.3, seed=0)[1])
    for bad in (1.0, -0.1):
        with pytest.raises(InputError, match="fraction"):
            data.split_indices(10, bad, 0)
    with pytest.raises(InputError, match="cannot carve"):
        data.split_indices(1, 0.5, 0)


def test_image_folder(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog", "emu"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(5 if split == "train" else 2):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png")
    s = data.load_data(str(tmp_path), val_fraction=0.2, image_size=16)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 3, 6)
    assert (s.num_classes, s.in_chans, s.image_size) == (3, 3, (16, 16))
    assert s.train[0][0].shape == (3, 16, 16) and s.test[0][0].shape == (3, 16, 16)
    single = data.image_folder(tmp_path / "train", image_size=16)
    assert len(single.test) == 3 and len(single.train) + len(single.val) == 12
    with pytest.raises(InputError, match="unknown dataset"):
        data.load_data("cifar-1000")


def test_fashion_mnist_debian_package() -> None:
    d = data._dpkg_dir()
    if d is None:
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    s = data.fashion_mnist(val_fraction=0.1)
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert (s.num_classes, s.in_chans, s.image_size) == (10, 1, (28, 28))
    assert torch.bincount(s.test.labels).tolist() == [1000] * 10
    assert 0.25 < s.mean[0] < 0.32 and 0.3 < s.std[0] < 0.4
