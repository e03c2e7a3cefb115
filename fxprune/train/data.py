"""Datasets for training-time pruning: digits, Fashion-MNIST, any ImageFolder directory.

Every loader returns a :class:`DataSplits`: ``train``, ``val`` (carved from train with a fixed
seed; never the test set), ``test``, plus what a model needs to know (``num_classes``,
``in_chans``, ``image_size``) and the normalization used. Small datasets (digits,
Fashion-MNIST) are kept in memory as tensors; ImageFolder reads files lazily.

Normalization and light augmentation use :mod:`torchvision.transforms.v2`, as the ecosystem
does: per-channel mean/std computed on the training split (ImageNet constants for ImageFolder),
random crops with padding (plus horizontal flips where the data is flip-invariant: clothing and
photos, not digits) on the training split only.

* :func:`digits`: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), for tests
  and smoke runs. Needs the optional extra ``pip install "fxprune[data]"`` (scikit-learn).
  It has no official test split: 20% is carved off with a fixed seed (0), independent of
  ``seed``.
* :func:`fashion_mnist`: 60k/10k 28x28 grayscale from the standard IDX files (``.gz`` or not),
  found via ``data_dir`` (the files themselves, or torchvision's ``FashionMNIST/raw`` layout),
  else via the Debian package ``dataset-fashion-mnist`` (``dpkg -L`` says where).
* :func:`image_folder`: ``DIR/train`` + ``DIR/val`` (or ``DIR/test``), or a single class-folder
  tree of which 20% becomes the test split.
"""

from __future__ import annotations

__all__ = [
    "DataSplits",
    "TensorImageDataset",
    "load_data",
    "digits",
    "fashion_mnist",
    "image_folder",
    "read_idx",
    "find_fashion_mnist",
    "split_indices",
    "make_loaders",
]

import gzip
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fxprune.errors import InputError

_TEST_SEED = 0  # carving a test split (digits, single-folder ImageFolder) never depends on seed
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSplits:
    """Train/val/test datasets yielding ``(image [C, H, W] float32, label int64)``."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def example_input(self) -> torch.Tensor:
        """A ``(1, C, H, W)`` input of the training resolution (the first val image)."""
        return self.val[0][0].unsqueeze(0)


class TensorImageDataset(Dataset):
    """Images held in memory (``[N, C, H, W]``, uint8 or float in [0, 1]) with int labels.

    ``transform`` (a torchvision v2 transform) is applied per item; it must turn the stored
    image into a normalized float32 tensor.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any = None):
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise InputError(f"expected images [N, C, H, W] and labels [N], got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        self.images, self.labels, self.transform = images, labels.long(), transform
        self.batch_transform: Any = None  # the same transform on a whole batch (batched.py)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return (self.transform(x) if self.transform is not None else x), self.labels[i]


# --- IDX files ---------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format; gzip-compressed or not) into a tensor.

    Raises:
        InputError: the file is missing, truncated or not IDX.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such IDX file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file (bad magic {raw[:4].hex()}); expected "
                         "files such as train-images-idx3-ubyte[.gz]")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise InputError(f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} "
                         f"bytes) but the file holds {len(raw) - header} data bytes")
    arr = np.frombuffer(raw, dtype, count, header).reshape(shape)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


_FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_dir(d: Path) -> Path | None:
    """``d`` or its torchvision sub-layout when it holds all four Fashion-MNIST files."""
    for cand in (d, d / "FashionMNIST" / "raw", d / "raw"):
        if all((cand / n).is_file() or (cand / f"{n}.gz").is_file() for n in _FMNIST_FILES):
            return cand
    return None


