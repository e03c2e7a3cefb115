"""CIFAR VGG with BatchNorm, as in network slimming and FPGM.

The convolutional trunk follows Simonyan & Zisserman (2015) with BatchNorm after
every convolution; the classifier is the compact CIFAR head
``Linear(512, 512)-BN1d-ReLU-Linear(512, num_classes)``.
"""

from __future__ import annotations

__all__ = ["VGGCifar", "VGG_CFGS", "vgg16_bn", "vgg19_bn"]

import torch
from torch import nn

from fxprune.models._registry import register_model

VGG_CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}  # fmt: skip


class VGGCifar(nn.Module):
    """VGG-BN for 32x32 inputs.

    Args:
        cfg: Layer configuration; ints are 3x3 conv widths, ``"M"`` is 2x2 max-pooling.
        num_classes: Number of output classes.
        in_chans: Input image channels (3 for RGB, 1 for grayscale).
    """

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.features = self._make_features(cfg, in_chans)
        last = [int(c) for c in cfg if c != "M"][-1]
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(last, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_features(cfg: list[int | str], in_chans: int = 3) -> nn.Sequential:
        """Build the conv-BN-ReLU / max-pool trunk.

        Args:
            cfg: Layer configuration.
            in_chans: Input image channels.

        Returns:
            The trunk as an ``nn.Sequential``.
        """
        layers: list[nn.Module] = []
        in_channels = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                v = int(v)
                layers += [
                    nn.Conv2d(in_channels, v, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                in_channels = v
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute class logits.

        Args:
            x: Images of shape ``(N, in_chans, 32, 32)``.

        Returns:
            Logits of shape ``(N, num_classes)``.
        """
        return self.classifier(self.features(x))


@register_model
def vgg16_bn(num_classes: int = 10, in_chans: int = 3) -> VGGCifar:
    """VGG-16-BN for CIFAR (network slimming / FPGM, 512-512 head); 15.0M parameters."""
    return VGGCifar(VGG_CFGS["vgg16"], num_classes, in_chans)


@register_model
def vgg19_bn(num_classes: int = 10, in_chans: int = 3) -> VGGCifar:
    """VGG-19-BN for CIFAR (network slimming / FPGM, 512-512 head); 20.3M parameters."""
    return VGGCifar(VGG_CFGS["vgg19"], num_classes, in_chans)
