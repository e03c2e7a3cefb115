"""Attention: matmul, scaled_dot_product_attention, nn.MultiheadAttention (decomposed),
q/k/v unbind, positional embeddings, whole heads vs head dims. Every case goes through the
oracle (exact, or approximate with the structure verified exactly where a LayerNorm spans the
pruned embed dim)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.testing import prune_and_check


class TimmStyleAttention(nn.Module):
    """Packed qkv, reshape (B, N, 3, H, D), unbind, SDPA or explicit softmax attention."""

    def __init__(self, dim=32, heads=4, fused=True):
        super().__init__()
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.scale = (dim // heads) ** -0.5

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, 32))


class Block(nn.Module):
    """The inner widths of an attention between two Linears (the stream stays whole)."""

    def __init__(self, fused=True):
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(8, 32), TimmStyleAttention(fused=fused), \
            nn.Linear(32, 8)

    def forward(self, x):
        return self.out(self.attn(self.inp(x)))


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "matmul"])
@pytest.mark.parametrize("attention", ["dims", "heads"])
def test_packed_qkv_attention_prunes_dims_or_heads(fused, attention):
    torch.manual_seed(0)
    pruned = prune_and_check(Block(fused), torch.randn(2, 5, 8), 0.5, attention=attention)
    qkv = pruned.attn.qkv.weight
    assert qkv.shape[0] < 96
    proj_in = pruned.attn.proj.weight.shape[1]
    assert qkv.shape[0] == 3 * proj_in  # q, k and v keep the same dims (one packed tensor)
    if attention == "heads":
        assert proj_in % 8 == 0  # whole heads of 8 dims
    else:
        assert proj_in % 4 == 0  # the same dims in each of the 4 heads


def test_sdpa_keeps_the_original_scale():
    """F.scaled_dot_product_attention's default scale is 1/sqrt(head dim): the rewrite passes
    the original one once the head dim shrinks (else the result would be off)."""
    torch.manual_seed(0)
    pruned = prune_and_check(Block(True), torch.randn(2, 5, 8), 0.5, attention="dims")
    sdpa = [n for n in pruned.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert sdpa and sdpa[0].kwargs.get("scale") == pytest.approx(8 ** -0.5)


class SeparateQKV(nn.Module):
    """Separate q/k/v Linears: q and k share their dims; v keeps its own."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 24)
        self.o = nn.Linear(24, 8)

    def forward(self, x):
        b, n, _ = x.shape
        q, k = (t.view(b, n, 2, -1).transpose(1, 2) for t in (self.q(x), self.k(x)))
        v = self.v(x).view(b, n, 2, -1).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, scale=0.3)
        return self.o(o.transpose(1, 2).reshape(b, n, -1))


def test_q_and_k_share_dims_v_its_own():
    torch.manual_seed(0)
    pruned = prune_and_check(SeparateQKV(), torch.randn(2, 5, 8), 0.5)
    assert pruned.q.weight.shape[0] == pruned.k.weight.shape[0] == 8
    assert pruned.v.weight.shape[0] == 12
    assert pruned.o.weight.shape[1] == 12


def test_separate_qkv_whole_heads():
    torch.manual_seed(0)
    pruned = prune_and_check(SeparateQKV(), torch.randn(2, 5, 8), 0.5, attention="heads")
    # one of the two heads goes, its q, k and v rows together
    assert (pruned.q.weight.shape[0], pruned.v.weight.shape[0]) == (8, 12)