def _dpkg_dir(package: str = "dataset-fashion-mnist") -> Path | None:
    if shutil.which("dpkg") is None:
        return None
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    for line in out.stdout.splitlines():
        if Path(line).name.startswith(_FMNIST_FILES[0]):
            return _idx_dir(Path(line).parent)
    return None


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files.

    ``data_dir`` (the files themselves, or torchvision's ``FashionMNIST/raw`` layout under it)
    wins; otherwise the Debian package ``dataset-fashion-mnist`` is asked where it put them.

    Raises:
        InputError: nothing found, with how to get the files.
    """
    if data_dir is not None:
        found = _idx_dir(Path(data_dir))
        if found is None:
            raise InputError(
                f"--data-dir {data_dir} holds no Fashion-MNIST IDX files (expected "
                f"{', '.join(_FMNIST_FILES)}, optionally .gz, in it or in FashionMNIST/raw/)")
        return found
    found = _dpkg_dir()
    if found is None:
        raise InputError(
            "Fashion-MNIST not found. Install the Debian package (apt-get install "
            "dataset-fashion-mnist) or pass data_dir=/--data-dir DIR with the IDX files "
            "(torchvision's FashionMNIST layout works too).")
    return found


def _read_pair(d: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    def pick(name: str) -> Path:
        return d / name if (d / name).is_file() else d / f"{name}.gz"

    images = read_idx(pick(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(pick(f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(f"{d}: {prefix} images {tuple(images.shape)} and labels "
                         f"{tuple(labels.shape)} do not match")
    return images.unsqueeze(1), labels.long()


# --- splits and transforms ---------------------------------------------------------------------

def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministically split ``range(n)`` into (rest, carved) with ``round(n * fraction)``
    carved indices (both sorted).

    Raises:
        InputError: ``fraction`` outside [0, 1) or nothing left on one side.
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"a split fraction must be in [0, 1), got {fraction}")
    k = round(n * fraction)
    if n - k < 1 or (fraction > 0 and k < 1):
        raise InputError(f"cannot carve {fraction:.0%} out of {n} examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[k:].sort().values, perm[:k].sort().values


def _transforms(size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                augment: bool, pad: int, flip: bool) -> tuple[Any, Any]:
    from torchvision.transforms import v2

    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    aug: list[Any] = []
    if augment:
        aug.append(v2.RandomCrop(list(size), padding=pad))
        if flip:
            aug.append(v2.RandomHorizontalFlip())
    return v2.Compose(aug + norm), v2.Compose(norm)


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    x = images.float() / (255.0 if images.dtype == torch.uint8 else 1.0)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           antialias=True, align_corners=False).clamp_(0, 1)


def _tensor_splits(name: str, train_x: torch.Tensor, train_y: torch.Tensor,
                   test_x: torch.Tensor, test_y: torch.Tensor, *, val_fraction: float,
                   seed: int, augment: bool, pad: int, flip: bool) -> DataSplits:
    keep, val = split_indices(len(train_y), val_fraction, seed)
    scale = 255.0 if train_x.dtype == torch.uint8 else 1.0
    x = train_x[keep].double() / scale
    mean = tuple(float(m) for m in x.mean(dim=(0, 2, 3)))
    std = tuple(max(float(s), 1e-6) for s in x.std(dim=(0, 2, 3)))
    size = (int(train_x.shape[-2]), int(train_x.shape[-1]))
    t_train, t_eval = _transforms(size, mean, std, augment, pad, flip)
    num_classes = int(max(int(train_y.max()), int(test_y.max())) + 1)
    from fxprune.train.batched import BatchAugment

    sets = (TensorImageDataset(train_x[keep], train_y[keep], t_train),
            TensorImageDataset(train_x[val], train_y[val], t_eval),
            TensorImageDataset(test_x, test_y, t_eval))
    sets[0].batch_transform = BatchAugment(mean, std, pad if augment else 0, flip and augment)
    sets[1].batch_transform = sets[2].batch_transform = BatchAugment(mean, std)
    return DataSplits(
        name=name, train=sets[0], val=sets[1], test=sets[2],
        num_classes=num_classes, in_chans=int(train_x.shape[1]), image_size=size,
        mean=mean, std=std)


# --- datasets ----------------------------------------------------------------------------------

def digits(*, val_fraction: float = 0.1, seed: int = 0, augment: bool = True,
           image_size: int | None = None) -> DataSplits:
    """scikit-learn's 8x8 digits: 1x8x8 images (``image_size`` resizes), 10 classes.

    Raises:
        InputError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise InputError("the digits dataset needs scikit-learn: pip install "
                         "'fxprune[data]' (or pip install scikit-learn)") from e
    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    images = _resize(images, image_size)
    rest, test = split_indices(len(labels), 0.2, _TEST_SEED)
    return _tensor_splits("digits", images[rest], labels[rest], images[test], labels[test],
                          val_fraction=val_fraction, seed=seed, augment=augment,
                          pad=max(1, images.shape[-1] // 8), flip=False)


def fashion_mnist(data_dir: str | Path | None = None, *, val_fraction: float = 0.1,
                  seed: int = 0, augment: bool = True,
                  image_size: int | None = None) -> DataSplits:
    """Fashion-MNIST (60k train / 10k test, 1x28x28, 10 classes) from its IDX files.

    See :func:`find_fashion_mnist` for where the files are looked up.
    """
    d = find_fashion_mnist(data_dir)
    train_x, train_y = _read_pair(d, "train")
    test_x, test_y = _read_pair(d, "t10k")
    if image_size is not None:
        train_x, test_x = _resize(train_x, image_size), _resize(test_x, image_size)
    return _tensor_splits("fashion-mnist", train_x, train_y, test_x, test_y,
                          val_fraction=val_fraction, seed=seed, augment=augment,
                          pad=max(1, train_x.shape[-1] // 14), flip=True)


def image_folder(root: str | Path, *, val_fraction: float = 0.1, seed: int = 0,
                 augment: bool = True, image_size: int | None = None) -> DataSplits:
    """Any torchvision ``ImageFolder`` tree (RGB, resized to ``image_size``, default 224).

    ``root/train`` + ``root/val`` (or ``root/test``) when present, else ``root`` is split
    80/20 into train and test with a fixed seed. ImageNet normalization; training uses
    ``RandomResizedCrop`` and horizontal flips, evaluation a resize and a center crop.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--data {root}: not a directory (and not 'digits' or 'fashion-mnist')")
    size = image_size or 224
    norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(_IMAGENET_MEAN), list(_IMAGENET_STD))]
    t_eval = v2.Compose([v2.Resize(round(size / 0.875)), v2.CenterCrop(size), *norm])
    t_train = (v2.Compose([v2.RandomResizedCrop(size, scale=(0.35, 1.0)),
                           v2.RandomHorizontalFlip(), *norm]) if augment else t_eval)
    train_root = root / "train" if (root / "train").is_dir() else root
    test_root = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    try:
        full_train, full_eval = (ImageFolder(str(train_root), transform=t)
                                 for t in (t_train, t_eval))
        test_ds = ImageFolder(str(test_root), transform=t_eval) if test_root else None
    except (FileNotFoundError, OSError) as e:
        raise InputError(f"{root} is not an ImageFolder tree (one folder of images per "
                         f"class): {e}") from e
    idx = torch.arange(len(full_train))
    if test_ds is None:
        rest, test_idx = split_indices(len(idx), 0.2, _TEST_SEED)
        test_ds = Subset(full_eval, test_idx.tolist())
        idx = rest
    elif test_ds.class_to_idx != full_train.class_to_idx:
        raise InputError(f"{test_root} has classes {sorted(test_ds.class_to_idx)} but "
                         f"{train_root} has {sorted(full_train.class_to_idx)}")
    keep, val = split_indices(len(idx), val_fraction, seed)
    return DataSplits(
        name=root.name, train=Subset(full_train, idx[keep].tolist()),
        val=Subset(full_eval, idx[val].tolist()), test=test_ds,
        num_classes=len(full_train.classes), in_chans=3, image_size=(size, size),
        mean=_IMAGENET_MEAN, std=_IMAGENET_STD)


def load_data(name: str, *, data_dir: str | Path | None = None, val_fraction: float = 0.1,
              seed: int = 0, augment: bool = True, image_size: int | None = None
              ) -> DataSplits:
    """``"digits"``, ``"fashion-mnist"`` (``data_dir`` overrides where) or an ImageFolder DIR."""
    kw: dict[str, Any] = {"val_fraction": val_fraction, "seed": seed, "augment": augment,
                          "image_size": image_size}
    key = name.lower().replace("_", "-")
    if key == "digits":
        return digits(**kw)
    if key in ("fashion-mnist", "fashionmnist"):
        return fashion_mnist(data_dir, **kw)
    if Path(name).is_dir():
        return image_folder(name, **kw)
    raise InputError(f"unknown dataset {name!r}: use digits, fashion-mnist or an ImageFolder "
                     "directory")


def make_loaders(splits: DataSplits, batch_size: int, *, eval_batch_size: int | None = None,
                 num_workers: int = 0, batched: bool = True
                 ) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train (shuffled; ``fit`` re-shards it with its own seeded sampler), val and test loaders.

    ``batch_size`` is the global batch: under torchrun :func:`fxprune.train.fit` gives each
    rank ``batch_size / world_size``. ``batched`` (default): in-memory datasets (digits,
    Fashion-MNIST) are augmented a whole batch at a time (:mod:`fxprune.train.batched`, the
    same augmentation as the per-item v2 transforms, several times faster on CPU);
    ``batched=False`` uses the per-item transforms.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    from fxprune.train.batched import BatchedView, collate

    def view(ds: Any) -> Any:
        if batched and isinstance(ds, TensorImageDataset) and ds.batch_transform is not None:
            return BatchedView(ds.images, ds.labels, ds.batch_transform)
        return ds

    eb = eval_batch_size or max(batch_size, 256)
    kw: dict[str, Any] = {"num_workers": num_workers, "persistent_workers": num_workers > 0,
                          "collate_fn": collate}
    return (DataLoader(view(splits.train), batch_size, shuffle=True, drop_last=True, **kw),
            DataLoader(view(splits.val), eb, shuffle=False, **kw),
            DataLoader(view(splits.test), eb, shuffle=False, **kw))
