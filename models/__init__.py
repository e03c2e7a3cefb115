"""CIFAR reference networks used by the filter-pruning literature (FPGM, SFP, CLR-RNF, SWP).

All models take ``3x32x32`` inputs by default and accept ``num_classes`` (default 10) and
``in_chans`` (default 3, e.g. 1 for grayscale data). Use
:func:`create_model` to build one by name and :func:`list_models` to see the names.
"""

from __future__ import annotations

__all__ = [
    "register_model",
    "list_models",
    "create_model",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet20_b",
    "resnet56_b",
    "resnet110_b",
    "vgg16_bn",
    "vgg19_bn",
    "mobilenetv2",
]

from . import mobilenetv2_cifar, resnet_cifar, vgg_cifar  # noqa: F401, TID251 (imported to register models)
from ._registry import create_model, list_models, register_model
from .mobilenetv2_cifar import mobilenetv2
from .resnet_cifar import (
    resnet20,
    resnet20_b,
    resnet32,
    resnet44,
    resnet56,
    resnet56_b,
    resnet110,
    resnet110_b,
)
from .vgg_cifar import vgg16_bn, vgg19_bn
