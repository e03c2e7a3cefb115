"""CIFAR ResNets of He et al. (2016), as used by FPGM, SFP, CLR-RNF and SWP.

Three stages of 16/32/64 channels, ``n`` BasicBlocks per stage, depth ``6n + 2``.
Two shortcut options are provided:

* ``"A"``: parameter-free. A stride-2 subsample ``x[:, :, ::2, ::2]`` followed by
  zero-padding of the channel dimension, with the zero channels appended *after*
  the real ones. This is the FPGM/SFP convention.
* ``"B"``: a 1x1 convolution + BatchNorm projection.

All models are traceable with :func:`torch.fx.symbolic_trace`.
"""

from __future__ import annotations

__all__ = [
    "BasicBlock",
    "PadShortcut",
    "ResNetCifar",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet20_b",
    "resnet56_b",
    "resnet110_b",
]

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.models._registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling plus zero channel padding.

    The number of padded channels is a Python ``int`` fixed at construction time, so
    the module has no data-dependent control flow and traces cleanly with torch.fx.

    Args:
        pad_channels: Number of zero channels appended after the input channels.
        stride: Spatial subsampling factor (1 or 2).
    """

    def __init__(self, pad_channels: int, stride: int) -> None:
        super().__init__()
        self.pad_channels = int(pad_channels)
        self.stride = int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample ``x`` spatially and append zero channels.

        Args:
            x: Input of shape ``(N, C, H, W)``.

        Returns:
            Tensor of shape ``(N, C + pad_channels, H // stride, W // stride)``
            (rounded up for odd sizes).
        """
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_channels > 0:
            # F.pad pads dims last-to-first: (W_l, W_r, H_t, H_b, C_front, C_back).
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))
        return x

    def extra_repr(self) -> str:
        """Return the constructor arguments for ``repr``."""
        return f"pad_channels={self.pad_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution.
        option: Shortcut option, ``"A"`` (zero padding) or ``"B"`` (1x1 projection).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

        self.shortcut: nn.Module
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Sequential()
        elif option == "A":
            if planes < in_planes:
                raise ValueError("Option-A shortcut cannot reduce the channel count.")
            self.shortcut = PadShortcut(planes - in_planes, stride)
        elif option == "B":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            raise ValueError(f"Unknown shortcut option '{option}'; expected 'A' or 'B'.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block.

        Args:
            x: Input of shape ``(N, in_planes, H, W)``.

        Returns:
            Output of shape ``(N, planes, H / stride, W / stride)``.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNetCifar(nn.Module):
    """CIFAR ResNet with three stages of 16/32/64 channels.

    Args:
        depth: Network depth; must satisfy ``(depth - 2) % 6 == 0``.
        num_classes: Number of output classes.
        option: Shortcut option, ``"A"`` or ``"B"``.
        in_chans: Input image channels (3 for RGB, 1 for grayscale).
    """

    def __init__(self, depth: int, num_classes: int = 10, option: str = "A",
                 in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}.")
        n = (depth - 2) // 6
        self.depth = depth
        self.option = option
        self.in_planes = 16

        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """Build one stage of ``blocks`` BasicBlocks.

        Args:
            planes: Output channels of the stage.
            blocks: Number of blocks.
            stride: Stride of the first block.

        Returns:
            The stage as an ``nn.Sequential``.
        """
        layers: list[nn.Module] = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, self.option))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute class logits.

        Args:
            x: Images of shape ``(N, in_chans, 32, 32)``.

        Returns:
            Logits of shape ``(N, num_classes)``.
        """
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


@register_model
def resnet20(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    """ResNet-20 (He et al. 2016, CIFAR, option-A shortcuts); 0.27M parameters."""
    return ResNetCifar(20, num_classes, option="A", in_chans=in_chans)


@register_model
def resnet32(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    """ResNet-32 (He et al. 2016, CIFAR, option-A shortcuts); 0.46M parameters."""
    return ResNetCifar(32, num_classes, option="A", in_chans=in_chans)


@register_model
def resnet44(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    """ResNet-44 (He et al. 2016, CIFAR, option-A shortcuts); 0.66M parameters."""
    return ResNetCifar(44, num_classes, option="A", in_chans=in_chans)


@register_model
def resnet56(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    """ResNet-56 (He et al. 2016, CIFAR, option-A shortcuts); 0.85M parameters."""
    return ResNetCifar(56, num_classes, option="A", in_chans=in_chans)


@register_model
def resnet110(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    """ResNet-110 (He et al. 2016, CIFAR, option-A shortcuts); 1.73M parameters."""
    return ResNetCifar(110, num_classes, option="A", in_chans=in_chans)


@register_model
def resnet20_b(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    """ResNet-20 (He et al. 2016, CIFAR, option-B 1x1 projections); 0.27M parameters."""
    return ResNetCifar(20, num_classes, option="B", in_chans=in_chans)


@register_model
def resnet56_b(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    """ResNet-56 (He et al. 2016, CIFAR, option-B 1x1 projections); 0.86M parameters."""
    return ResNetCifar(56, num_classes, option="B", in_chans=in_chans)


@register_model
def resnet110_b(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    """ResNet-110 (He et al. 2016, CIFAR, option-B 1x1 projections); 1.73M parameters."""
    return ResNetCifar(110, num_classes, option="B", in_chans=in_chans)
