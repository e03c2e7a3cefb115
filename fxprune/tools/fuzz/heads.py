"""More blocks of the random CNNs: gates and attention (SE, ECA, spatial, selective kernel),
star/shared/layer-scale, channels-last and token MLPs, shuffles, pooling, hourglass, heads, and
the whole :class:`FuzzNet`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxprune.tools.fuzz.blocks import HW, Act, ConvBNAct


class SE(nn.Module):
    """``x * sigmoid(conv(act(conv(mean(x, (2, 3), keepdim=True)))))``; ``pool="linear"``:
    the legacy form ``fc2(relu(fc1(x.mean((2, 3))))).view(B, C, 1, 1)`` with Linear layers."""

    def __init__(self, c: int, rd: int, pool: str, gate: str):
        super().__init__()
        lin = pool.startswith("linear")
        self.reduce: nn.Module = nn.Linear(c, rd) if lin else nn.Conv2d(c, rd, 1)
        self.act = nn.ReLU()
        self.expand: nn.Module = nn.Linear(rd, c) if lin else nn.Conv2d(rd, c, 1)
        self.pool = pool
        self.gate = gate
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "adaptive":
            s = F.adaptive_avg_pool2d(x, 1)
        elif self.pool == "linear":
            s = x.mean((2, 3))
        elif self.pool == "linear_lit":
            s = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        else:
            s = x.mean((2, 3), keepdim=True)
        s = self.expand(self.act(self.reduce(s)))
        if self.pool == "linear":
            s = s.view(x.size(0), -1, 1, 1)
        elif self.pool == "linear_lit":
            s = s.view(x.size(0), self.c, 1, 1)
        if self.gate == "hardsigmoid":
            return x * F.hardsigmoid(s)
        if self.gate == "expand_as":
            return x * torch.sigmoid(s).expand_as(x)
        if self.gate == "mul_":
            return x.mul(torch.sigmoid(s))
        return x * torch.sigmoid(s)


class ECA(nn.Module):
    """ECA: a Conv1d over the *channel axis* of the pooled map (mixes neighbouring channels)."""

    def __init__(self, k: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y)
        return x * y.view(x.shape[0], -1, 1, 1).sigmoid()


class SpatialGate(nn.Module):
    """``x * sigmoid(conv_to_1(x))``, or CBAM's ``conv(cat[mean_c(x), max_c(x)])``."""

    def __init__(self, c: int, k: int, cbam: bool):
        super().__init__()
        self.cbam = cbam
        self.conv = nn.Conv2d(2 if cbam else c, 1, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cbam:
            s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
            return x * torch.sigmoid(self.conv(s))
        return x * self.conv(x).sigmoid()


class SelectiveKernel(nn.Module):
    """SKNet attention: stack branches, softmax over the path axis, weighted sum."""

    def __init__(self, c: int, rd: int, n: int, literal: bool):
        super().__init__()
        self.paths = nn.ModuleList(ConvBNAct(c, c, 3, 1, 1, True, "relu", False)
                                   for _ in range(n))
        self.fc1 = nn.Conv2d(c, rd, 1)
        self.fc2 = nn.Conv2d(rd, c * n, 1)
        self.n, self.c, self.literal = n, c, literal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([p(x) for p in self.paths], dim=1)  # B, n, C, H, W
        s = feats.sum(1).mean((2, 3), keepdim=True)
        a = self.fc2(F.relu(self.fc1(s)))
        c = self.c if self.literal else -1
        a = a.view(x.shape[0], self.n, c, 1, 1).softmax(dim=1)
        return (feats * a).sum(dim=1)


class Star(nn.Module):
    """StarNet ``act(f1(x)) * f2(x)`` (or ``torch.maximum``) then a projection."""

    def __init__(self, cin: int, hidden: int, cout: int, act: str, how: str):
        super().__init__()
        self.f1 = nn.Conv2d(cin, hidden, 1)
        self.f2 = nn.Conv2d(cin, hidden, 1)
        self.act = Act(act)
        self.g = nn.Conv2d(hidden, cout, 1)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "max":
            return self.g(torch.maximum(self.act(self.f1(x)), self.f2(x)))
        return self.g(self.act(self.f1(x)) * self.f2(x))


class Shared(nn.Module):
    """One conv applied twice (shared weights): ``conv(act(conv(x)))`` or ``conv(x) +
    conv(pool(x))`` style reuse couples the calls' channels."""

    def __init__(self, c: int, k: int, how: str):
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(c)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "twice_parallel":
            return self.conv(x) + self.conv(self.bn(x))
        return self.conv(F.relu(self.bn(self.conv(x))))


class LayerScale(nn.Module):
    """``x * gamma`` (ConvNeXt/MetaFormer layer scale): a [C, 1, 1] parameter, a [C] parameter
    reshaped or indexed with None, or a [1, C, 1, 1] buffer."""

    def __init__(self, c: int, how: str):
        super().__init__()
        self.how = how
        g = torch.rand(c) + 0.5
        if how == "buffer":
            self.register_buffer("gamma", g.view(1, c, 1, 1))
        elif how in ("reshape", "index"):
            self.gamma = nn.Parameter(g)
        else:
            self.gamma = nn.Parameter(g.view(c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "reshape":
            return x.mul(self.gamma.reshape(1, -1, 1, 1))
        if self.how == "index":
            return x * self.gamma[:, None, None]
        return x * self.gamma


class ChannelsLastMLP(nn.Module):
    """ConvNeXt-style MLP: permute to NHWC, Linear → act → Linear, permute back."""

    def __init__(self, c: int, hidden: int, cout: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.act = Act(act)
        self.fc2 = nn.Linear(hidden, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(x)))
        return x.permute(0, 3, 1, 2).contiguous()


class TokenMLP(nn.Module):
    """MobileViT/transformer style: ``x.flatten(2).transpose(1, 2)`` → Linear → back."""

    def __init__(self, c: int, cout: int, hw: HW):
        super().__init__()
        self.fc = nn.Linear(c, cout)
        self.shape = (cout, hw[0], hw[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.fc(x.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(x.shape[0], self.shape[0], self.shape[1],
                                         self.shape[2])


class Shuffle(nn.Module):
    """ShuffleNet channel shuffle, with sizes read from ``x.shape`` or literal ones."""

    def __init__(self, groups: int, literal: tuple[int, int, int] | None = None):
        super().__init__()
        self.groups = groups
        self.literal = literal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.literal is not None:
            c, h, w = self.literal
            y = x.reshape(x.size(0), self.groups, c // self.groups, h, w)
            return torch.transpose(y, 1, 2).reshape(x.size(0), c, h, w)
        b, c, h, w = x.shape
        x = x.contiguous().view(b, self.groups, c // self.groups, h, w)
        return x.transpose(1, 2).reshape(b, c, h, w)


class SpaceToDepth(nn.Module):
    """YOLO "Focus": cat of the four strided sub-images (4x the channels, half the size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                          x[..., 1::2, 1::2]], 1)


class NoRule(nn.Module):
    """Ops without a channel rule (roll/flip over channels): fxprune must freeze them."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "flip":
            return torch.flip(x, [1])
        return torch.roll(x, 1, 1)


class Pool(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.m = nn.MaxPool2d(2) if kind == "max" else nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "f_max":
            return F.max_pool2d(x, 3, 2, 1)
        return self.m(x)


class Up(nn.Module):
    def __init__(self, kind: str, c: int):
        super().__init__()
        self.kind = kind
        self.m: nn.Module = nn.Upsample(scale_factor=2, mode="nearest")
        if kind == "convT":
            self.m = nn.ConvTranspose2d(c, c, 2, stride=2)
        elif kind == "convT_dw":
            self.m = nn.ConvTranspose2d(c, c, 2, stride=2, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "bilinear":
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.m(x)


class Hourglass(nn.Module):
    """``x + upsample(body(pool(x)))`` back to x's size (an FPN/U-Net skip)."""

    def __init__(self, body: nn.Module, size: HW):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.body = body
        self.up = nn.Upsample(size=size, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.body(self.pool(x)))


class Head(nn.Module):
    def __init__(self, kind: str, c: int, hw: HW, n: int, pool_k: int, hidden: int,
                 flatten: str, extra_out: bool):
        super().__init__()
        self.kind, self.flatten_kind, self.extra_out = kind, flatten, extra_out
        self.pool_k = min(pool_k, hw[0], hw[1])
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.2)
        if kind == "conv":
            self.fc: nn.Module = nn.Conv2d(c, n, 1)
        elif kind == "gap":
            self.fc = nn.Linear(c, n)
        else:  # "mlp": adaptive pool to k x k, flatten, Linear → ReLU → Linear
            k = self.pool_k
            self.fc = nn.Sequential(nn.Linear(c * k * k, hidden), nn.ReLU(), nn.Linear(hidden, n))

    def _flatten(self, x: torch.Tensor, one: bool = False) -> torch.Tensor:
        if self.flatten_kind == "module":
            return self.flat(x)
        if self.flatten_kind == "view":
            return x.contiguous().view(x.size(0), -1)
        if self.flatten_kind == "reshape":
            return x.reshape(x.shape[0], -1)
        if self.flatten_kind == "method":
            return x.flatten(1)
        if self.flatten_kind == "squeeze" and one:  # [B, C, 1, 1] only
            return x.squeeze(-1).squeeze(-1)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> Any:
        if self.kind == "conv":
            y = self.fc(x)
        elif self.kind == "gap":
            if self.flatten_kind == "mean":
                y = self.fc(self.drop(x.mean((2, 3))))
            else:
                y = self.fc(self._flatten(F.adaptive_avg_pool2d(x, 1), one=True))
        else:
            y = self.fc(self._flatten(F.adaptive_avg_pool2d(x, self.pool_k)))
        if self.extra_out:
            return y, x
        return y


class FuzzNet(nn.Module):
    def __init__(self, stem: nn.Module, body: nn.Module, head: nn.Module):
        super().__init__()
        self.stem = stem
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> Any:
        return self.head(self.body(self.stem(x)))
