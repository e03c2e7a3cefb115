"""SoftPruner: training-time (soft) structured pruning inside any training loop.

The masks come from the same analysis as :func:`fxprune.compress` (trace -> analyze -> score
-> allocate -> select): groups, coupled units, frozen units, ``ratio``/``target_flops``/
``ratios``/``allocation``/``round_to``/``ignore``/``residual``, any criterion of
``fxprune.passes``. The per-group ratios are allocated once, at construction; a method then
chooses *which* units each group keeps (:mod:`fxprune.train.methods`). Keep-sets become
per-parameter masks on the user's model (:mod:`fxprune.train.masks`), enforced through the
optimizer's own step hooks (no wrapper: DDP, AMP grad scalers and any optimizer work), and
:meth:`SoftPruner.finalize` compiles the compact model through :func:`fxprune.rewrite`, exact
against the masked model (:mod:`fxprune.train.fold`).
"""

from __future__ import annotations

__all__ = ["SoftPruner"]

import copy
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxprune.core.analyze import analyze
from fxprune.core.rewrite import rewrite
from fxprune.core.select import select, set_keepsets
from fxprune.core.trace import EXAMPLE_INPUTS, trace
from fxprune.costs.count import count
from fxprune.criteria import GroupScoring, get_criterion
from fxprune.errors import InputError
from fxprune.ir import meta
from fxprune.ir.hooks import Handles
from fxprune.plan.allocate import ALLOCATION, AllocationPlan
from fxprune.plan.checks import check_inputs, check_prunable
from fxprune.plan.compress import score
from fxprune.train.arguments import (
    AUTO_GRAD_NORM,
    allocation_plan,
    apply_variant,
    check_options,
    first_inputs,
)
from fxprune.train.checkpoint import pruner_state, read_pruner_state
from fxprune.train.fold import compile_compact
from fxprune.train.masks import Masks, Snapshot
from fxprune.train.methods import Keep, get_method
from fxprune.train.methods._attribute import run_eval

TRAIN_META = "fxprune.train"  # compact gm.meta: {"method", "epoch", "bn", "residual", ...}



def _criterion_name(c: Any) -> str | None:
    if c is None or isinstance(c, str):
        return c
    return str(getattr(c, "name", None) or getattr(c, "__name__", None) or repr(c))


