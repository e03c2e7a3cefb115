"""Named regression tests for failures found by the fuzzer (``fxprune.fuzz``).

Each test is a hand-minimized module (shrunk with ``fxprune.tools.fuzz.shrink``, then rewritten by
hand) named after what it exercises. Each ``*_`` reason string below records the bug a test
was written for (all fixed); a bug that is not fixed yet gets ``xfail(strict=True)`` until it
is, so the fix shows up as an XPASS.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import fxprune
from fxprune.testing import prune_and_check
from fxprune.tools.fuzz import run_case

SINGLE_CHANNEL_PRODUCER = (
    "select._no_empty_axes skips single-channel tensors (_axis_ids keeps only ids with "
    "numel() > 1), so a 1-channel conv output coupled into a larger group (cat + add/SE gate) "
    "can lose its only channel: rewrite makes a conv with 0 output channels (RewriteError)")


class CatSingleChannelConv(nn.Module):
    """``cat([conv_a(x) (3 ch), conv_b(x) (1 ch)]) + conv_c(x)``: the add couples conv_b's only
    channel with channel 3 of conv_c, in one 4-unit group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 3, 1)
        self.b = nn.Conv2d(8, 1, 1)
        self.c = nn.Conv2d(8, 4, 1)
        self.head = nn.Conv2d(4, 5, 1)
        with torch.no_grad():  # make unit 3 (conv_b's channel) the weakest
            self.b.weight.mul_(0.01)
            self.c.weight[3].mul_(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.a(x), self.b(x)], 1) + self.c(x)
        return self.head(y)


class SplitSingleChannelBranchSE(nn.Module):
    """Fuzz seed 99 (first generator version), minimized: split 4 channels [1, 1, 2], a conv on
    the 1-channel middle piece, cat back, SE gate. The SE's expand conv couples the conv's
    single output channel into the stem's group; both 1-channel slices are frozen, so at
    ratio 0.6 every prunable unit goes, including the conv's only channel."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.reduce = nn.Conv2d(4, 1, 1)
        self.expand = nn.Conv2d(1, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b, c = torch.split(x, [1, 1, 2], dim=1)
        x = torch.cat([a, self.conv(b), c], dim=1)
        s = self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        x = x * torch.sigmoid(s)
        return self.fc(x.mean((2, 3)))


def test_cat_single_channel_conv_coupled_by_add():
    prune_and_check(CatSingleChannelConv(), torch.randn(2, 3, 8, 8), 0.5)


def test_split_single_channel_branch_in_se_group():
    prune_and_check(SplitSingleChannelBranchSE(), torch.randn(2, 3, 8, 8), 0.6)


def test_single_channel_conv_alone_is_kept():
    """Control: a 1-channel conv output that is its own group keeps its channel."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.one = nn.Conv2d(8, 1, 1)
            self.head = nn.Conv2d(9, 5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            return self.head(torch.cat([x, self.one(x)], 1))

    prune_and_check(M(), torch.randn(2, 3, 8, 8), 0.5)


COUNT_NO_GRAD = (
    "count.py runs FlopCounterMode(depth=None) under torch.no_grad(); its module tracker "
    "registers grad hooks on module inputs that require grad, and a view of a parameter made "
    "under no_grad (latent.expand(B, -1)) has no grad_fn: AssertionError 'Expected gradient "
    "function to be set' (timm test_vit3's AttentionPoolLatent; found by the benchmark)")


class ExpandedLatentQuery(nn.Module):
    """timm's AttentionPoolLatent, minimized: a Linear applied to an expanded parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.randn(1, 4))
        self.q = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.q(self.latent.expand(x.shape[0], -1))


def test_count_linear_on_expanded_parameter():
    counts = fxprune.count(ExpandedLatentQuery(), (torch.randn(2, 4),))
    assert counts.macs == 16


TRACE_MUTATES_CACHE = (
    "trace.py: symbolic tracing runs the model's Python, so a per-instance cache (timm "
    "EfficientFormer/EfficientFormerV2 Attention.get_attention_biases: attention_bias_cache"
    "[str(device)]) keeps a Proxy of the first graph under the key 'Proxy(getattr_1)'; the "
    "next trace of the same model (fxprune.verify, a second compress) returns that dead node: "
    "'Node add referenced nonexistent value mul'. The user's model is modified, too (found by "
    "the benchmark: efficientformer_l1, efficientformerv2_s0 fail at the oracle stage)")


class CachedBias(nn.Module):
    """timm's EfficientFormer attention-bias cache, minimized."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)
        self.bias = nn.Parameter(torch.randn(8, 1, 1))
        self.cache: dict[str, torch.Tensor] = {}

    def get_bias(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self.cache:
            self.cache[key] = self.bias * 2
        return self.cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x) + self.get_bias(x.device)))


def test_trace_twice_with_per_instance_cache():
    model = CachedBias()
    prune_and_check(model, torch.randn(2, 3, 8, 8), 0.5)  # compress, then verify re-traces
    assert set(model.cache) <= {"cpu"}, "tracing left a Proxy in the user's model"


TRACE_ADDS_TENSOR_CONSTANTS = (
    "trace.py: torch.fx's tracer stores a tensor made in forward on the traced model "
    "(setattr(root, '_tensor_constant0', t)) and never removes it, so the next trace of the "
    "same model names it '_tensor_constant1': fxprune.verify's re-trace then found tensors the "
    "pruned model lacks ('incompatible: it has no tensor _tensor_constant22'), and the user's "
    "model gained attributes (found by the torchvision benchmark: maxvit_t fails at the oracle)")


class TensorMadeInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)) * torch.full((1,), 2.0))


def test_tensor_constants_leave_the_model_as_it_was():
    model, x = TensorMadeInForward(), torch.randn(2, 3, 8, 8)
    attrs = set(model.__dict__)
    small = prune_and_check(model, x, 0.5)
    assert fxprune.verify(model, small, x).kind == "exact"  # a re-trace, same names
    assert set(model.__dict__) == attrs, "tracing left tensor constants on the user's model"
    assert hasattr(small, "_tensor_constant0")


def test_fuzz_generator_is_deterministic():
    a, b = run_case(3), run_case(3)
    assert (a.ok, a.ratio, a.criterion, a.params) == (b.ok, b.ratio, b.criterion, b.params)
