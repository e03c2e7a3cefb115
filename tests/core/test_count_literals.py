"""Counts that reach a reshape other than as the input's own size read (issue 23): a literal
head size from a config (HF MobileViT), ``k * C`` read from another tensor (HF Swin's patch
merging) and a count read from SDPA's ``value`` to reshape its output (HF's sdpa_attention).
Each used to fail the rewrite or freeze its channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.testing import prune_and_check


class LiteralHeadSize(nn.Module):
    """``context.view(*(context.size()[:-2] + (self.all_head_size,)))``: MobileViT's
    attention, the merged size a Python int from ``__init__``."""

    def __init__(self, dim: int = 24, heads: int = 4, head: int = 8):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.heads, self.head, self.all_head_size = heads, head, heads * head
        self.q, self.k = nn.Linear(dim, heads * head), nn.Linear(dim, heads * head)
        self.v = nn.Linear(dim, heads * head)
        self.out = nn.Linear(heads * head, dim)

    def forward(self, x):
        x = self.inp(x)
        shape = (*x.shape[:-1], -1, self.head)
        q = self.q(x).view(shape).transpose(1, 2)
        k = self.k(x).view(shape).transpose(1, 2)
        v = self.v(x).view(shape).transpose(1, 2)
        ctx = torch.matmul(torch.softmax(q @ k.transpose(-1, -2), -1), v)
        ctx = ctx.permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(*(ctx.size()[:-2] + (self.all_head_size,)))
        return self.out(ctx)


class PatchMerge(nn.Module):
    """Swin's patch merging: ``view(B, -1, 4 * C)`` with ``C`` read before the ``cat``."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.embed = nn.Linear(6, c)
        self.mlp = nn.Linear(c, c)
        self.reduction = nn.Linear(4 * c, 12)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.mlp(torch.relu(x))
        b, n, c = x.shape
        side = int(n ** 0.5)
        y = x.view(b, side, side, c)
        y = torch.cat([y[:, r::2, col::2, :] for col in range(2) for r in range(2)], dim=-1)
        return self.reduction(y.view(b, -1, 4 * c))


class SdpaValueCount(nn.Module):
    """HF's sdpa_attention_forward: ``out.reshape(out.shape[0], -1, n, value.shape[-1])``."""

    def __init__(self, dim: int = 24, heads: int = 3, head: int = 8):
        super().__init__()
        self.heads, self.head = heads, head
        self.q, self.k = nn.Linear(dim, heads * head), nn.Linear(dim, heads * head)
        self.v = nn.Linear(dim, heads * head)
        self.o = nn.Linear(heads * head, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, -1, self.head).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.reshape(out.shape[0], -1, n, v.shape[-1]).transpose(1, 2)
        return self.o(out.reshape(b, n, -1))


def _frozen(model, x):
    return [g for g in fxprune.inspect(model, (x,)).groups
            if g.frozen_units and "graph input" not in (g.frozen_reason or "")
            and "graph output" not in (g.frozen_reason or "")]


def test_literal_head_size_is_patched():
    torch.manual_seed(0)
    m = LiteralHeadSize().eval()
    x = torch.randn(2, 5, 24)
    pruned = prune_and_check(m, (x,), roundtrip=False)
    assert pruned.out.in_features < 32


def test_scaled_count_couples_patch_merging():
    torch.manual_seed(0)
    m = PatchMerge().eval()
    x = torch.randn(2, 16, 6)
    assert not _frozen(m, x)
    pruned = prune_and_check(m, (x,), roundtrip=False)
    assert pruned.reduction.in_features == 4 * pruned.embed.out_features < 64


def test_count_read_from_sdpa_value_fits_its_output():
    torch.manual_seed(0)
    m = SdpaValueCount().eval()
    x = torch.randn(2, 5, 24)
    assert not _frozen(m, x)
    pruned = prune_and_check(m, (x,), roundtrip=False)
    assert pruned.o.in_features < 24


def test_hf_mobilevit_and_swin_replicas():
    transformers = pytest.importorskip("transformers")
    from fxprune.bench.beyond import calibrate_bn

    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    cfg = transformers.MobileViTConfig(image_size=64, hidden_sizes=[48, 64, 80],
                                       neck_hidden_sizes=[16, 16, 24, 24, 32, 32, 160],
                                       num_labels=5)
    m = calibrate_bn(transformers.MobileViTForImageClassification(cfg), torch.randn(2, 3, 64, 64))
    p = fxprune.compress(m, 0.5, example_inputs=(x,))
    assert p.meta["fxprune.verify"].ok and not p.meta["fxprune.verify"].vacuous
    cfg = transformers.SwinConfig(image_size=64, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                                  window_size=4, num_labels=5)
    m = transformers.SwinForImageClassification(cfg).eval()
    assert not _frozen(m, x)[:-1]  # only the classifier (packed into the output object)
    c0 = fxprune.count(m, (x,)).macs
    p = fxprune.compress(m, 0.5, example_inputs=(x,))
    assert 1 - fxprune.count(p, (x,)).macs / c0 > 0.6