class MHABlock(nn.Module):
    def __init__(self, batch_first=True, need_weights=False):
        super().__init__()
        self.need_weights = need_weights
        self.inp = nn.Linear(8, 32)
        self.ln = nn.LayerNorm(32)
        self.mha = nn.MultiheadAttention(32, 4, batch_first=batch_first)
        self.out = nn.Linear(32, 8)

    def forward(self, x):
        h = self.inp(x)
        y = self.ln(h)
        a, _ = self.mha(y, y, y, need_weights=self.need_weights)
        return self.out(h + a)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_decomposition_equals_the_module(batch_first, need_weights):
    torch.manual_seed(0)
    m = MHABlock(batch_first, need_weights).eval()
    x = torch.randn(2, 5, 8)
    gm = fxprune.trace(m, x)
    assert not any(n.op == "call_module" and n.target == "mha" for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", ["dims", "heads"])
def test_multihead_attention_prunes_heads_dims_and_embed_dim(attention):
    torch.manual_seed(0)
    m = MHABlock()
    pruned = prune_and_check(m, torch.randn(2, 5, 8), 0.5, expect="approximate",
                             attention=attention)
    w = pruned.mha.in_proj_weight
    assert w.shape[1] == 16  # the embed dim, through the residual stream and the LayerNorm
    v = pruned.mha.out_proj.weight.shape[1]
    assert pruned.mha.out_proj.weight.shape[0] == 16
    assert (w.shape[0] - v) % 2 == 0 and w.shape[0] < 96  # q and k alike, v its own
    assert v % (8 if attention == "heads" else 4) == 0 and (w.shape[0] - v) // 2 % 4 == 0
    assert set(pruned.state_dict()) == set(m.state_dict())  # same keys


def test_cross_attention_stays_one_op_with_a_reason():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 32), nn.Linear(8, 32)
            self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
            self.out = nn.Linear(32, 8)

        def forward(self, x):
            q, kv = self.a(x), self.b(x)
            return self.out(self.mha(q, kv, kv, need_weights=False)[0])

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    gm = fxprune.trace(Cross(), x)
    assert any(n.op == "call_module" and n.target == "mha" for n in gm.graph.nodes)
    with pytest.warns(UserWarning, match="MultiheadAttention"):
        fxprune.analyze(gm)


class Tokens(nn.Module):
    """A ViT stem: class token, positional embedding (1, N+1, C) added, LayerNorm, head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 5, 16))
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # x: (B, 4, 12)
        pos = self.pos
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], dim=1) + pos
        return self.head(self.ln(t).mean(1))


def test_positional_embedding_and_class_token_are_sliced_with_the_stream():
    torch.manual_seed(0)
    pruned = prune_and_check(Tokens(), torch.randn(2, 4, 12), 0.5, expect="approximate")
    assert tuple(pruned.pos.shape) == (1, 5, 8)
    assert tuple(pruned.cls.shape) == (1, 1, 8)


def test_torchvision_vit_prunes_the_stream_heads_and_mlp():
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                             num_heads=4, hidden_dim=32, mlp_dim=64,
                                             num_classes=10)
    nn.init.normal_(m.heads.head.weight)  # torchvision zero-initialises it: a vacuous check
    x = torch.randn(2, 3, 32, 32)
    before = fxprune.count(m, x).macs
    pruned = prune_and_check(m, x, 0.5, expect="approximate")
    assert fxprune.count(pruned, x).macs < 0.4 * before
    assert pruned.encoder.pos_embedding.shape[-1] == 16


def test_matmul_with_channels_on_both_matrix_axes_is_frozen_not_wrong():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 16)
            self.a, self.b = nn.Linear(16, 6), nn.Linear(16, 6)
            self.out = nn.Linear(36, 2)

        def forward(self, x):  # (B, 6, 1) @ (B, 1, 6): an outer product
            h = self.fc(x).relu()
            return self.out((self.a(h).unsqueeze(2) @ self.b(h).unsqueeze(1)).flatten(1))

    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        pruned = fxprune.compress(Outer(), 0.5, example_inputs=torch.randn(3, 4))
    assert pruned.a.weight.shape == (6, 8) and pruned.fc.weight.shape == (8, 4)


def _tiny_swin():
    import torchvision

    torch.manual_seed(0)
    # 40x40 -> 10x10 maps: windows of 4 need padding, the first stage shifts, the second
    # (5x5 -> padded 8x8, window 4) shifts too; heads 2 and 4
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
        num_classes=10).eval()


def test_swin_window_attention_decomposition_equals_torchvision():
    m = _tiny_swin()
    x = torch.randn(2, 3, 40, 40)
    gm = fxprune.trace(m, x)
    assert not any(n.op == "call_function" and "shifted_window_attention" in str(n.target)
                   for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), m(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="traced for a height of 10"):
        gm(torch.randn(1, 3, 48, 48))


def test_swin_prunes_embed_dim_mlp_and_head_dims():
    m = _tiny_swin()
    x = torch.randn(2, 3, 40, 40)
    before = fxprune.count(m, x).macs
    pruned = prune_and_check(m, x, 0.5, expect="approximate")
    assert fxprune.count(pruned, x).macs < 0.4 * before
    qkv = pruned.get_parameter("features.1.0.attn.qkv.weight")
    assert qkv.shape == (36, 12)  # 3 x 2 heads x 6 dims, from a stream of 12


def test_roll_along_channels_is_frozen():
    class Rolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.roll(self.a(x), 1, dims=-1))

    with pytest.warns(UserWarning, match="roll"):
        a = fxprune.analyze(fxprune.trace(Rolled(), torch.randn(2, 4)))
    assert all(g.prunable == 0 for g in a.groups)


def test_swin_whole_heads_slice_the_relative_position_table():
    m = _tiny_swin()
    x = torch.randn(2, 3, 40, 40)
    pruned = prune_and_check(m, x, 0.5, expect="approximate", attention="heads")
    table = pruned.get_parameter("features.3.0.attn.relative_position_bias_table")
    assert table.shape[1] == 2  # 2 of the 4 heads
    assert pruned.get_parameter("features.3.0.attn.qkv.weight").shape[0] == 3 * 2 * 12


class BiasTableAttention(nn.Module):
    """LeViT/EfficientFormer style: a per-head bias table gathered by a buffer of relative
    positions (advanced indexing along an axis without channels), nn.Softmax(dim=-1)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(8, 3 * 16), nn.Linear(16, 8)
        self.biases = nn.Parameter(torch.randn(2, 9))
        self.register_buffer("idx", torch.randint(0, 9, (5, 5)))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.softmax(q @ k.transpose(-2, -1) * 0.35 + self.biases[:, self.idx])
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, 16))


