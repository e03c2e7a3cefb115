"""Tiny models, synthetic batches and a training loop shared by the fxprune.train tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxprune.models import create_model

X8 = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))


class TinyVGG(nn.Module):
    """conv-BN-ReLU x3 with max-pooling, then a BN1d MLP head: a VGG in miniature."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 16), classes: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=i == 1), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 12),
                                  nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and betas, so that BN(0) constants matter."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model


def make_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyVGG() if name == "vgg" else create_model(name, num_classes=4)
    return randomize_bn(model, seed)


def batches(n: int = 3, size: int = 8, seed: int = 0, classes: int = 4) -> list[tuple[Any, Any]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, classes, (size,),
                                                                    generator=g))
            for _ in range(n)]


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: list, pruner: Any = None,
                after_step: Any = None, scaler: Any = None) -> None:
    model.train()
    for x, y in data:
        opt.zero_grad()
        if scaler is None:
            F.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if after_step is not None:
            after_step()
    if pruner is not None:
        pruner.epoch_end()
