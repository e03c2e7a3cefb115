"""``fxprune train``'s MODEL: built for the data's classes and input channels, and the
``--pretrained`` weights loaded into it."""

from __future__ import annotations

__all__ = ["build_model", "load_pretrained"]

from pathlib import Path

import torch
import torch.nn as nn

from fxprune.cli.common import FILE_SUFFIXES, load_model
from fxprune.errors import InputError


def build_model(spec: str, num_classes: int, in_chans: int) -> nn.Module:
    """MODEL sized for the data: ``cifar:NAME`` / fxprune.models and timm names get
    ``num_classes`` and ``in_chans``; torchvision models get ``num_classes`` (3-channel data
    only); factories and files are used as they are (checked by the caller)."""
    from fxprune import models

    name = spec[6:] if spec.startswith("cifar:") else spec
    if spec.startswith("cifar:") or (":" not in spec and name in models.list_models()):
        if name not in models.list_models():
            raise InputError(f"unknown fxprune.models model '{name}'. Available: "
                             f"{', '.join(models.list_models())}")
        return models.create_model(name, num_classes=num_classes, in_chans=in_chans)
    is_file = spec.lower().endswith(FILE_SUFFIXES) or Path(spec).is_file()
    if is_file or (":" in spec and not spec.startswith(("tv:", "timm:"))):
        return load_model(spec)[0]
    import timm
    import torchvision

    bare = spec.split(":", 1)[1] if spec.startswith(("tv:", "timm:")) else spec
    if not spec.startswith("tv:") and timm.is_model(bare):
        return timm.create_model(bare, pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans)
    if bare in torchvision.models.list_models():
        if in_chans != 3:
            raise InputError(f"torchvision's {bare} takes 3-channel images but the data has "
                             f"{in_chans}: use a cifar: or timm model (they take in_chans)")
        return torchvision.models.get_model(bare, weights=None, num_classes=num_classes)
    return load_model(spec)[0]  # raises InputError with suggestions


def load_pretrained(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> None:
    """Load weights into ``model``: a state_dict, a dict holding one under ``"model"`` or
    ``"state_dict"`` (e.g. a ``fit`` checkpoint; DDP's ``module.`` prefix is stripped), read
    as plain data (``weights_only=True``: no code from the file runs), or, only with
    ``trust_pickle=True`` (``--trust-pickle``), a whole pickled module.

    Raises:
        InputError: unreadable file or keys/shapes that do not match the model.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--pretrained: no such file {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as plain:  # noqa: BLE001 - maybe a pickled module
        if not trust_pickle:
            raise InputError(
                f"--pretrained: {path} is not plain data (a state_dict or checkpoint of "
                f"tensors): {type(plain).__name__}. Unpickling it could run any code the file "
                "holds; fxprune does that only with --trust-pickle (use it for files you "
                "trust), or save the weights with torch.save(model.state_dict(), path)."
            ) from plain
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - reported as bad input
            raise InputError(f"--pretrained: cannot read {path}: {e}") from e
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"--pretrained: {path} holds no state_dict (a dict of tensors, or one "
                         "under 'model' / 'state_dict')")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise InputError(f"--pretrained: {path} does not fit the model: "
                         f"{str(e).splitlines()[0]} (same MODEL, --data and classes?)") from e
