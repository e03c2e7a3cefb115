"""Window and token bookkeeping: rolls, patch merging, index ranges.

* ``torch.roll`` shifts along spatial/token axes (Swin's shifted windows): channel ids pass
  through; a roll along a channel axis is not supported (its channels are frozen).
* ``torchvision``'s ``_patch_merging_pad`` concatenates the four 2x2-strided pieces of a
  ``(..., H, W, C)`` map along channels: the output's channel axis holds the input's ids four
  times (the following LayerNorm and Linear read each channel four times, as after a flatten).
* Swin's relative position bias: its table's head columns go with whole heads.
* timm's window/grid reverse functions move tokens, not channels; its positional-embedding
  resampling interpolates tokens channel by channel.
* ``torch.arange``/``torch.linspace`` make index values with no channels (Swin's window
  masks): their ids are free.
"""

from __future__ import annotations

__all__ = ["Roll", "PatchMergingPad", "NoChannels", "RelativePositionBias", "WindowReverse",
           "ResamplePosEmbed"]

import torch

from fxprune.ir.channels import FREE, FROZEN
from fxprune.rules import Rule, register_rule
from fxprune.rules.util import align, dims_arg


@register_rule(torch.roll, "roll")
class Roll(Rule):
    """roll: elements move along axes without channels; ids pass through."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        from fxprune.ir.propctx import Unsupported

        x = ctx.arg(0, "input")
        ids = align(ctx.ids(0, "input"), x.dim())
        dims = ctx.arg(2, "dims")
        if dims is None or (isinstance(dims, (list, tuple)) and not dims):
            if ids.numel() > 1:
                raise Unsupported("roll of the flattened tensor moves channels")
            return ids
        if any(ids.shape[d] > 1 for d in dims_arg(dims, x.dim())):
            raise Unsupported("roll along a channel axis")
        return ids

    def is_size_arg(self, node, key):  # type: ignore[no-untyped-def]
        return True


class PatchMergingPad(Rule):
    """Swin patch merging: (..., H, W, C) -> (..., H/2, W/2, 4C), the channels four times."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        from fxprune.ir.propctx import Unsupported

        x = ctx.arg(0, "x")
        ids = align(ctx.ids(0, "x"), x.dim())
        if any(s > 1 for s in ids.shape[-3:-1]):
            raise Unsupported("patch merging of a map with channels on its spatial axes")
        if ids.shape[-1] == 1:
            return ids
        return torch.cat([ids] * 4, dim=-1)


@register_rule(torch.arange, torch.linspace)
class NoChannels(Rule):
    """A tensor of index values: it carries no channels."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        return torch.full((1,) * ctx.out.dim(), FREE, dtype=torch.long)

    def is_size_arg(self, node, key):  # type: ignore[no-untyped-def]
        return True


class RelativePositionBias(Rule):
    """Swin's relative position bias ``(1, heads, N, N)`` gathered from its ``(M, heads)``
    table: with ``attention="heads"`` the table's head columns are a channel space (coupled
    with the attention's heads when the bias is added); with ``"dims"`` every head stays."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        import torch.fx as fx

        from fxprune.ir.channels import at_axis

        table = ctx.arg_node(0, "relative_position_bias_table")
        value = ctx.arg(0, "relative_position_bias_table")
        if (ctx.attention != "heads" or not isinstance(table, fx.Node)
                or table.op != "get_attr" or value.dim() != 2):
            return torch.full((1,) * ctx.out.dim(), FROZEN, dtype=torch.long)
        heads = ctx.new_ids(value.shape[1], key=("attr", str(table.target), 1))
        ctx.bind("", 1, heads, "channel", target=str(table.target))
        return at_axis(heads, 1, ctx.out.dim())


class WindowReverse(Rule):
    """timm's window/grid un-partitioning (registered no-trace functions): tokens move
    between windows and the map, the channel axis (last, or 1 for ``*_nchw``) passes through."""

    def __init__(self, axis: int):
        self.axis = axis

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        from fxprune.ir.channels import at_axis
        from fxprune.ir.propctx import Unsupported

        x = ctx.arg(0, "windows")
        ids = align(ctx.ids(0, "windows"), x.dim())
        axis = self.axis % x.dim()
        if any(s > 1 for d, s in enumerate(ids.shape) if d != axis):
            raise Unsupported("window reverse of a value with channels on its token axes")
        return at_axis(ids.reshape(-1), self.axis % ctx.out.dim(), ctx.out.dim())


class ResamplePosEmbed(Rule):
    """timm's ``resample_abs_pos_embed(_nhwc)``: a positional embedding interpolated over its
    token grid, channel by channel (last axis). Read straight from a parameter, that
    parameter's last axis is bound (sliced with the stream it is added to)."""

    def propagate(self, ctx):  # type: ignore[no-untyped-def]
        import torch.fx as fx

        from fxprune.ir.channels import at_axis
        from fxprune.ir.propctx import Unsupported

        node, value = ctx.arg_node(0, "posemb"), ctx.arg(0, "posemb")
        nd = ctx.out.dim()
        if isinstance(node, fx.Node) and node.op == "get_attr":
            ids1d = ctx.new_ids(value.shape[-1], key=("attr", str(node.target), value.dim() - 1))
            ctx.bind("", value.dim() - 1, ids1d, "channel", target=str(node.target))
            return at_axis(ids1d, nd - 1, nd)
        ids = align(ctx.ids(0, "posemb"), value.dim())
        if any(s > 1 for s in ids.shape[:-1]):
            raise Unsupported("a positional embedding with channels on its token axes")
        return at_axis(ids.reshape(-1), nd - 1, nd) if ids.shape[-1] > 1 else \
            torch.full((1,) * nd, FREE, dtype=torch.long)

    def is_size_arg(self, node, key):  # type: ignore[no-untyped-def]
        return True


def _register_timm() -> None:
    import importlib

    from fxprune.rules.elementwise import Broadcast

    names = {"timm.models.swin_transformer": ("window_reverse",),
             "timm.models.swin_transformer_v2": ("window_reverse",),
             "timm.models.swin_transformer_v2_cr": ("window_reverse",),
             "timm.models.gcvit": ("window_reverse",), "timm.models.davit": ("window_reverse",),
             "timm.models.maxxvit": ("window_reverse", "grid_reverse", "window_reverse_nchw",
                                     "grid_reverse_nchw")}
    for module, fns in names.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:  # timm is optional
            continue
        for name in fns:
            fn = getattr(mod, name, None)
            if fn is not None:
                register_rule(fn)(WindowReverse(1 if name.endswith("_nchw") else -1))
    try:
        from timm.layers import pos_embed
        from timm.layers.attention import maybe_add_mask
    except ImportError:
        return
    register_rule(maybe_add_mask)(Broadcast())
    for name in ("resample_abs_pos_embed", "resample_abs_pos_embed_nhwc"):
        fn = getattr(pos_embed, name, None)
        if fn is not None:
            register_rule(fn)(ResamplePosEmbed)


def _register_torchvision() -> None:
    try:
        from torchvision.models import swin_transformer as swin
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return
    fn = getattr(swin, "_patch_merging_pad", None)
    if fn is not None:
        register_rule(fn)(PatchMergingPad)
    fn = getattr(swin, "_get_relative_position_bias", None)
    if fn is not None:
        register_rule(fn)(RelativePositionBias)


_register_torchvision()
_register_timm()
