"""The SWP rewrite: a Filter-Skeleton model -> an exact, faster GraphModule (algorithms.md §6.3).

In order, on a copy (the user's model is not modified):

(a) the threshold is applied (``|fs| <= delta`` -> 0, dead filters' following BN zeroed) and
    ``fs`` is folded into the conv weights (:func:`fold`);
(b) the exact channel clean-up: units (coupled channels) whose every producing filter is zero
    and whose value is 0 at every node that carries them are removed through the normal
    keep-set machinery (:func:`fxprune.core.select.set_keepsets` + :func:`fxprune.rewrite`), so
    the next layers lose those inputs too. Frozen units (graph outputs...) and units through
    approximately-prunable ops stay;
(c)+(d) per skeleton conv: kernel positions dead for every remaining filter are dropped
    (:func:`~fxprune.stripes.forms.dense_form`: a smaller dense conv when the live positions'
    bounding box is centred, else a cropped one), and the faster of that dense form and the
    position-grouped :class:`~fxprune.stripes.forms.StripeConv2d` is kept
    (:func:`~fxprune.stripes.probe.choose`).

Postcondition: the result equals the thresholded model on the example inputs (``rtol``), else
:class:`~fxprune.errors.VerificationError`. Per-layer facts are in
``result.meta["fxprune.stripes"]`` (:class:`LayerReport`).
"""

from __future__ import annotations

__all__ = ["finalize", "fold", "dead_units", "LayerReport", "STRIPES"]

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.core.analyze import Analysis, analyze
from fxprune.core.rewrite import rewrite
from fxprune.core.select import kept_mask, set_keepsets
from fxprune.core.trace import EXAMPLE_INPUTS, trace
from fxprune.core.verify import align_ids
from fxprune.costs.latency import resolve_round_to
from fxprune.errors import InputError, VerificationError
from fxprune.ir import meta
from fxprune.ir.channels import FIRST_ID
from fxprune.stripes.forms import CroppedConv2d, dense_form, stripe_form, stripe_macs
from fxprune.stripes.probe import choose
from fxprune.stripes.skeleton import following_norms, remove_skeletons, skeleton_convs, threshold

STRIPES = "fxprune.stripes"  # finalized gm.meta: {conv name: LayerReport}


@dataclass(frozen=True)
class LayerReport:
    """What the SWP rewrite did to one skeleton conv."""

    kernel: str  # "dense" or "stripe"
    form: str  # e.g. "Conv2d 1x3", "CroppedConv2d 2x2", "StripeConv2d"
    filters: tuple[int, int]  # (kept, original) output filters
    stripes: tuple[int, int]  # (live stripes N', O' * K * K of the kept filters)
    positions: int  # live kernel positions
    stripe_macs: int  # N' * C' * Ho * Wo (SWP's convention / 2)
    dense_macs: int  # O * C * K * K * Ho * Wo of the original (unpruned) layer
    emitted_macs: int  # MACs of the emitted form (dense: its kernel incl. zeros; stripe: N'C'HoWo)
    reason: str


def fold(model: nn.Module, delta: float) -> tuple[nn.Module, dict[str, Tensor]]:
    """A thresholded copy of ``model`` with every skeleton folded into its conv (step (a)).

    Returns ``(copy, {conv name: live stripes [O, K, K]})``.
    """
    work = copy.deepcopy(model)
    convs = skeleton_convs(work)
    if not convs:
        raise InputError(
            f"{type(model).__name__} has no Filter Skeleton convs. Hint: create the pruner "
            "(fxprune.stripes.StripePruner / SoftPruner(method='swp')) before training, or "
            "call fxprune.stripes.insert_skeletons(model).")
    modules = dict(work.named_modules())
    norms = {c: modules[b] for c, b in following_norms(work, list(convs)).items()}
    live = threshold(convs, norms, delta)
    remove_skeletons(work, fold=True)
    for p in work.parameters():
        p.grad = None
    return work, live


def _unit_index_tables(analysis: Analysis) -> tuple[Tensor, Tensor]:
    sizes = [g.size for g in analysis.groups]
    offsets = torch.tensor([0, *sizes], dtype=torch.long).cumsum(0)
    return offsets, torch.zeros(int(offsets[-1]), dtype=torch.bool)


def _zero_producers(analysis: Analysis, root: nn.Module) -> Tensor:
    """Per flat unit: True when it has a producing filter and every one of them is zero."""
    offsets, has_out = _unit_index_tables(analysis)
    nonzero = has_out.clone()
    for g in analysis.groups:
        for m in g.members:
            if m.role != "out":
                continue
            t = m.tensor(root)
            zero = (t.reshape(t.shape[0], -1) == 0).all(1)
            sel = m.units >= 0
            units = m.units[sel] + offsets[g.id]
            has_out[units] = True
            nonzero[units[~zero[sel]]] = True
    return has_out & ~nonzero


