"""SWP: stripe-wise pruning with a Filter Skeleton (Meng et al., NeurIPS 2020; algorithms.md §6).

Not a channel selection: every eligible conv gets a Filter Skeleton ``fs`` (``[O, K, K]``,
init 1, trainable, in the model's ``state_dict``); before every optimizer step
``fs.grad += alpha * sign(fs)`` and the threshold zeroes ``fs`` (and its grad) where
``|fs| <= delta`` and the following BatchNorm's affine entries of filters with no live stripe.
The per-layer amounts are learned (no ``ratio=``). ``finalize`` replaces the
engine's compact model with the stripe rewrite (:func:`fxprune.stripes.finalize`): exact
channel clean-up, dead kernel positions dropped, and per layer the faster of a dense conv and
the position-grouped stripe conv. The machinery lives in :mod:`fxprune.stripes`; this file only
plugs it into :class:`~fxprune.train.SoftPruner`.

Options: ``alpha`` (1e-5, the paper's CIFAR value), ``delta`` (0.01), ``kernel``
(``"probe"``, ``"density"``, ``"dense"``, ``"stripe"``), ``density`` (the threshold of
``kernel="density"``), ``regularize_1x1`` (True; False is the authors' code: 1x1 projection
convs' skeletons are neither regularised nor thresholded) and ``target_flops`` (None: the
paper's learned amounts; F: fxprune's budgeted mode, the weakest stripes by per-filter
normalised skeleton magnitude removed on a linear ramp over the epochs until the
stripe-convention MACs reach F, :mod:`fxprune.stripes.budget`;
``granularity="shape"`` removes whole kernel row/column pairs instead, until the MACs of the
convs' live bounding boxes reach F, so ``kernel="dense"`` realizes them;
``SoftPruner(method="swp", target_flops=F)`` passes it here). The channel clean-up rounds kept
widths to the pruner's ``round_to``. Deviations from the authors' code, each switchable: the
gradient clip (``hold="epoch"`` makes ``max_grad_norm="auto"`` apply: pass None) and the L1 on
1x1 convs (``regularize_1x1``); ``variant="paper"`` sets both to the authors'.
"""

from __future__ import annotations

__all__ = ["SWP"]

from typing import TYPE_CHECKING, Any

from fxprune.errors import InputError
from fxprune.stripes import StripePruner
from fxprune.stripes import finalize as stripe_finalize
from fxprune.train.methods import (
    Keep,
    Method,
    PaperSettings,
    PrunerContext,
    register_method,
)

if TYPE_CHECKING:
    import torch.fx as fx
    import torch.optim


@register_method("swp")
class SWP(Method):
    """Filter Skeleton + L1 + per-step threshold; finalize emits the stripe rewrite."""

    name = "swp"
    default_criterion = None
    hold = "epoch"
    options = {"alpha": 1e-5, "delta": 0.01, "kernel": "probe", "density": 0.0,
               "target_flops": None, "regularize_1x1": True, "granularity": "stripe"}
    paper = PaperSettings(pruner={"max_grad_norm": None, "settle": 0},
                          options={"regularize_1x1": False}, milestones=(0.5, 0.75),
                          gamma=0.1, weight_decay=1e-4,
                          source="fxmeng/Pruning-Filter-in-Filter main.py (from scratch there)")
    channel_selection = False  # the amounts are learned: no ratio= (the engine allows none)

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.stripes: StripePruner | None = None

    def prepare(self, pruner: PrunerContext) -> None:
        o = self.opts
        f = o["target_flops"]
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float))
                              or not 0.0 < f < 1.0):
            raise InputError(f"method 'swp': target_flops must be the fraction of MACs to keep, "
                             f"in (0, 1), got {f!r}")
        self.stripes = StripePruner(pruner.model, alpha=o["alpha"], delta=o["delta"],
                                    kernel=o["kernel"], density=o["density"],
                                    regularize_1x1=o["regularize_1x1"],
                                    granularity=o["granularity"])

    def _ramp(self, pruner: PrunerContext, final: bool) -> float | None:
        """Budgeted mode: the MACs fraction due after ``pruner.epoch`` epochs, linear from 1
        to ``target_flops`` over the epochs before the last ``settle`` (which train at the
        budget; default 1); None in the learned mode."""
        f = self.opts["target_flops"]
        if f is None:
            return None
        epochs = pruner.epochs
        if final or epochs is None:
            return float(f)
        ramp = max(1, epochs - max(1, int(pruner.settle)))
        return 1.0 - (1.0 - float(f)) * min(1.0, pruner.epoch / ramp)

    def update(self, pruner: PrunerContext) -> Keep | None:
        frac = self._ramp(pruner, final=False)
        if frac is not None and frac < 1.0:
            self._stripes().prune_to(frac, pruner.inputs)
        return None

    def final(self, pruner: PrunerContext) -> Keep | None:
        frac = self._ramp(pruner, final=True)
        if frac is not None:
            self._stripes().prune_to(frac, pruner.inputs)
        return None

    def _stripes(self) -> StripePruner:
        if self.stripes is None:
            raise InputError("method 'swp' is used before SoftPruner prepared it")
        return self.stripes

    def initial(self, pruner: PrunerContext) -> Keep:
        """Every channel kept: SWP removes channels only at finalize, where no stripe lives."""
        from fxprune.ir.meta import KeepSet

        return {g.id: KeepSet(g.id, g.size, tuple(range(g.size)))
                for g in pruner.analysis.groups}

    def attach(self, pruner: PrunerContext, optimizer: torch.optim.Optimizer) -> list[Any]:
        return [self._stripes().attach(optimizer)]

    def finalize(self, pruner: PrunerContext, compact: fx.GraphModule) -> fx.GraphModule:
        sp = self._stripes()
        sp.apply_masks()
        out = stripe_finalize(pruner.model, pruner.inputs, delta=sp.delta, kernel=sp.kernel,
                              density=sp.density, round_to=pruner.round_to)
        for key, value in compact.meta.items():  # the engine's records (method, epoch...)
            out.meta.setdefault(key, value)
        out.train(pruner.model.training)
        return out

    def kept_macs(self, pruner: PrunerContext) -> float:
        """MACs kept under SWP's stripe convention (see :meth:`StripePruner.kept_macs`)."""
        return self._stripes().kept_macs(pruner.inputs)

    def state_dict(self) -> dict[str, Any]:
        return self._stripes().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._stripes().load_state_dict(state)
