"""MobileNetV2 (Sandler et al. 2018) adapted to CIFAR.

Follows kuangliu's pytorch-cifar variant: a stride-1 3x3 stem with 32 channels and
stride 1 in the second inverted-residual stage (``(6, 24, 2, 1)``), so the final
feature map is 4x4 for a 32x32 input.
"""

from __future__ import annotations

__all__ = ["InvertedResidual", "MobileNetV2Cifar", "MOBILENETV2_CIFAR_CFG", "mobilenetv2"]

import torch
from torch import nn

from fxprune.models._registry import register_model

#: Inverted-residual settings ``(expansion t, out channels c, repeats n, stride s)``.
MOBILENETV2_CIFAR_CFG: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 1 here (vs 2 for ImageNet) for 32x32 inputs
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """Expand 1x1 - depthwise 3x3 - project 1x1, with an optional residual.

    The expansion convolution is omitted when ``expand_ratio == 1``. BatchNorm follows
    every convolution; ReLU6 follows the expansion and depthwise convolutions. The
    residual add is used when ``stride == 1`` and ``in_planes == out_planes``.

    Args:
        in_planes: Input channels.
        out_planes: Output channels.
        stride: Stride of the depthwise convolution.
        expand_ratio: Hidden-width multiplier ``t``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_planes * expand_ratio
        self.use_residual = stride == 1 and in_planes == out_planes
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [
                nn.Conv2d(in_planes, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Input of shape ``(N, in_planes, H, W)``.

        Returns:
            Output of shape ``(N, out_planes, H / stride, W / stride)``.
        """
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for 32x32 inputs.

    Args:
        num_classes: Number of output classes.
        cfg: Inverted-residual settings ``(t, c, n, s)``; defaults to
            :data:`MOBILENETV2_CIFAR_CFG`.
        in_chans: Input image channels (3 for RGB, 1 for grayscale).
    """

    def __init__(
        self, num_classes: int = 10, cfg: list[tuple[int, int, int, int]] | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        cfg = MOBILENETV2_CIFAR_CFG if cfg is None else cfg
        self.conv1 = nn.Conv2d(in_chans, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU6(inplace=True)

        blocks: list[nn.Module] = []
        in_planes = 32
        for t, c, n, s in cfg:
            for i in range(n):
                blocks.append(InvertedResidual(in_planes, c, s if i == 0 else 1, t))
                in_planes = c
        self.layers = nn.Sequential(*blocks)

        self.conv2 = nn.Conv2d(in_planes, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.relu2 = nn.ReLU6(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute class logits.

        Args:
            x: Images of shape ``(N, in_chans, 32, 32)``.

        Returns:
            Logits of shape ``(N, num_classes)``.
        """
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


@register_model
def mobilenetv2(num_classes: int = 10, in_chans: int = 3) -> MobileNetV2Cifar:
    """MobileNetV2 for CIFAR (Sandler et al. 2018, kuangliu variant); 2.24M parameters."""
    return MobileNetV2Cifar(num_classes, in_chans=in_chans)
