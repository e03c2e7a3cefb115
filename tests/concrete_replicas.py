"""Small replicas of the patterns torch.fx's symbolic tracer cannot trace, written here so CI
tests them without ultralytics or transformers: a C2f block (``list(x.chunk(2, 1))``), layers
routed by from-indices with a ``Concat`` (ultralytics' ``DetectionModel._predict_once``), a
detection head whose anchors follow the feature-map size and are cached on the module, and a
Hugging Face-style model (config branches, ``None`` arguments, a ``ModelOutput`` dataclass).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn


class Conv(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: Any) -> Any:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x: Any) -> Any:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """ultralytics' C2f: ``list(self.cv1(x).chunk(2, 1))``, extended in a generator."""

    def __init__(self, c1: int, c2: int, n: int = 1):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x: Any) -> Any:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.head = Conv(3, 16, 3, 2), C2f(16, 32, 2), nn.Conv2d(32, 10, 1)

    def forward(self, x: Any) -> Any:
        return self.head(self.block(self.stem(x)))


class Concat(nn.Module):
    def __init__(self, d: int = 1):
        super().__init__()
        self.d = d

    def forward(self, x: Any) -> Any:
        return torch.cat(x, self.d)


def make_anchors(feats: list, strides: Any) -> tuple[Any, Any]:
    """Anchor points and strides from the feature maps' sizes (ultralytics' make_anchors)."""
    points, stride_list = [], []
    for i, stride in enumerate(strides):
        _, _, h, w = feats[i].shape
        sx = torch.arange(w, dtype=feats[i].dtype) + 0.5
        sy = torch.arange(h, dtype=feats[i].dtype) + 0.5
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(stride)))
    return torch.cat(points), torch.cat(stride_list)


class Detect(nn.Module):
    """A detection head whose anchors depend on the feature-map size, cached on the module
    (``self.shape``, ``self.anchors``) as ultralytics' Detect does."""

    def __init__(self, nc: int, ch: tuple[int, ...], hidden: int = 32):
        super().__init__()
        self.nc, self.no = nc, nc + 4
        self.stride = torch.tensor([0.125, 0.25])
        self.cv = nn.ModuleList(nn.Sequential(Conv(c, hidden, 3), nn.Conv2d(hidden, self.no, 1))
                                for c in ch)
        self.shape = None

    def forward(self, x: list) -> Any:
        x = [self.cv[i](xi) for i, xi in enumerate(x)]
        shape = x[0].shape
        if self.shape != shape:
            self.anchors, self.strides = (t.transpose(0, 1) for t in make_anchors(x, self.stride))
            self.shape = shape
        out = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
        box, cls = out.split((4, self.nc), 1)
        anchors = self.anchors.unsqueeze(0).repeat(1, 2, 1) * self.strides
        return torch.cat((box + anchors, cls.sigmoid()), 1), x


class Yolo(nn.Module):
    """Layers routed by from-indices (``m.f``), outputs saved by index (``self.save``), as in
    ultralytics' ``DetectionModel._predict_once``."""

    def __init__(self) -> None:
        super().__init__()
        layers = [Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32), Conv(32, 64, 3, 2),
                  C2f(64, 64), nn.Upsample(scale_factor=2.0), Concat(1), C2f(96, 32),
                  Detect(3, (32, 64))]
        froms: list[Any] = [-1, -1, -1, -1, -1, -1, [-1, 2], -1, [7, 4]]
        for i, (m, f) in enumerate(zip(layers, froms)):
            m.i, m.f = i, f
        self.model = nn.Sequential(*layers)
        self.save = {2, 4, 7}

    def forward(self, x: Any) -> Any:
        y: list[Any] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


class ModelOutput(OrderedDict):
    """Hugging Face's ModelOutput, reduced: a dataclass that is also a dict."""

    def __post_init__(self) -> None:
        for f in self.__dataclass_fields__:  # type: ignore[attr-defined]
            v = getattr(self, f)
            if v is not None:
                self[f] = v

    def __getitem__(self, k: Any) -> Any:
        return super().__getitem__(k) if isinstance(k, str) else tuple(self.values())[k]


@dataclass
class ClassifierOutput(ModelOutput):
    loss: Any = None
    logits: Any = None
    hidden_states: Any = None


class Config:
    num_channels, hidden, num_labels = 3, 32, 5
    use_layer_scale, output_hidden_states = True, False


class HFLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv2d(cfg.hidden, cfg.hidden * 2, 3, padding=1)
        self.act = nn.GELU()
        self.proj = nn.Conv2d(cfg.hidden * 2, cfg.hidden, 1)
        self.scale = nn.Parameter(torch.full((cfg.hidden,), 0.5)) if cfg.use_layer_scale \
            else None

    def forward(self, x: Any) -> Any:
        h = self.proj(self.act(self.conv(x)))
        if self.cfg.use_layer_scale:
            h = h * self.scale[:, None, None]
        return x + h


class HFModel(nn.Module):
    """A Hugging Face-style classifier: branches on its config and on ``None`` arguments,
    checks the input's channels, and returns a ``ModelOutput`` dataclass."""

    def __init__(self, cfg: Config | None = None):
        super().__init__()
        self.config = cfg = cfg or Config()
        self.embed = nn.Conv2d(cfg.num_channels, cfg.hidden, 4, 4)
        self.layers = nn.ModuleList(HFLayer(cfg) for _ in range(2))
        self.classifier = nn.Linear(cfg.hidden, cfg.num_labels)

    def forward(self, pixel_values: Any, labels: Any = None, output_hidden_states: Any = None,
                return_dict: Any = None) -> Any:
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = True if return_dict is None else return_dict
        _batch, channels, _h, _w = pixel_values.shape
        if channels != self.config.num_channels:
            raise ValueError("channel dimension does not match the configuration")
        x = self.embed(pixel_values)
        hidden = (x,) if output_hidden_states else None
        for layer in self.layers:
            x = layer(x)
            if output_hidden_states:
                hidden = hidden + (x,)
        logits = self.classifier(x.mean((2, 3)))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        if not return_dict:
            return (logits,) if loss is None else (loss, logits)
        return ClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)


class Gated(nn.Module):
    """Control flow on tensor values: must become an opaque leaf, never specialised."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Any) -> Any:
        y = self.conv(x)
        if y.mean() > 0:  # decided by the input's values
            return y.relu()
        return -y


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv(3, 16, 3)
        self.mid = Conv(16, 32, 3)
        self.gate = Gated(32)
        self.tail = Conv(32, 32, 3)
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: Any) -> Any:
        return self.head(self.tail(self.gate(self.mid(self.stem(x)))))


def lively(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights whose outputs depend on the input (torch's defaults shrink activations layer
    by layer, and the oracle would call a check on near-constant outputs vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


class Proposals(nn.Module):
    """An RPN-like module: a conv head (prunable inside) and a score threshold (data-
    dependent: the module stays opaque, its head is pruned on its own)."""

    def __init__(self, c: int):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, 5, 1))

    def forward(self, x: Any) -> Any:
        out = self.head(x).flatten(2)  # (B, 5, HW): a score and 4 box values per position
        scores, boxes = out[:, 0], out[:, 1:]
        keep = scores[0] > 0
        if keep.any():  # decided by the values
            return boxes[0][:, keep].sum(1), scores[0][keep].max()
        return boxes[0].sum(1) * 0, scores[0].max() * 0


class TwoStage(nn.Module):
    """A traceable backbone around an opaque module with a prunable child."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(Conv(3, 16, 3), Conv(16, 32, 3), Conv(32, 24, 3))
        self.rpn = Proposals(24)

    def forward(self, x: Any) -> Any:
        f = self.backbone(x)
        return self.rpn(f), f.mean((2, 3))


class Detector(nn.Module):
    """Post-processing in the model's own forward (as torchvision's RetinaNet): the root
    cannot be traced, its children (backbone, head) are pruned one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(Conv(3, 16, 3), Conv(16, 32, 3, 2), Conv(32, 24, 3))
        self.head = nn.Sequential(Conv(24, 32, 3), Conv(32, 32, 3), nn.Conv2d(32, 6, 1))

    def forward(self, images: list) -> list:
        x = torch.stack(images)
        logits = self.head(self.backbone(x)).flatten(2)
        results = []
        for per_image in logits:
            scores = per_image[0].sigmoid()
            keep = torch.nonzero(scores > 0.5).flatten()
            results.append({"boxes": per_image[1:5, keep].T, "scores": scores[keep],
                            "labels": (per_image[5, keep] > 0).long()})
        return results
