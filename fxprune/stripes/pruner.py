"""StripePruner: SWP training (Filter Skeleton + L1 + per-step threshold) and its finalize.

Usage::

    pruner = fxprune.stripes.StripePruner(model, alpha=1e-5, delta=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    pruner.attach(opt)          # every opt.step(): fs.grad += alpha*sign(fs), then threshold
    ...train...
    small = pruner.finalize()   # exact vs the thresholded model (eval mode)

The same machinery backs ``SoftPruner(method="swp")`` (``fxprune/train/methods/swp.py``).
"""

from __future__ import annotations

__all__ = ["StripePruner"]

import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from fxprune.errors import InputError
from fxprune.ir.hooks import Handles
from fxprune.stripes.finalize import finalize
from fxprune.stripes.skeleton import (
    following_norms,
    insert_skeletons,
    live_stripes,
    regularize,
    skeleton_convs,
    threshold,
)


class StripePruner:
    """Stripe-wise pruning of ``model`` (trained in place).

    Args:
        model: the model; its eligible convs get a Filter Skeleton ``fs`` now (in place, see
            :func:`fxprune.stripes.insert_skeletons`); the others are in ``self.skipped``.
        alpha: L1 strength on ``fs`` (paper: 1e-5 on CIFAR).
        delta: a stripe lives iff ``|fs| > delta`` (paper: 0.01).
        example_inputs: inputs for :meth:`finalize` (tracing, the timing probe, the check).
        ignore: conv names that get no skeleton.
        kernel, density: the per-layer kernel choice of :func:`fxprune.stripes.finalize`.
        regularize_1x1: 1x1 convs' skeletons get the L1 and the threshold too (default True,
            fxprune's choice). False is the authors' code: their ResNet's 1x1 projection
            convs carry a skeleton that is neither regularised nor thresholded (a free
            per-filter scale), so those convs are never pruned by stripes.
        granularity: what the budgeted mode (:meth:`prune_to`) removes: ``"stripe"`` (single
            stripes, :func:`fxprune.stripes.budget.budget_live`; :meth:`kept_macs` in SWP's
            stripe convention), ``"shape"`` (kernel row/column pairs) or ``"shape+filter"``
            (those and whole filters of convs that alone produce their channels), both
            :func:`fxprune.stripes.shape.shape_live`, whose :meth:`kept_macs` is what
            ``finalize(kernel="dense")`` emits (:func:`~fxprune.stripes.shape.realized_fraction`).
    """

    def __init__(self, model: nn.Module, *, alpha: float = 1e-5, delta: float = 0.01,
                 example_inputs: Any = None, ignore: tuple[str, ...] | list[str] = (),
                 kernel: str = "probe", density: float = 0.0, regularize_1x1: bool = True,
                 granularity: str = "stripe"):
        for name, v in (("alpha", alpha), ("delta", delta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise InputError(f"{name} must be a number >= 0, got {v!r}")
        if granularity not in ("stripe", "shape", "shape+filter"):
            raise InputError("granularity must be 'stripe', 'shape' or 'shape+filter', got "
                             f"{granularity!r}")
        self.granularity = granularity
        self.model = model
        self.alpha, self.delta = float(alpha), float(delta)
        self.example_inputs = example_inputs
        self.kernel, self.density = kernel, density
        self.names, self.skipped = insert_skeletons(model, tuple(ignore))
        if not self.names:
            raise InputError(
                f"{type(model).__name__} has no conv that can carry a Filter Skeleton (groups 1,"
                " dilation 1, odd square kernel with padding K//2): "
                + "; ".join(f"{n}: {w}" for n, w in list(self.skipped.items())[:5]))
        self.norms = following_norms(model, self.names)
        self.regularize_1x1 = bool(regularize_1x1)
        self.steps = 0
        self._layer_macs: tuple[int, dict[str, int]] | None = None
        self._consumers: dict[str, dict[str, Tensor]] | None = None  # "shape+filter"
        self._short = False  # warned that the budget cannot be reached
        self._live: dict[str, Tensor] = {}  # the last step's threshold, for after_step
        # budgeted mode (prune_to): the stripes removed so far, held at every step
        self.budget: dict[str, Tensor] = {}

    # --- training ----------------------------------------------------------------------------
    def _convs(self) -> dict[str, nn.Module]:
        """The skeleton convs that are regularised and thresholded (without the 1x1 ones
        when ``regularize_1x1`` is False)."""
        convs = skeleton_convs(self.model)
        if self.regularize_1x1:
            return convs
        return {n: m for n, m in convs.items() if tuple(m.kernel_size) != (1, 1)}

    @torch.no_grad()
    def _hold_budget(self) -> None:
        convs = skeleton_convs(self.model)
        for n, mask in self.budget.items():
            convs[n].fs.mul_(mask)

    def _norm_modules(self) -> dict[str, nn.Module]:
        mods = dict(self.model.named_modules())
        return {c: mods[b] for c, b in self.norms.items()}

    def parameters(self) -> list[nn.Parameter]:
        """The skeletons ``fs`` (also in ``model.parameters()``)."""
        return [m.fs for m in skeleton_convs(self.model).values()]

    def step(self) -> None:
        """One training iteration's SWP work (after backward, before the optimizer step)."""
        convs = self._convs()
        regularize(convs, self.alpha)
        self._hold_budget()
        self._live = threshold(convs, self._norm_modules(), self.delta)
        self.steps += 1

    @torch.no_grad()
    def after_step(self) -> None:
        """After the optimizer step: a stripe :meth:`step` found dead, and the BatchNorm entries
        of a filter it found dead, are exactly 0 again unless the step revived them past
        ``delta`` (the next threshold would zero them anyway, so training is unchanged).
        Without this, momentum leaves them at tiny values that decay into float32 denormals
        within a few hundred steps, and a CPU convolution fed denormals runs about 10x slower
        (a 16-epoch SWP row: 5 s per step against 0.4 s)."""
        live = self._live
        if not live:
            return
        convs = skeleton_convs(self.model)
        norms = self._norm_modules()
        for n, keep in live.items():
            fs = convs[n].fs
            now = keep | (fs.abs() > self.delta)  # dead before the step, not revived by it
            fs.mul_(now.to(fs.dtype))
            bn = norms.get(n)
            if bn is not None:
                alive = now.flatten(1).any(1).to(bn.weight.dtype)
                bn.weight.mul_(alive)
                bn.bias.mul_(alive)

    def apply_masks(self) -> None:
        """Apply the threshold now (no regulariser): the model becomes what finalize matches."""
        self._hold_budget()
        threshold(self._convs(), self._norm_modules(), self.delta)

    def prune_to(self, fraction: float, example_inputs: Any = None) -> float:
        """Budgeted mode: remove the stripes with the lowest per-filter normalised skeleton
        magnitude (:func:`fxprune.stripes.budget.budget_live`; with ``granularity="shape"``
        whole kernel row/column pairs, :func:`~fxprune.stripes.shape.shape_live`) until
        :meth:`kept_macs` is at most ``fraction``; removed stripes stay removed (held before
        every threshold). Returns the kept MACs."""
        from fxprune.stripes.budget import budget_live
        from fxprune.stripes.shape import shape_live

        self.kept_macs(example_inputs)  # counts the dense per-layer MACs once
        assert self._layer_macs is not None
        total, per = self._layer_macs
        convs = self._convs()
        if self.granularity == "stripe":
            live = budget_live(convs, self.live(), per, total, float(fraction))
        else:
            live = shape_live(convs, self.live(), per, total, float(fraction),
                              consumers=self._shape_consumers(example_inputs),
                              modules=dict(self.model.named_modules()),
                              norms=self._norm_modules())
        for n in convs:
            if not bool(live[n].all()) or n in self.budget:
                self.budget[n] = live[n].to(convs[n].fs.dtype)
        self.apply_masks()
        kept = self.kept_macs()
        if kept > float(fraction) + 0.01 and not self._short:
            self._short = True
            warnings.warn(
                f"SWP budget: asked for {float(fraction):.3f} of the MACs, reached {kept:.3f}; "
                f"nothing more is removable at granularity {self.granularity!r} (every conv "
                "keeps its centre and one filter; only the skeleton convs are cut). Hint: a "
                "finer granularity, or prune the remaining layers with fxprune.compress.",
                stacklevel=2)
        return kept

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Run :meth:`step` before every ``optimizer.step()`` and :meth:`after_step` after it;
        adds the skeletons to the
        optimizer (a new param group with its defaults) if it does not hold them. Returns a
        removable handle."""
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [p for p in self.parameters() if id(p) not in held]
        if missing:
            optimizer.add_param_group({"params": missing})
        return Handles([
            optimizer.register_step_pre_hook(lambda _opt, _args, _kwargs: self.step()),
            optimizer.register_step_post_hook(lambda _opt, _args, _kwargs: self.after_step())])

    # --- results -----------------------------------------------------------------------------
    def live(self) -> dict[str, Tensor]:
        """``{conv: live stripes [O, K, K]}`` under the threshold."""
        return {n: live_stripes(m, self.delta) for n, m in skeleton_convs(self.model).items()}

    def live_density(self) -> float:
        """Fraction of the skeleton convs' stripes that are live."""
        live = self.live().values()
        return sum(int(x.sum()) for x in live) / max(1, sum(x.numel() for x in live))

    def kept_macs(self, example_inputs: Any = None) -> float:
        """MACs kept under SWP's stripe convention (§6.3), as a fraction of the dense model's:
        every skeleton conv costs its live-stripe fraction of its dense MACs (with
        ``granularity="shape"``: its live bounding box's share), other layers are dense. Not
        measured on a rewrite (the finalized model's MACs are in
        ``fxprune.count(pruner.finalize())``); the dense per-layer MACs are counted once."""
        from fxprune.stripes.shape import realized_fraction

        if self._layer_macs is None:
            from fxprune.costs.count import count

            inputs = example_inputs if example_inputs is not None else self.example_inputs
            c = count(self.model, inputs)
            per = {n: v.get("macs", 0) for n, v in c.per_layer.items()}  # every layer: a
            per.update({n: per.get(n, 0) for n in self.names})  # cut can reach non-skeletons
            self._layer_macs = (c.macs, per)
        total, per = self._layer_macs
        live = self.live()
        if self.granularity != "stripe":
            return realized_fraction(live, per, total, self._shape_consumers(example_inputs))
        kept = total - sum(per[n] * (1 - float(live[n].float().mean())) for n in live)
        return kept / max(1, total)

    def _shape_consumers(self, example_inputs: Any = None) -> dict[str, dict[str, Tensor]]:
        """``"shape+filter"``: the exclusive producers and their consumers, found once."""
        if self.granularity != "shape+filter":
            return {}
        if self._consumers is None:
            from fxprune.stripes.shape import exclusive_consumers

            inputs = example_inputs if example_inputs is not None else self.example_inputs
            self._consumers = exclusive_consumers(self.model, inputs, self.names)
        return self._consumers

    def finalize(self, example_inputs: Any = None, **kwargs: Any) -> fx.GraphModule:
        """The exact compact model (see :func:`fxprune.stripes.finalize`)."""
        kwargs.setdefault("kernel", self.kernel)
        kwargs.setdefault("density", self.density)
        return finalize(self.model, example_inputs if example_inputs is not None
                        else self.example_inputs, delta=self.delta, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """Settings and step count (the skeletons themselves live in the model's state_dict)."""
        return {"alpha": self.alpha, "delta": self.delta, "steps": self.steps,
                "granularity": self.granularity,
                "budget": {n: m.clone() for n, m in self.budget.items()}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.alpha, self.delta, self.steps = float(sd["alpha"]), float(sd["delta"]), \
            int(sd["steps"])
        self.budget = {n: m.clone() for n, m in sd.get("budget", {}).items()}
