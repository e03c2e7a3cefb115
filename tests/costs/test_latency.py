"""fxprune.measure_latency: interleaved timing, medians, restored thread count and flags."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.costs.latency import LatencyReport

X = torch.randn(1, 3, 32, 32)


def _net(c: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c, c, 3, padding=1))


def test_wider_model_is_slower():
    wide, narrow = _net(64), _net(16)  # 4x wider: ~16x the MACs
    r = fxprune.measure_latency(wide, narrow, X, warmup=1, repeat=7, threads=1)
    assert r.speedup > 1.2, r
    assert r.median_a_ms > r.median_b_ms > 0
    assert len(r.times_a_ms) == len(r.times_b_ms) == 7
    assert r.iqr_a_ms >= 0 and r.iqr_b_ms >= 0
    assert (r.threads, r.device, r.batch, r.repeat, r.warmup) == (1, "cpu", 1, 7, 1)
    assert "speed-up" in str(r) and "batch 1" in str(r)
    assert json.loads(json.dumps(r.to_json()))["speedup"] == r.speedup


def test_restores_threads_and_training_flags():
    model = _net(8).train()
    model[1].eval()  # a mixed state must come back exactly
    threads = torch.get_num_threads()
    r = fxprune.measure_latency(model, None, torch.randn(4, 3, 8, 8), warmup=0, repeat=2,
                                threads=threads + 1)
    assert r.threads == threads + 1 and torch.get_num_threads() == threads
    assert model.training and not model[1].training and model[0].training
    assert torch.is_grad_enabled()
    assert r.median_b_ms is None and r.speedup is None and r.batch == 4
    assert "speed-up" not in str(r)


def test_default_inputs_from_pruned_graph_and_device():
    model = _net(8)
    pruned = fxprune.compress(model, 0.5, example_inputs=torch.randn(1, 3, 8, 8))
    r = fxprune.measure_latency(pruned, warmup=0, repeat=1, device="cpu")
    assert r.batch == 1 and r.device == "cpu" and r.median_a_ms > 0


@pytest.mark.parametrize("kw", [{"repeat": 0}, {"warmup": -1}, {"threads": 0},
                                {"repeat": 1.5}])
def test_bad_arguments(kw):
    with pytest.raises(fxprune.InputError):
        fxprune.measure_latency(_net(4), None, X, **kw)


def test_not_a_module():
    with pytest.raises(fxprune.InputError):
        fxprune.measure_latency(_net(4), "model", X)


def test_page_faults_are_counted_and_explained():
    r = fxprune.measure_latency(_net(8), _net(8), X, warmup=1, repeat=3, threads=1)
    assert r.page_faults_a is not None and r.page_faults_a >= 0  # Linux: getrusage
    assert "page_faults_a" in r.to_json()
    noisy = LatencyReport(10.0, 5.0, 1.0, 1.0, 2.0, 2, "cpu", 8, 1, 3,
                          page_faults_a=60000.0, page_faults_b=30000.0)
    assert "60000 page faults per call" in str(noisy)
    quiet = LatencyReport(10.0, 5.0, 1.0, 1.0, 2.0, 2, "cpu", 8, 1, 3,
                          page_faults_a=0.0, page_faults_b=0.0)
    assert "page faults" not in str(quiet)


@pytest.mark.parametrize(("cap", "device", "want"), [
    ("AVX512", "cpu", 16), ("AVX512_BF16", "cpu", 16), ("AVX2", "cpu", 8), ("DEFAULT", "cpu", 8),
    ("AVX512", "cuda", 8)])
def test_auto_round_to(monkeypatch, cap, device, want):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: cap)
    assert fxprune.auto_round_to(device) == want


def test_compress_round_to_auto_and_bad_values():
    import timm

    model = timm.create_model("resnet18")
    x = torch.randn(1, 3, 64, 64)
    pruned = fxprune.compress(model, target_flops=0.5, round_to="auto", example_inputs=x,
                              verify=True)
    rt = fxprune.auto_round_to("cpu")
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % rt == 0 for w in widths), widths
    assert pruned.meta["fxprune.verify"].status == "exact"
    for bad in ("fast", 0, True, 2.0):
        with pytest.raises(fxprune.InputError, match="round_to must be"):
            fxprune.compress(model, 0.5, round_to=bad, example_inputs=x)