class SoftPruner:
    """Soft-prune ``model`` while you train it; :meth:`finalize` gives the compact model.

    Args:
        model: the model to train, unwrapped (wrap it in DDP *after* creating the pruner, or
            pass ``ddp.module``). It is modified in place: masked weights are zeroed.
        ratio: the amount to prune, as in :func:`fxprune.compress` (with
            ``allocation="uniform"``: the fraction of every group's channels).
        method: ``"sfp"``, ``"soft"`` (SFP's schedule with ``criterion=``), ``"fpgm"``,
            ``"mfp"``, ``"fppmo"`` (:func:`fxprune.train.list_methods`).
        criterion: a criterion name or function (default: the method's).
        example_inputs: inputs at the training resolution (default: the first batch of
            ``data``, else timm's input size or 1x3x224x224). Finalize is exact at this size.
        target_flops, target_params, ratios, allocation, max_ratio, clr_lambda, clr_cost,
            round_to: the allocation, as in :func:`fxprune.compress` (the fields of
            :class:`~fxprune.AllocationPlan`; ``max_ratio`` defaults to 0.9 here, and
            ``target_latency`` is compress's only). The per-group amounts are fixed at
            construction (the kept widths, hence ``kept_macs``, do not change in training);
            for the same options and criterion they are those of :func:`fxprune.compress`.
            SWP takes ``target_flops`` itself (its budgeted mode).
        plan: the same options as one :class:`~fxprune.AllocationPlan`
            (``SoftPruner(model, plan=AllocationPlan(0.5, allocation="global"))``); keywords
            set beside it are merged in, an option given both ways with two values raises.
        ignore, residual: as in :func:`fxprune.compress` (:class:`~fxprune.AnalysisOptions`).
        interval: re-select every ``interval`` epochs (SFP's ``epoch_prune``).
        data: an iterable of ``(x, y)`` batches of a **validation split of the training data**
            (never the test set), for methods that evaluate masks (mfp, fppmo) and data-driven
            criteria (taylor). It must be re-iterable (a list or a DataLoader).
        seed: seeds the randomized methods and criteria (identical on every rank).
        bn: ``"keep"`` (default, the SFP/FPGM authors' code): BatchNorm is left alone, a
            pruned channel emits ``relu(BN(0))`` and ``finalize`` folds that constant into the
            next layers (exact; where zero padding makes it vary spatially, the compact model
            is tied to the example inputs' resolution). ``"zero"``: the pruned channels'
            BatchNorm beta and running mean are zeroed too, so a pruned channel is exactly 0
            and the compact model has no folded constants (any resolution); but a channel
            that is 0 before a ReLU gets no gradient, so its filter cannot come back. See
            :mod:`fxprune.train.masks` and :mod:`fxprune.train.fold`.
        hold: ``"step"``: masks are re-applied after every optimizer step; ``"epoch"``: at
            construction and at every due :meth:`epoch_end` only, so pruned filters train in
            between and can come back (SFP). Default: the method's (fpgm: step; others: epoch).
        epochs: the length of the run in epochs, when known (:func:`fxprune.train.fit`
            sets it). With it, the last ``settle`` epochs (default 1; 0 = the authors'
            schedule) train under the final selection, made once at their start (the method's
            own, e.g. FPPMO's top probabilities, else one last re-selection) and held after
            every step, so ``finalize`` compiles the network that was trained. fxprune's
            deviation, measured on digits: without it, SFP's last mask zeroes filters that were
            fully active during the last epoch (BatchNorm rescales a regrown filter, however
            small, to full strength). Without ``epochs`` the final selection is applied only in
            ``finalize``.
        max_grad_norm: clip the global gradient norm before every optimizer step (in the
            step pre-hook, after DDP's all-reduce and the AMP unscale). ``"auto"`` (default):
            5.0 for ``hold="epoch"`` (sfp, soft, mfp), None otherwise and for fppmo (chosen
            on validation splits: docs/training.md). fxprune's
            deviation from the authors' code, measured: a zeroed filter's first gradient
            through BatchNorm is scaled by ``gamma / sqrt(eps)`` (316x), the regrown filters'
            norms exploded (~6 -> ~250 on digits) and SFP ended at 55% instead of 97%.
            ``None`` restores the authors' behaviour.
        variant: ``"fxprune"`` (default) or ``"paper"``: the method's authors' settings
            (:func:`fxprune.train.methods.paper_settings`); a conflicting keyword raises.
        score_recalibration, calibration_data: MFP/FPPMO score each candidate on a copy whose
            BatchNorm statistics are recomputed on this many batches of ``calibration_data``
            (training data; ``fit`` sets its loader when None) first. 0 (default): off.
        scoring: which slices magnitude criteria score, as in :func:`fxprune.compress`
            (:class:`~fxprune.GroupScoring` or ``"all"``, ``"all/none/sum"``...; default:
            the producers' filters). It applies to every selection (the allocation's and the
            method's re-selections).
        method_options: the method's own options (e.g. ``pool=``, ``switch=`` for mfp;
            ``lam=``, ``eta=`` for fppmo); unknown ones raise :class:`InputError`.
    """

    def __init__(self, model: nn.Module, ratio: float | None = None, *, method: str = "sfp",
                 criterion: Any = None, example_inputs: Any = None,
                 target_flops: float | None = None, target_params: float | None = None,
                 ratios: Mapping[str, float] | None = None, allocation: str = "uniform",
                 max_ratio: float = 0.9, clr_lambda: float = 1.0, clr_cost: Any = "authors",
                 round_to: Any = None, plan: AllocationPlan | None = None, ignore: Any = None,
                 residual: str = "coupled", interval: int = 1, data: Any = None, seed: int = 0,
                 bn: str = "keep", hold: str | None = None, epochs: int | None = None,
                 settle: int = 1, max_grad_norm: float | str | None = "auto",
                 variant: str = "fxprune", score_recalibration: int = 0,
                 calibration_data: Any = None, scoring: Any = None,
                 **method_options: Any):
        eng, method_options, target_flops = apply_variant(
            variant, method, {"max_grad_norm": max_grad_norm, "settle": settle,
                              "residual": residual}, method_options, target_flops)
        max_grad_norm, settle, residual = eng["max_grad_norm"], eng["settle"], eng["residual"]
        check_options(model, interval, bn, hold, seed, epochs, settle, max_grad_norm,
                      score_recalibration)
        self.variant, self.score_recalibration = variant, score_recalibration
        self.calibration_data = calibration_data
        plan = allocation_plan(plan, ratio=ratio, target_flops=target_flops,
                               target_params=target_params, ratios=ratios,
                               allocation=allocation, max_ratio=max_ratio,
                               clr_lambda=clr_lambda, clr_cost=clr_cost, round_to=round_to)
        self.epochs, self.settle = epochs, settle
        self.method_name = method
        self.method = get_method(method)(**method_options)
        self.model, self.data, self.seed, self.interval, self.bn = model, data, seed, interval, bn
        self.hold = hold or self.method.hold
        self.max_grad_norm = (AUTO_GRAD_NORM if self.hold == "epoch" and self.method.auto_clip
                              else None) if max_grad_norm == "auto" else max_grad_norm
        self.criterion = criterion if criterion is not None else self.method.default_criterion
        if self.criterion is not None:
            get_criterion(self.criterion)
        self.scoring = GroupScoring.parse(scoring)
        plan = plan.resolved(model)
        self.round_to: int | None = plan.round_to  # type: ignore[assignment]
        self.residual = residual
        if example_inputs is None and data is not None:
            example_inputs = first_inputs(data, model)
        gm = trace(model, example_inputs)
        self.inputs: tuple = gm.meta[EXAMPLE_INPUTS]
        check_inputs(model, self.inputs)
        self.analysis = analyze(gm, ignore=ignore, residual=residual)
        self.epoch = 0
        # time spent inside the pruner (wall and process CPU seconds): masks in the optimizer
        # hooks and apply_masks, selection in the constructor and epoch_end
        self.stats = {"mask_s": 0.0, "mask_cpu_s": 0.0, "select_s": 0.0, "select_cpu_s": 0.0,
                      "steps": 0, "selections": 0}
        self._macs: dict[tuple[tuple[int, ...], ...], float] = {}
        self._base_macs = max(1, count(gm, self.inputs).macs)
        self.method.prepare(self)
        self.keep: Keep = {}
        self.masks: Masks | None = None
        with self._timed("select"):
            self.ratios, self.allocation = self._allocate(plan)
            self.counts = {g: len(k.indices) for g, k in self.select(self._alloc_scores).items()}
            self._set_keep(self.method.initial(self))
        self.apply_masks()

    # --- selection --------------------------------------------------------------------------
    def _allocate(self, plan: AllocationPlan) -> tuple[dict[int, float], dict[str, Any]]:
        """The per-group ratios, fixed for the run: the plan :func:`fxprune.compress` runs,
        scored with the method's criterion (``"l2"`` for a method without one)."""
        plan.amount()
        if plan.target_latency is not None:
            raise InputError("SoftPruner has no target_latency (it times pruned models): give "
                             "ratio=, ratios=, target_flops= or target_params=. Hint: "
                             "fxprune.compress(model, target_latency=...) then fine-tune.")
        if plan.empty:
            if not self.method.channel_selection:
                self._alloc_scores: dict[int, torch.Tensor] = {}
                return {g.id: 0.0 for g in self.analysis.groups}, {"allocation": "none"}
            raise InputError("nothing to prune: give ratio=, target_flops=, target_params= or "
                             "ratios={...}. Hint: SoftPruner(model, 0.4) soft-prunes 40% of the "
                             "channels of every group.")
        if plan.prunes():
            check_prunable(self.analysis)
        criterion = self.criterion or "l2"
        self._alloc_scores = self.scores(criterion)
        chosen = plan.apply(self.analysis, self._alloc_scores,
                            count_rule=get_criterion(criterion).count_rule)
        return dict(chosen.ratios), chosen.info

    def scores(self, criterion: Any) -> dict[int, torch.Tensor]:
        """Scores of every prunable group under ``criterion``, on the current weights."""
        return score(self.analysis, criterion, data=self.data, seed=self.seed,
                     scoring=self.scoring)

    def select(self, scores: Mapping[int, torch.Tensor]) -> Keep:
        """Keep-sets for these scores at the allocated per-group ratios."""
        return select(self.analysis, dict(scores), self.ratios, round_to=self.round_to)

    def full_keep(self) -> Keep:
        """Every group keeps all of its units (nothing pruned)."""
        return {g.id: meta.KeepSet(g.id, g.size, tuple(range(g.size)))
                for g in self.analysis.groups}

    def normalize(self, keep: Keep) -> Keep:
        """Complete ``keep`` as :func:`fxprune.select` does (>= 1 channel per value)."""
        return set_keepsets(self.analysis, dict(keep))

    def _set_keep(self, keep: Keep) -> None:
        self.keep = self.normalize(keep)
        self.masks = Masks(self.model, self.analysis, self.keep, self.bn)
        self.stats["selections"] += 1

    @contextmanager
    def trial(self, keep: Keep) -> Iterator[Keep]:
        """Apply ``keep``'s masks temporarily (weights restored on exit): a neighbour network."""
        keep = self.normalize(keep)
        masks = Masks(self.model, self.analysis, keep, self.bn)
        with Snapshot(masks.tensors()):
            masks.apply()
            yield keep

    def evaluate(self, keep: Keep, attribute: Any) -> float:
        """``attribute(model)`` (eval mode, no grad) of the network masked by ``keep`` (with
        ``score_recalibration``: of a copy with recalibrated BatchNorm statistics)."""
        with self.trial(keep):
            if self.score_recalibration <= 0 or self.calibration_data is None:
                return run_eval(self.model, attribute)
            from fxprune.core.recalibrate import recalibrate_bn

            work = copy.deepcopy(self.model)
            recalibrate_bn(work, self.calibration_data, self.score_recalibration)
            return run_eval(work, attribute)

    # --- training hooks ---------------------------------------------------------------------
    @contextmanager
    def _timed(self, kind: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.stats[f"{kind}_s"] += time.perf_counter() - t0
            self.stats[f"{kind}_cpu_s"] += time.process_time() - c0

    def apply_masks(self) -> None:
        """Zero the pruned entries now."""
        if self.masks is not None:
            with self._timed("mask"):
                self.masks.apply()

    def masks_hold(self) -> bool:
        """True when every pruned entry of the model is exactly zero."""
        return self.masks is None or self.masks.holds()

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.max_grad_norm is not None:
            with self._timed("mask"):
                nn.utils.clip_grad_norm_([p for p in self.model.parameters()
                                          if p.grad is not None], self.max_grad_norm)
        if self.method.mask_grads and self.masks is not None:
            with self._timed("mask"):
                self.masks.mask_grads()

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.stats["steps"] += 1
        if self.hold == "step" or self.settled:
            self.apply_masks()

    def attach(self, optimizer: torch.optim.Optimizer) -> Handles:
        """Hook ``optimizer.step()`` (``register_step_pre_hook``/``register_step_post_hook``).

        Returns a handle whose ``remove()`` detaches the hooks. With ``hold="step"`` the masks
        are applied now and after every step; methods that mask gradients (fpgm) zero them
        before every step. Works with DDP, ``torch.amp.GradScaler`` (a skipped step runs no
        hook) and any ``torch.optim.Optimizer``.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InputError(f"attach() needs a torch.optim.Optimizer, got "
                             f"{type(optimizer).__name__}")
        handles = [optimizer.register_step_pre_hook(self._pre_step),
                   optimizer.register_step_post_hook(self._post_step),
                   *self.method.attach(self, optimizer)]
        if self.hold == "step":
            self.apply_masks()
        return Handles(handles)

    def epoch_end(self, force: bool = False) -> None:
        """Call after every training epoch: every ``interval`` epochs (after epochs 0,
        interval, 2*interval, ... as the authors' ``epoch % epoch_prune == 0``), or when
        ``force`` (the authors also prune after the last epoch), the method re-selects, switches
        or updates and the masks are applied."""
        due = force or self.epoch % self.interval == 0
        was_settled = self.settled
        self.epoch += 1
        if was_settled:  # training under the final selection: nothing to re-select
            self.apply_masks()
            return
        settled = self.settled
        if not (due or settled):
            return
        with self._timed("select"):
            keep = self.method.final(self) if settled else None
            if keep is None:
                keep = self.method.update(self)
            if keep is not None:
                self._set_keep(keep)
        self.apply_masks()

    @property
    def settled(self) -> bool:
        """True for the last ``settle`` epochs of a run of known length (``epochs``): the
        final selection (the method's own, e.g. FPPMO's top probabilities, else one last
        re-selection) is made at the start of them and then held after every step, so the
        compact model is the network that was trained under its masks."""
        return self.epochs is not None and self.epoch >= self.epochs - self.settle

    # --- results ----------------------------------------------------------------------------
    @property
    def kept_macs(self) -> float:
        """MACs of the compact model of the current selection / the dense model's (measured on
        the rewrite, cached per selection: where a group spans layers of different resolutions,
        e.g. option-A shortcuts, the MACs depend on which units are kept, not only how many)."""
        own = getattr(self.method, "kept_macs", None)
        if own is not None:  # a method that does not only select channels (SWP's stripes)
            return float(own(self))
        key = tuple(self.keep[g.id].indices for g in self.analysis.groups)
        if key not in self._macs:
            set_keepsets(self.analysis, dict(self.keep))
            small = rewrite(self.analysis.gm, check=False)
            self._macs[key] = count(small, self.inputs).macs / self._base_macs
        return self._macs[key]

    def finalize(self) -> fx.GraphModule:
        """The compact GraphModule of the current selection (the method's final one, e.g.
        FPPMO's top probabilities), with the masks applied to the model first.

        Its outputs equal the soft-masked model's (eval mode, at the example inputs' shape,
        rtol 1e-4); this is checked, a difference raises :class:`VerificationError`.
        """
        keep = self.method.final(self)
        if keep is not None:
            self._set_keep(keep)
        self.apply_masks()
        compact = compile_compact(self.model, self.analysis, self.keep, self.inputs,
                                  seed=self.seed)
        compact.meta[ALLOCATION] = {**self.allocation, "ratios": dict(self.ratios)}
        compact.meta[TRAIN_META] = {"method": self.method_name, "epoch": self.epoch,
                                    "bn": self.bn, "residual": self.residual,
                                    "criterion": _criterion_name(self.criterion)}
        compact.train(self.model.training)
        return self.method.finalize(self, compact)

    # --- checkpoints and DDP ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks (keep-sets), method state (RNG included) and epoch; ``torch.save``-able and
        loadable with ``weights_only=True``."""
        return pruner_state(self.method_name, self.epoch, self.analysis.groups, self.keep,
                            self.method.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into a pruner built with the same arguments. Weights are
        not touched: load the model's own state dict as well (masks are already applied in
        it)."""
        self.epoch, keep, method_state = read_pruner_state(state, self.method_name,
                                                           self.analysis.groups)
        self._set_keep(keep)
        self.method.load_state_dict(method_state)

    def broadcast(self, src: int = 0) -> None:
        """Make masks, method state and masked weights those of rank ``src`` (no-op without an
        initialized ``torch.distributed``). Call it after every ``epoch_end`` under DDP."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        obj = [self.state_dict()]
        dist.broadcast_object_list(obj, src=src)
        self.load_state_dict(obj[0])
        with torch.no_grad():
            for t in self.masks.tensors() if self.masks is not None else []:
                dist.broadcast(t.data, src=src)

    def __repr__(self) -> str:
        pruned = self.masks.pruned_entries if self.masks is not None else 0
        return (f"SoftPruner(method={self.method_name!r}, epoch={self.epoch}, bn={self.bn!r}, "
                f"hold={self.hold!r}, residual={self.residual!r}, pruned entries={pruned})")

