"""fxprune.paper_flops_cut: the SFP/FPGM "FLOPs↓" convention, against ports of the authors'
calculators (SFP utils/cifar_resnet_flop.py, FPGM functions/cal_flop.py) and printed numbers."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fxprune
from fxprune.models import create_model

X32 = torch.randn(1, 3, 32, 32)
X224 = torch.randn(1, 3, 224, 224)


def cifar_calculator(depth: int, p: float) -> float:
    """Port of ``cifar_resnet_flop``: per conv of a 3-stage CIFAR ResNet (16/32/64 channels at
    32/16/8 pixels), the stem at ``p``, block 1's convs at ``p**2``, then ``p`` for a block's
    first conv and ``p**2`` for its second; a stage's first conv has the previous width in."""
    ch, px = (16, 32, 64), (32, 16, 8)
    flops = ch[0] * px[0] ** 2 * 9 * 3 * p
    for s in range(3):
        for b in range((depth - 2) // 6):
            c_in = ch[s - 1] if (s > 0 and b == 0) else ch[s]
            first = p * p if (s == 0 and b == 0) else p
            flops += ch[s] * px[s] ** 2 * 9 * c_in * first + ch[s] * px[s] ** 2 * 9 * ch[s] * p * p
    return flops


def bottleneck_calculator(blocks: tuple[int, ...], p: float) -> float:
    """Port of ``cal_flop.bottle``: the 7x7 stem at ``p``; per block conv1 ``p`` (``p**2`` in the
    first block, fed by the pruned stem), conv2 and conv3 ``p**2``, the downsample's outputs
    kept; every conv of a stage at the stage's output resolution (56/28/14/7)."""
    ch, px = (64, 128, 256, 512), (56, 28, 14, 7)
    flops = 64 * 112 * 112 * 49 * 3 * p
    for s, n in enumerate(blocks):
        c, w2 = ch[s], px[s] ** 2
        c_in = 64 * p if s == 0 else ch[s - 1] * 4
        flops += c * w2 * c_in * p + c * w2 * 9 * c * p * p + 4 * c * w2 * c * p * p
        flops += 4 * c * w2 * c_in  # downsample: outputs not pruned
        flops += (n - 1) * (c * w2 * 4 * c * p + c * w2 * 9 * c * p * p + 4 * c * w2 * c * p * p)
    return flops


def cut(calc, *args) -> float:
    return 1 - calc(*args[:-1], args[-1]) / calc(*args[:-1], 1.0)


def resnet50_v1() -> torch.nn.Module:
    """torchvision's ResNet-50 with the original layout: a stage's stride-2 in its 1x1 conv1."""
    model = torchvision.models.resnet50()
    for stage in (model.layer2, model.layer3, model.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    return model.eval()


@pytest.mark.parametrize("depth,printed", [(20, 0.5396), (56, 0.5263), (110, 0.5231)])
def test_cifar_resnets_at_keep_06(depth, printed):
    got = fxprune.paper_flops_cut(create_model(f"resnet{depth}"), 0.6, example_inputs=X32)
    assert got == pytest.approx(cut(cifar_calculator, depth, 0.6), abs=1e-12)
    assert round(got, 4) == printed


def test_cifar_other_rates_and_option_b():
    for depth in (20, 32, 56):
        for keep in (0.9, 0.7, 0.5):
            got = fxprune.paper_flops_cut(create_model(f"resnet{depth}"), keep,
                                          example_inputs=X32)
            assert got == pytest.approx(cut(cifar_calculator, depth, keep), abs=1e-12)
    # option B: the 1x1 projections count too (outputs kept, inputs from the stream)
    b = fxprune.paper_flops(create_model("resnet56_b"), 0.6, example_inputs=X32)
    assert b.per_layer["layer2.0.shortcut.0"][1] == 1.0
    assert b.per_layer["conv1"][1] == 0.6 and b.per_layer["layer1.0.conv1"][1] == 0.36


@pytest.mark.parametrize("keep,printed", [(0.7, 0.4222), (0.6, 0.5351)])
def test_resnet50_original_layout(keep, printed):
    got = fxprune.paper_flops_cut(resnet50_v1(), keep, example_inputs=X224)
    assert got == pytest.approx(cut(bottleneck_calculator, (3, 4, 6, 3), keep), abs=1e-12)
    assert round(got, 4) == printed


def test_resnet50_v15_layout_and_errors():
    got = fxprune.paper_flops_cut(torchvision.models.resnet50().eval(), 0.7,
                                  example_inputs=X224)
    assert round(got, 4) == 0.4153  # conv1 of stride-2 blocks runs at twice the resolution
    with pytest.raises(fxprune.InputError, match="KEEPS"):
        fxprune.paper_flops_cut(create_model("resnet20"), 0.0, example_inputs=X32)
    with pytest.raises(fxprune.InputError, match="KEEPS"):
        fxprune.paper_flops_cut(create_model("resnet20"), 1.5, example_inputs=X32)
    assert fxprune.paper_flops_cut(create_model("resnet20"), 1.0, example_inputs=X32) == 0.0


def test_coupled_residual_policy_prunes_the_stream_too():
    m = create_model("resnet20")
    s = fxprune.paper_flops(m, 0.6, example_inputs=X32)
    c = fxprune.paper_flops(m, 0.6, example_inputs=X32, residual="coupled")
    # scatter: a block's first conv reads the full-width stream; coupled: the stream is pruned
    assert s.per_layer["layer1.1.conv1"][1] == pytest.approx(0.6)
    assert c.per_layer["layer1.1.conv1"][1] == pytest.approx(0.36)
    assert c.per_layer["conv1"][1] == pytest.approx(0.6)  # the stem: graph input kept
    assert c.cut > s.cut
    with pytest.raises(fxprune.InputError, match="residual"):
        fxprune.paper_flops(m, 0.6, example_inputs=X32, residual="add")
