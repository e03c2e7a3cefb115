"""The concrete-value tracer (fxprune.core.concrete) on replicas of what symbolic tracing cannot
trace: every replica is pruned and checked by the oracle (fxprune.testing.prune_and_check)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from concrete_replicas import (
    C2fNet,
    ClassifierOutput,
    Detector,
    GatedNet,
    HFModel,
    TwoStage,
    Yolo,
    lively,
)

import fxprune
from fxprune.testing import prune_and_check


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    return fxprune.count(model, x).macs


def test_c2f_list_chunk_is_traced_and_pruned() -> None:
    model, x = lively(C2fNet()), torch.randn(2, 3, 32, 32)
    gm = fxprune.trace(model, x)
    assert gm.meta["fxprune.tracer"] == "concrete"
    assert gm.meta["fxprune.opaque"] == {}
    pruned = prune_and_check(model, x)
    assert _macs(pruned, x) < 0.5 * _macs(model, x)


def test_yolo_routing_and_size_dependent_anchors() -> None:
    model, x = lively(Yolo()), torch.randn(2, 3, 64, 64)
    fxprune.compress(model, 0.5, example_inputs=x)
    assert model.model[8].shape is None  # the head's cache is the user's: untouched
    assert not hasattr(model.model[8], "anchors")
    pruned = prune_and_check(model, x)
    assert _macs(pruned, x) < 0.5 * _macs(model, x)
    out, raw = pruned(x)
    assert out.shape == (2, 7, 320) and len(raw) == 2
    # the anchors were specialised to 64x64 inputs: another size fails loudly
    with pytest.raises(Exception, match="fxprune traced"):
        pruned(torch.randn(1, 3, 96, 96))


def test_hf_style_config_branches_and_output_class() -> None:
    model, x = lively(HFModel()), torch.randn(2, 3, 32, 32)
    pruned = prune_and_check(model, x)
    out = pruned(x)
    assert isinstance(out, ClassifierOutput) and out.logits.shape == (2, 5)
    assert _macs(pruned, x) < 0.5 * _macs(model, x)
    names = [n.target for n in pruned.graph.nodes if n.op == "placeholder"]
    assert names == ["pixel_values", "labels", "output_hidden_states", "return_dict"]
    with pytest.raises(Exception, match="traced with labels=None"):
        pruned(x, torch.tensor([0, 1]))


def test_value_dependent_branch_is_an_opaque_leaf() -> None:
    model, x = lively(GatedNet()), torch.randn(2, 3, 16, 16)
    gm = fxprune.trace(model, x)
    assert set(gm.meta["fxprune.opaque"]) == {"gate"}
    assert "control flow" in gm.meta["fxprune.opaque"]["gate"]
    pruned = prune_and_check(model, x, roundtrip=False)  # 'gate' is user code: not trusted
    assert pruned.gate.conv.in_channels == 32  # kept at the opaque boundary
    assert pruned.stem.conv.out_channels < 16  # pruned around it


def test_traceable_models_keep_the_symbolic_trace() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    gm = fxprune.trace(model, torch.randn(1, 3, 8, 8))
    assert gm.meta["fxprune.tracer"] == "symbolic"


def test_item_on_activations_is_never_specialised() -> None:
    class Item(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k = int(x.abs().max().item() * 0)  # content-dependent int: 0
            return x[:, k:]

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Item(), nn.Conv2d(8, 4, 1))
    gm = fxprune.trace(model, torch.randn(1, 3, 8, 8))
    assert "1" in gm.meta["fxprune.opaque"]


def test_opaque_module_children_are_pruned_as_regions() -> None:
    model, x = lively(TwoStage()), torch.randn(1, 3, 16, 16)
    gm = fxprune.trace(model, x)
    assert set(gm.meta["fxprune.opaque"]) == {"rpn"}
    pruned = fxprune.compress(model, 0.5, example_inputs=x)
    assert pruned.meta["fxprune.verify"].ok  # also compares the inputs of 'rpn'
    assert pruned.meta["fxprune.regions"]["rpn.head"].startswith("pruned (exact")
    head = pruned.rpn.head
    assert isinstance(head, torch.fx.GraphModule) and model.rpn.head[0].out_channels == 32
    assert head.get_submodule("0").out_channels == 16  # pruned inside, boundary kept
    assert type(pruned.rpn) is type(model.rpn) and pruned.rpn is not model.rpn
    out, ref = pruned(x), model(x)
    assert [t.shape for t in out[0]] == [t.shape for t in ref[0]]


def test_untraceable_root_returns_its_class_with_pruned_children() -> None:
    model = lively(Detector())
    images = [torch.randn(3, 16, 16)]
    pruned = fxprune.compress(model, 0.5, example_inputs=(images,))
    assert type(pruned) is Detector and pruned is not model
    regions = pruned.fxprune_meta["fxprune.regions"]
    assert regions["backbone"].startswith("pruned (exact") and \
        regions["head"].startswith("pruned (exact")
    out, ref = pruned(images), model(images)
    assert [sorted(d) for d in out] == [sorted(d) for d in ref]  # boxes, labels, scores
    assert _macs(pruned, (images,)) < 0.6 * _macs(model, (images,))
    assert isinstance(model.head, nn.Sequential)  # the user's model is untouched


def test_inspect_lists_the_opaque_modules() -> None:
    report = fxprune.inspect(lively(GatedNet()), torch.randn(1, 3, 16, 16))
    assert set(report.opaque) == {"gate"}
    assert report.to_json()["summary"]["opaque_modules"] == ["gate"]
    assert "Opaque modules" in report.to_text()


def test_transformers_resnet_keeps_its_output_class() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                    num_labels=4)
    model, x = lively(transformers.ResNetForImageClassification(cfg)), torch.randn(2, 3, 32, 32)
    pruned = prune_and_check(model, x, roundtrip=False)
    out = pruned(x)
    assert type(out).__name__ == "ImageClassifierOutputWithNoAttention"
    assert out.logits.shape == (2, 4)
    assert _macs(pruned, x) < 0.6 * _macs(model, x)


def test_ultralytics_yolo_from_yaml() -> None:
    ultralytics = pytest.importorskip("ultralytics")
    model = ultralytics.nn.tasks.DetectionModel("yolov8n.yaml", verbose=False).eval()
    x = torch.randn(1, 3, 64, 64)
    pruned = fxprune.compress(model, 0.5, example_inputs=x)
    assert pruned.meta["fxprune.verify"].ok
    assert _macs(pruned, x) < 0.5 * _macs(model, x)
