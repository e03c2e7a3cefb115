"""``--set detection`` / ``--set huggingface`` in the child machinery, on tiny stand-ins: a
detector whose forward takes a list of images and post-processes by value (its root stays
opaque, its backbone and head are pruned as regions) and, where installed, a tiny Hugging Face
ResNet."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from fxprune.bench import beyond
from fxprune.bench import child as bench_child
from fxprune.bench import sets as bench_sets


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return OrderedDict(p=self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.cls = nn.Conv2d(16, 2, 1)

    def forward(self, feats):
        return [self.cls(torch.relu(self.conv(f))) for f in feats]


class TinyDetector(nn.Module):
    """A list of images in, a list of {boxes, labels, scores} out; the number of boxes depends
    on the scores (value-dependent control flow: not traceable)."""

    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.head = _Head()

    def forward(self, images):
        x = torch.stack(list(images))
        logits = self.head(list(self.backbone(x).values()))[0]
        out = []
        for scores in logits.flatten(2).amax(1):
            keep = scores > scores.mean()
            if bool(keep.any()):
                scores = scores[keep]
            n = scores.numel()
            out.append({"boxes": torch.zeros(n, 4) + scores[:, None],
                        "labels": torch.zeros(n, dtype=torch.long), "scores": scores})
        return out


def _run(monkeypatch, tmp_path, model, inputs, source):
    monkeypatch.setattr(bench_child, "make_model", lambda name, src: (model, inputs))
    rec = bench_child._Recorder(tmp_path / "r.json", "fxprune", "tiny")
    bench_child._child_fxprune(rec, "tiny", 0.5, source)
    return rec.data


def test_sets_are_known():
    assert bench_sets.source_of("detection") == "detection"
    assert bench_sets.source_of("huggingface") == "huggingface"
    assert bench_sets.model_set("detection")[:6] == list(beyond.DETECTION_SET)
    assert bench_sets.family_of("retinanet_resnet50_fpn", "detection") == "retinanet"


def test_tiny_detector_through_the_child(monkeypatch, tmp_path):
    torch.manual_seed(0)
    model = TinyDetector().eval()
    inputs = ([torch.rand(3, 32, 32)],)
    d = _run(monkeypatch, tmp_path, model, inputs, "detection")
    assert d["status"] == "pass", d
    assert d["verdict"] == "exact (per region)"
    assert d["regions"]["backbone"].startswith("pruned (exact")
    assert "<root>" in d["opaque"]
    assert 0.2 < d["macs_cut"] < 1  # counted on backbone + head (DenseDetector)
    dense, x = beyond.counted(model, inputs, "detection")
    assert isinstance(dense, beyond.DenseDetector) and x[0].shape == (1, 3, 32, 32)


def test_structure_ignores_box_counts():
    a = [{"boxes": torch.zeros(3, 4), "scores": torch.zeros(3)}]
    b = [{"boxes": torch.zeros(7, 4), "scores": torch.zeros(7)}]
    assert beyond.structure(a) == beyond.structure(b)
    assert beyond.structure(a) != beyond.structure([{"boxes": torch.zeros(3, 4)}])


def test_tiny_huggingface_resnet_through_the_child(monkeypatch, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                    num_labels=5)
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(cfg).eval()
    d = _run(monkeypatch, tmp_path, model, (torch.randn(1, 3, 32, 32),), "huggingface")
    assert d["status"] == "pass", d
    assert d["oracle"] == "exact" and d["macs_cut"] > 0.2
    assert beyond.head_modules(model, "huggingface") == [model.classifier[-1]] or \
        beyond.head_modules(model, "huggingface")[0] is model.classifier
