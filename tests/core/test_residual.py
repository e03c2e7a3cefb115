"""residual="scatter": residual-output convs keep their own channels; index_add into the stream."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import fxprune
from fxprune.models import create_model


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folded constants matter."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def scatter_prune(model, x, ratio=0.5):
    gm = fxprune.trace(model, x)
    analysis = fxprune.analyze(gm, residual="scatter")
    fxprune.select(analysis, fxprune.score(analysis, "l1"), ratio)
    return analysis, fxprune.rewrite(gm)


def test_scatter_resnet56_exact_with_folded_bn_constants():
    model = randomize_bn(create_model("resnet56"))
    x = torch.randn(2, 3, 32, 32)
    analysis, pruned = scatter_prune(model, x)
    assert len(analysis.scatters) == 28  # one per residual block, plus the stem
    assert fxprune.verify(model, pruned, x).status == "exact"
    # the stream stays full width, the residual-output conv of every block shrinks
    assert pruned.get_submodule("layer1.0.conv2").out_channels == 8
    assert pruned.get_submodule("conv1").out_channels == 8  # the stem too (the papers' way)
    assert pruned.get_submodule("layer1.0.conv1").in_channels == 8  # fed by the pruned stem
    assert pruned.get_submodule("layer1.1.conv1").in_channels == 16  # fed by the stream
    assert pruned.get_submodule("fc").in_features == 64
    assert "index_add" in pruned.code
    macs = fxprune.count(pruned, x).macs / fxprune.count(model, x).macs
    assert 0.35 < macs < 0.45  # (1-P) for first convs, (1-P)^2 for second convs


def test_scatter_roundtrip_and_fresh_model(tmp_path):
    model = randomize_bn(create_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    _, pruned = scatter_prune(model, x)
    fxprune.save(pruned, tmp_path / "s.pt")
    torch.testing.assert_close(fxprune.load(tmp_path / "s.pt").eval()(x), pruned.eval()(x),
                               rtol=0, atol=0)
    fresh = fxprune.load(tmp_path / "s.pt", model=create_model("resnet20")).eval()
    torch.testing.assert_close(fresh(x), pruned(x), rtol=0, atol=0)


def test_scatter_timm_bottleneck():
    model = randomize_bn(timm.create_model("test_resnet"))
    x = torch.randn(1, 3, 64, 64)
    analysis, pruned = scatter_prune(model, x)
    assert analysis.scatters
    assert fxprune.verify(model, pruned, x).status == "exact"


def test_coupled_is_default_and_narrows_the_stream():
    model = randomize_bn(create_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    pruned = fxprune.compress(model, 0.5, example_inputs=x, verify=True)
    assert pruned.meta["fxprune.verify"].status == "exact"
    assert pruned.get_submodule("fc").in_features == 32


def test_compress_scatter_target_flops_resnet50_lands_within_one_percent():
    model = timm.create_model("resnet50")
    x = torch.randn(1, 3, 224, 224)
    base = fxprune.count(model, x).macs
    for residual in ("coupled", "scatter"):
        pruned = fxprune.compress(model, criterion="fpgm", target_flops=0.5, residual=residual,
                                  example_inputs=x)
        assert abs(fxprune.count(pruned, x).macs / base - 0.5) <= 0.01, residual
        assert pruned.meta["fxprune.residual"] == residual


def test_compress_scatter_verifies():
    model = randomize_bn(create_model("resnet32"))
    pruned = fxprune.compress(model, 0.4, residual="scatter", verify=True,
                              example_inputs=torch.randn(2, 3, 32, 32))
    assert pruned.meta["fxprune.verify"].status == "exact"
    with pytest.raises(fxprune.InputError, match="residual must be"):
        fxprune.compress(model, 0.4, residual="sideways", example_inputs=torch.randn(1, 3, 32, 32))


PAPER_MODELS = {
    "resnet20": (lambda: create_model("resnet20"), (2, 3, 32, 32)),
    "resnet56_b": (lambda: create_model("resnet56_b"), (2, 3, 32, 32)),
    "timm_resnet18": (lambda: timm.create_model("resnet18"), (1, 3, 64, 64)),
}


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_scatter_is_the_papers_structure(name):
    """Every conv whose output joins the stream keeps its own channels and is scattered into it,
    the stem (conv -> BN -> ReLU [-> max-pool]) included; projection convs keep their outputs
    (SFP/FPGM: "we do not prune the projection shortcuts")."""
    make, shape = PAPER_MODELS[name]
    model, x = randomize_bn(make()), torch.randn(*shape)
    analysis, pruned = scatter_prune(model, x, 0.4)
    assert fxprune.verify(model, pruned, x).status == "exact"
    stem = model.get_submodule("conv1").out_channels
    assert pruned.get_submodule("conv1").out_channels == stem - int(stem * 0.4)
    assert [sc.role for sc in analysis.scatters].count("stream") == 1  # the stem
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    new = dict(pruned.named_modules())
    for n, m in convs.items():
        if "shortcut" in n or "downsample" in n:
            assert new[n].out_channels == m.out_channels, n  # projections: outputs kept
        else:
            assert new[n].out_channels < m.out_channels, n  # every other conv is pruned
    assert pruned.get_submodule("fc").in_features == model.get_submodule("fc").in_features
    # the result survives a save/load round trip and a re-application to a fresh model
    fresh = fxprune.files.serialize.apply_manifest(make(), pruned.meta["fxprune.manifest"], (x,),
                                             residual="scatter")
    fresh.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(fresh.eval()(x), pruned.eval()(x), rtol=0, atol=0)


def test_scatter_stem_save_load(tmp_path):
    model = randomize_bn(create_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    _, pruned = scatter_prune(model, x)
    assert "scatter_channels" in pruned.code
    fxprune.save(pruned, tmp_path / "s.pt")
    torch.testing.assert_close(fxprune.load(tmp_path / "s.pt").eval()(x), pruned.eval()(x),
                               rtol=0, atol=0)
