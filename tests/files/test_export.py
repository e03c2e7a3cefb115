"""ONNX export: every model of the fast test set (tests/core/test_zoo.py), pruned at 0.5, exported
with a dynamic batch dim and run in ONNX Runtime at another batch size: outputs match PyTorch's
(rtol 1e-4). Also the session timing in measure_latency and the bad-input errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

import fxprune
from fxprune.files.export import export_onnx, onnx_session
from fxprune.models import create_model, list_models

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# the models prune_and_check runs in the fast suite (tests/core/test_zoo.py)
TIMM_TEST_MODELS = ["test_resnet", "test_efficientnet", "test_efficientnet_evos", "test_byobnet",
                    "test_convnext", "test_convnext2", "test_convnext3", "test_efficientnet_gn",
                    "test_efficientnet_ln", "test_mambaout", "test_nfnet", "test_coatnet",
                    "test_maxvit", "test_vit"]


def _roundtrip(model: nn.Module, x: torch.Tensor, tmp_path) -> None:
    pruned = fxprune.compress(model, 0.5, example_inputs=x)
    r = export_onnx(pruned, tmp_path / "m.onnx")
    assert r.ok and r.dynamic_batch and r.checked_batch not in (None, x.shape[0]), r
    assert r.max_rel_err is not None and r.max_rel_err <= 1e-4


@pytest.mark.parametrize("name", list_models())
def test_reference_models(name, tmp_path):
    _roundtrip(create_model(name), torch.randn(2, 3, 32, 32), tmp_path)


@pytest.mark.parametrize("name", TIMM_TEST_MODELS)
def test_timm_test_models(name, tmp_path):
    model = timm.create_model(name)
    _roundtrip(model, torch.randn(1, *model.pretrained_cfg["input_size"]), tmp_path)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121"])
def test_torchvision(name, tmp_path):
    _roundtrip(getattr(torchvision.models, name)(), torch.randn(1, 3, 64, 64), tmp_path)


def test_session_latency_and_saved_model(tmp_path):
    model = create_model("resnet20")
    x = torch.randn(4, 3, 32, 32)
    pruned = fxprune.compress(model, 0.5, example_inputs=x[:1])
    fxprune.save(pruned, tmp_path / "s.pt")
    loaded = fxprune.load(tmp_path / "s.pt")
    export_onnx(loaded, tmp_path / "s.onnx")  # example inputs come from the saved model
    sess = onnx_session(tmp_path / "s.onnx", threads=1)
    r = fxprune.measure_latency(loaded, sess, x, warmup=1, repeat=3, threads=1)
    assert (r.engine_a, r.engine_b) == ("torch", "onnxruntime")
    assert r.median_a_ms > 0 and r.median_b_ms > 0 and r.batch == 4
    r2 = fxprune.measure_latency(sess, None, x, warmup=0, repeat=2)
    assert r2.engine_a == "onnxruntime"
    with pytest.raises(fxprune.InputError, match="example_inputs"):
        fxprune.measure_latency(sess)


def test_mismatch_and_bad_input(tmp_path, monkeypatch):
    with pytest.raises(fxprune.InputError):
        export_onnx("model", tmp_path / "x.onnx")
    with pytest.raises(fxprune.InputError):
        onnx_session(tmp_path / "x.onnx", threads=0)

    class Noisy(nn.Module):  # differs between the export trace and the check: caught
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x * 0 + self.calls

    with pytest.raises(fxprune.VerificationError, match="ONNX Runtime"):
        export_onnx(Noisy(), tmp_path / "n.onnx", torch.randn(1, 3))
