"""Whole models at ratio 0.5: oracle, untouched original, smaller, same output shape, save/load.

Models whose pruned channels pass through LayerNorm/GroupNorm over channels (or weight
standardization) are checked as ``approximate``: removing a channel changes those statistics, so
the zero-channel oracle cannot be exact there. Everything else must be exact.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from fxprune.models import create_model, list_models
from fxprune.testing import prune_and_check

APPROXIMATE = {  # model -> why the oracle is approximate
    "test_convnext": "LayerNorm over channels",
    "test_convnext2": "LayerNorm over channels",
    "test_convnext3": "LayerNorm over channels",
    "test_efficientnet_gn": "GroupNorm over channels",
    "test_efficientnet_ln": "LayerNorm over channels",
    "test_mambaout": "LayerNorm over channels",
    "test_nfnet": "weight standardization over input channels",
    "test_coatnet": "LayerNorm over channels",
    "test_maxvit": "LayerNorm over the attention blocks' embed dim",
    "test_vit": "LayerNorm over the embed dim",
}

TIMM_TEST_MODELS = ["test_resnet", "test_efficientnet", "test_efficientnet_evos", "test_byobnet",
                    "test_convnext", "test_convnext2", "test_convnext3", "test_efficientnet_gn",
                    "test_efficientnet_ln", "test_mambaout", "test_nfnet", "test_coatnet",
                    "test_maxvit", "test_vit"]


@pytest.mark.parametrize("name", list_models())
def test_reference_models(name):
    prune_and_check(create_model(name), torch.randn(2, 3, 32, 32), 0.5)


@pytest.mark.parametrize("name", TIMM_TEST_MODELS)
def test_timm_test_models(name):
    model = timm.create_model(name)
    size = model.pretrained_cfg["input_size"]
    expect = "approximate" if name in APPROXIMATE else "exact"
    prune_and_check(model, torch.randn(1, *size), 0.5, expect=expect)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121"])
def test_torchvision(name):
    model = getattr(torchvision.models, name)()
    prune_and_check(model, torch.randn(1, 3, 64, 64), 0.5)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "mobilenetv3_small_100",
                                  "regnety_002", "densenet121", "dla34", "ghostnet_100",
                                  "cspresnet50", "res2net50_14w_8s", "sknet", "rexnet_100"])
@pytest.mark.slow
def test_timm_families(name):
    name = {"sknet": "skresnet18"}.get(name, name)
    model = timm.create_model(name)
    prune_and_check(model, torch.randn(1, 3, 96, 96), 0.5)
