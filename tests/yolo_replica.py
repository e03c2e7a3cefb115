"""A small replica of an ultralytics model whose own code reads channel widths, for
:func:`fxprune.graft` and ``compress(..., keep_class=True)`` without ultralytics.

What it shares with ``DetectionModel``: a C2f block that splits with ``list(self.cv1(x).chunk(2,
1))`` (and a ``forward_split`` that reads ``self.c``, as ultralytics' exporter uses), layers
routed by from-indices (``m.f``) with saved outputs, an attention block whose ``view``/``split``
read ``self.num_heads``/``self.key_dim``/``self.head_dim`` (YOLO11's ``Attention``), a detection
head that returns its raw maps in training and decoded boxes with anchors from the feature-map
size in eval, and a wrapper with non-module attributes (``names``, ``yaml``, ``stride``,
``args``).
"""

from __future__ import annotations

from typing import Any

import concrete_replicas
import torch
import torch.nn as nn
from concrete_replicas import Concat, Conv


class C2f(concrete_replicas.C2f):
    """ultralytics' C2f: ``forward`` chunks, ``forward_split`` splits by ``self.c``."""

    def forward_split(self, x: Any) -> Any:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class Attention(nn.Module):
    """YOLO11's attention: the heads' widths are attributes, read by ``view`` and ``split``
    (and here also the output width, ``self.dim``, which no split of the graph gives)."""

    def __init__(self, dim: int, num_heads: int = 2):
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.key_dim = self.head_dim // 2
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads)
        self.proj = Conv(dim, dim)

    def forward(self, x: Any) -> Any:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).view(b, self.num_heads, self.key_dim * 2 + self.head_dim,
                                   h * w).split([self.key_dim, self.key_dim, self.head_dim], 2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        return self.proj((v @ attn.transpose(-2, -1)).reshape(b, self.dim, h, w))


class PSA(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.attn = Attention(c)
        self.ffn = nn.Sequential(Conv(c, 2 * c), Conv(2 * c, c))

    def forward(self, x: Any) -> Any:
        x = x + self.attn(x)
        return x + self.ffn(x)


class Detect(concrete_replicas.Detect):
    """Raw maps in training; in eval, boxes decoded with anchors from the maps' size (cached
    on the module) and the maps."""

    def __init__(self, nc: int, ch: tuple[int, ...]):
        super().__init__(nc, ch, hidden=16)
        self.stride = torch.zeros(len(ch))  # set by the model, as ultralytics does

    def forward(self, x: list) -> Any:
        if self.training:
            return [self.cv[i](xi) for i, xi in enumerate(x)]
        return super().forward(x)


class YoloLike(concrete_replicas.Yolo):
    """A ``DetectionModel``-like wrapper: routed layers (the replica's ``forward``) and
    attributes that a GraphModule would not carry."""

    def __init__(self, nc: int = 3, attention: bool = True):
        nn.Module.__init__(self)  # other layers than the replica's
        layers = [Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32), Conv(32, 64, 3, 2),
                  C2f(64, 64), PSA(64) if attention else Conv(64, 64, 3),
                  nn.Upsample(scale_factor=2.0), Concat(1), C2f(96, 32), Detect(nc, (32, 64))]
        froms: list[Any] = [-1, -1, -1, -1, -1, -1, -1, [-1, 2], -1, [8, 5]]
        for i, (m, f) in enumerate(zip(layers, froms)):
            m.i, m.f, m.type = i, f, type(m).__name__
        self.model = nn.Sequential(*layers)
        self.save = [2, 5, 8]
        self.names = {i: f"class{i}" for i in range(nc)}
        self.yaml = {"nc": nc, "scale": "n", "backbone": "replica"}
        self.args = {"imgsz": 64}
        self.stride = torch.tensor([4.0, 8.0])
        self.model[-1].stride = self.stride
