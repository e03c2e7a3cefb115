"""The concrete trace on meta tensors first (fxprune.core.concrete_meta): used where it gives
the graph the real values would, else the trace runs on the values; every result verified."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from concrete_replicas import C2fNet, Yolo, lively

import fxprune
import fxprune.core.concrete_meta as cm
from fxprune.testing import prune_and_check


class Fuse(nn.Module):
    """timm's MobileNetV5 fusion adapter, in small: branches on the inputs' sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.ffn = nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.a(x)]
        feats.append(self.b(feats[0]))
        high = feats[0].shape[-2:]
        resized = []
        for f in feats:
            if f.shape[-1] < high[1]:
                f = F.interpolate(f, size=high, mode="nearest")
            resized.append(f)
        return self.head(torch.relu(self.ffn(torch.cat(resized, 1))))


class Gate(nn.Module):
    """A decision on an activation's values: the meta trace cannot make it."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * 2 if y.mean().item() > 1e9 else y  # never doubled on the example


class ReadsValues(Fuse):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.gate(x))


class NewTensorOnInputDevice(Fuse):
    """A tensor made on the input's device: a meta trace would record device='meta'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.shape[-1] > 1:
            y = y + torch.zeros(1, 8, 1, 1, device=y.device)
        return self.head(self.b(y))


def _devices(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = cm.concrete_graph

    def spy(model, inputs, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(inputs[0].device.type)
        return real(model, inputs, *a, **k)

    monkeypatch.setattr(cm, "concrete_graph", spy)
    return seen


def test_size_decisions_are_traced_on_meta_tensors_only(monkeypatch) -> None:
    seen = _devices(monkeypatch)
    model, x = lively(Fuse()), torch.randn(2, 3, 16, 16)
    gm = fxprune.trace(model, x)
    assert gm.meta["fxprune.tracer"] == "concrete" and gm.meta["fxprune.opaque"] == {}
    assert seen == ["meta"]  # no forward pass on the values
    assert all(not t.is_meta for t in [*gm.parameters(), *gm.buffers()])
    prune_and_check(model, x)


def test_a_value_decision_traces_again_on_the_values(monkeypatch) -> None:
    seen = _devices(monkeypatch)
    model, x = lively(ReadsValues()), torch.randn(2, 3, 16, 16)
    gm = fxprune.trace(model, x)
    assert seen == ["meta", "cpu"]  # the meta attempt stopped at the gate; the values decide
    assert gm.meta["fxprune.tracer"] == "concrete"
    assert list(gm.meta["fxprune.opaque"]) == ["gate"]
    assert "decides on tensor values" in gm.meta["fxprune.opaque"]["gate"]
    prune_and_check(model, x, roundtrip=False)  # 'gate' is user code: not trusted


def test_a_graph_that_recorded_the_meta_device_is_not_used(monkeypatch) -> None:
    seen = _devices(monkeypatch)
    model, x = lively(NewTensorOnInputDevice()), torch.randn(2, 3, 16, 16)
    gm = fxprune.trace(model, x)
    assert seen == ["meta", "cpu"] and gm.meta["fxprune.opaque"] == {}
    assert all("meta" not in str(n.kwargs) for n in gm.graph.nodes)
    prune_and_check(model, x)


def test_replicas_still_verify_with_the_meta_trace() -> None:
    for model, x in ((lively(C2fNet()), torch.randn(2, 3, 32, 32)),
                     (lively(Yolo()), torch.randn(2, 3, 64, 64))):
        prune_and_check(model, x)