def test_bias_table_gathered_by_index_buffer():
    torch.manual_seed(0)
    pruned = prune_and_check(BiasTableAttention(), torch.randn(2, 5, 8), 0.5)
    assert pruned.qkv.weight.shape == (24, 8)  # 4 of 8 dims in both heads, q, k and v
    assert pruned.biases.shape == (2, 9)  # heads kept: the table is whole


class CountFromTheStream(nn.Module):
    """timm Swin: ``attn_windows.view(-1, ws, ws, C)`` with ``C`` read from the block input:
    the count couples the two tensors' channels (they meet at the residual add anyway)."""

    def __init__(self, arithmetic=False):
        super().__init__()
        self.arithmetic = arithmetic
        self.inp, self.mix, self.out = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):  # (B, 6, 4)
        h = self.inp(x)
        b, n, c = h.shape
        y = self.mix(h.relu()).reshape(-1, c // 2 * 2 if self.arithmetic else c)
        return self.out(h + y.view(b, n, c))


def test_a_count_read_from_another_tensor_couples_their_channels():
    torch.manual_seed(0)
    pruned = prune_and_check(CountFromTheStream(), torch.randn(2, 6, 4), 0.5)
    assert pruned.inp.weight.shape == (8, 4) and pruned.mix.weight.shape == (8, 8)


def test_arithmetic_on_a_foreign_count_still_keeps_both_widths():
    torch.manual_seed(0)
    m = CountFromTheStream(arithmetic=True)
    with pytest.raises(fxprune.InputError, match="shape another tensor"):
        fxprune.compress(m, 0.5, example_inputs=torch.randn(2, 6, 4))


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_timm_mobilevit_blocks_are_traced_through(name):
    """MobileVitBlock / MobileVitV2Block: traced as their ops (no opaque leaf), equal to the
    module, and their transformer widths pruned (approximate: LayerNorm/GroupNorm)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    gm = fxprune.trace(m, x)
    assert not gm.meta["fxprune.leaf_fallbacks"]
    torch.testing.assert_close(gm(x), m(x), rtol=1e-5, atol=1e-5)
    before = fxprune.count(m, x).macs
    pruned = prune_and_check(m, x, 0.5, expect="approximate")
    assert fxprune.count(pruned, x).macs < 0.5 * before