class _ZeroCheck(fx.Interpreter):
    """Marks every unit that is nonzero somewhere (among ``removed`` ids) as not removable."""

    def __init__(self, gm: fx.GraphModule, removed: Tensor, bad: set[int]):
        super().__init__(gm)
        self.removed = removed
        self.bad = bad

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        ids = meta.get_ids(n)
        if isinstance(out, Tensor) and isinstance(ids, Tensor) and ids.dim() <= out.dim():
            ids = align_ids(ids, out.dim())
            mask = self.removed[ids]
            if bool(mask.any()):
                hit = (out != 0) & mask
                if bool(hit.any()):
                    self.bad.update(ids.expand(out.shape)[hit].unique().tolist())
        return out


def dead_units(analysis: Analysis, inputs: tuple, round_to: int | None = None
               ) -> dict[int, meta.KeepSet]:
    """Keep-sets that drop the units that are structurally 0 (step (b)).

    A unit goes when every producing filter of it is zero, it is not frozen, no approximately
    prunable op sees it, and its value is 0 at every node on the example inputs and on random
    inputs of the same shapes (this catches ops that map 0 to a nonzero constant). With
    ``round_to``, a group keeps a multiple of it (dead units are re-admitted, which is exact):
    a 16-wide conv that loses one filter runs slower on an AVX-512 CPU, not faster.
    """
    gm = analysis.gm
    flat = _zero_producers(analysis, gm)
    offsets = _unit_index_tables(analysis)[0]
    for _name, ids, _why in analysis.approx:
        real = ids[ids >= FIRST_ID].unique()
        flat[offsets[analysis.group_of[real]] + analysis.unit_index[real]] = False
    for g in analysis.groups:
        if g.frozen_units:
            flat[offsets[g.id] + torch.tensor(g.frozen_units, dtype=torch.long)] = False

    def keepsets() -> dict[int, meta.KeepSet]:
        out = {}
        for g in analysis.groups:
            gone = flat[offsets[g.id]:offsets[g.id] + g.size]
            keep = [u for u in range(g.size) if not bool(gone[u])]
            if round_to and round_to > 1 and len(keep) < g.size:
                step = round_to // math.gcd(round_to, g.divisor)
                want = min(g.size, -(-len(keep) // step) * step)
                extra = [u for u in range(g.size) if bool(gone[u])][:want - len(keep)]
                keep = sorted(keep + extra)  # dead units kept for the width: still exact
            out[g.id] = meta.KeepSet(g.id, g.size, tuple(keep))
        return out

    if not bool(flat.any()):
        return keepsets()
    gen = torch.Generator().manual_seed(0)
    randn = tuple(torch.randn(x.shape, generator=gen).to(x) if isinstance(x, Tensor)
                  and x.is_floating_point() else x for x in inputs)
    bad: set[int] = set()
    with torch.no_grad():
        for batch in (inputs, randn):
            removed = ~kept_mask(analysis, keepsets())
            _ZeroCheck(gm, removed, bad).run(*batch)
            if bad:
                real = torch.tensor(sorted(i for i in bad if i >= FIRST_ID), dtype=torch.long)
                real = real[analysis.group_of[real] >= 0]
                flat[offsets[analysis.group_of[real]] + analysis.unit_index[real]] = False
                bad.clear()
    return keepsets()


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _conv_inputs(gm: fx.GraphModule, names: list[str], inputs: tuple) -> dict[str, Tensor]:
    """The input each named conv sees on ``inputs`` (via forward pre-hooks)."""
    seen: dict[str, Tensor] = {}
    handles = []
    for name in names:
        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen.setdefault(name, args[0].detach())
        handles.append(gm.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            gm(*inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and \
        not x.is_contiguous()


def _emit_layer(name: str, conv: nn.Conv2d, live: Tensor, x: Tensor, orig: nn.Conv2d,
                kernel: str, density: float) -> tuple[nn.Module, LayerReport]:
    k = conv.kernel_size[0]
    ho, wo = (x.shape[-2] + 2 * (k // 2) - k) // conv.stride[0] + 1, \
        (x.shape[-1] + 2 * (k // 2) - k) // conv.stride[0] + 1
    # candidates get the input's memory format (a channels_last input with NCHW weights
    # takes a slow path in oneDNN)
    fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
    dense = dense_form(conv, live).to(memory_format=fmt)
    n_live = int(live.sum())
    if n_live == live.numel():
        choice_kernel, reason, new = "dense", "all stripes live", dense
    else:
        stripe = stripe_form(conv, live).to(memory_format=fmt)
        denses = [dense]
        if isinstance(dense, CroppedConv2d) and kernel == "probe":  # pad + crop may cost more
            denses.append(dense_form(conv, live, full=True).to(memory_format=fmt))
        c = choose(denses, stripe, conv, live, x, policy=kernel, density=density)
        choice_kernel, reason = c.kernel, c.reason
        new = stripe if c.kernel == "stripe" else denses[c.index]
        dense = denses[c.index]
    new.train(conv.training)
    s_macs = stripe_macs(live, conv.in_channels, (ho, wo))
    if choice_kernel == "stripe":
        emitted, form = s_macs, "StripeConv2d"
    else:
        kh, kw = dense.kernel_size
        emitted = dense.out_channels * dense.in_channels * kh * kw * ho * wo
        form = f"{type(dense).__name__} {kh}x{kw}"
    report = LayerReport(
        kernel=choice_kernel, form=form, filters=(conv.out_channels, orig.out_channels),
        stripes=(n_live, live.numel()), positions=int(live.any(0).sum()), stripe_macs=s_macs,
        dense_macs=orig.out_channels * orig.in_channels * k * k * ho * wo, emitted_macs=emitted,
        reason=reason)
    return new, report


def finalize(model: nn.Module, example_inputs: Any = None, *, delta: float = 0.01,
             kernel: str = "probe", density: float = 0.0, round_to: int | str | None = "auto",
             rtol: float = 1e-4, check: bool = True) -> fx.GraphModule:
    """Rewrite a model with Filter Skeletons into an exact, smaller GraphModule (steps a-d).

    Args:
        model: a model whose convs carry skeletons (:func:`insert_skeletons`); not modified.
        example_inputs: inputs for tracing, probing and the exactness check (default: as in
            :func:`fxprune.trace`). The probe times each layer at the shape it sees here, on
            the model's device: give the batch size and layout you will run.
        delta: the stripe threshold (a stripe lives iff ``|fs| > delta``).
        kernel: ``"probe"`` (time both forms per layer, keep the stripe form only where it is
            faster), ``"density"`` (stripe form iff the live density <= ``density``),
            ``"dense"`` or ``"stripe"`` (force one form; for tests and measurements).
        round_to: the channel clean-up keeps a multiple of this many channels per group
            (``"auto"``: :func:`fxprune.auto_round_to` of the model's device; ``None``: every
            dead filter goes).
        rtol: tolerance of the exactness postcondition.
        check: compare the result with the thresholded model on the example inputs.
    """
    if kernel not in ("probe", "density", "dense", "stripe"):
        raise InputError(f"kernel must be 'probe', 'density', 'dense' or 'stripe', got {kernel!r}")
    was_training = model.training
    round_to = resolve_round_to(round_to, model)
    work, live = fold(model, delta)
    work.eval()
    gm = trace(work, example_inputs)
    inputs = gm.meta[EXAMPLE_INPUTS]
    analysis = analyze(gm)
    set_keepsets(analysis, dead_units(analysis, inputs, round_to))
    pruned = rewrite(gm)
    pruned.eval()
    manifest = pruned.meta.get(meta.MANIFEST) or {}
    mods = dict(pruned.named_modules())
    names = [n for n in live if isinstance(mods.get(n), nn.Conv2d)]  # (unused convs: absent)
    xs = _conv_inputs(pruned, names, inputs)
    reports: dict[str, LayerReport] = {}
    for name in names:
        if name not in xs:  # the conv is not called on these inputs
            continue
        conv = pruned.get_submodule(name)
        kept = manifest.get(f"{name}.weight", {}).get(0)
        mask = live[name] if kept is None else live[name][torch.tensor(kept, dtype=torch.long)]
        new, reports[name] = _emit_layer(name, conv, mask.to(conv.weight.device), xs[name],
                                         work.get_submodule(name), kernel, density)
        if new is not conv:  # the manifest describes channel cuts of the convs it names
            manifest = {k: v for k, v in manifest.items() if k.rpartition(".")[0] != name}
        _set_module(pruned, name, new)
    # a replaced conv's tensors are not channel cuts of the original any more (a file's
    # manifest is checked against them); load(path, model=fresh) cannot rebuild stripe forms
    # and says so (the saved weights do not fit the re-pruned model)
    pruned.meta[meta.MANIFEST] = manifest
    pruned.meta[STRIPES] = reports
    if check:
        with torch.no_grad():
            want, got = work(*inputs), pruned(*inputs)
        _compare(want, got, rtol)
    pruned.train(was_training)
    return pruned


def _compare(want: Any, got: Any, rtol: float) -> None:
    from fxprune.core.verify import flat_tensors

    a, b = flat_tensors(want), flat_tensors(got)
    for x, y in zip(a, b):
        scale = float(x.abs().max()) if x.numel() else 0.0
        if x.shape != y.shape or not torch.allclose(y, x, rtol=rtol, atol=rtol * max(scale, 1e-6)):
            err = float((x - y).abs().max()) if x.shape == y.shape else float("nan")
            raise VerificationError(
                f"the stripe-pruned model differs from the thresholded model (max abs err "
                f"{err:.3g}, shapes {tuple(x.shape)} / {tuple(y.shape)}). This is a bug in "
                "fxprune; please report it with the model.")
    if len(a) != len(b):
        raise VerificationError("the stripe-pruned model returns a different number of outputs")
