"""Compute one row of the accuracy benchmark (runs in a worker process).

Every method starts from the same dense baseline (per model and seed, trained once and kept in
``OUT/dense/``) and gets the same epochs and learning rate: fine-tuning after a one-shot cut, or
soft-pruning epochs then ``finalize()``. The schedule is cosine, with BatchNorm recalibration
after every mask update for the soft methods, except for the ``(paper)`` rows, which run their
authors' settings (:func:`fxprune.train.methods.paper_settings`: step schedule, no
recalibration, no clip, no settle epoch, residual scatter). The validation split (carved from the
training set) scores the masks of methods and criteria registered with ``needs_data`` (MFP,
FPPMO, Taylor); the test set is used only for the reported accuracies: it is wrapped in a
:class:`~fxprune.bench.accuracy.heldout.HeldOut` that raises when anything else iterates it.

Every one-shot row (a criterion's cut, Torch-Pruning's) reports three accuracies: right after
the cut (``acc_oneshot``), after :func:`fxprune.recalibrate_bn` on ``Preset.recal_batches``
training batches (``acc_oneshot_recal``; measured on a copy, the row's model is not changed
unless the recipe has ``recal``), and after fine-tuning (``acc``). With the ``recon`` part the
cut is first refitted (:func:`fxprune.reconstruct`; ``acc_oneshot_recon``), so
``acc_oneshot_recal`` is then the refitted cut's, recalibrated. Recipe rows
(``BASE+PART...``, :data:`~fxprune.bench.accuracy.presets.RECIPE_PARTS`) switch on group
scores, recalibration, distillation from the dense model, a gradual schedule and an allocation
measured on validation batches (:func:`fxprune.search_allocation`).

``run_job(..., split="val")`` (``--tune``) reports every accuracy on the validation split
(its batches after the ones that score masks) and never builds the test loader.
"""

from __future__ import annotations

__all__ = ["run_job", "load_splits", "tp_prune"]

import copy
import dataclasses
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fxprune.bench.accuracy.heldout import HeldOut
from fxprune.bench.accuracy.presets import (
    PRESET_DEFAULTS,
    Job,
    Preset,
    method_spec,
    settle_epochs,
)
from fxprune.core.recalibrate import recalibrate_bn
from fxprune.core.reconstruct import reconstruct
from fxprune.costs.count import count
from fxprune.costs.latency import measure_latency
from fxprune.costs.paper_flops import paper_flops_cut
from fxprune.criteria import get_criterion
from fxprune.errors import InputError
from fxprune.plan.allocate import ALLOCATION
from fxprune.plan.compress import compress
from fxprune.plan.search import search_allocation
from fxprune.stripes import STRIPES
from fxprune.train import SoftPruner, data, evaluate, fit
from fxprune.train.gradual import prune_iteratively
from fxprune.train.methods import needs_data, paper_settings

_SPLITS: dict[tuple, data.DataSplits] = {}


def load_splits(p: Preset, seed: int) -> data.DataSplits:
    """The preset's dataset; the validation split is carved with ``seed``, and the training
    split is cut to ``p.subset`` images (a seeded choice) when set."""
    key = (p.dataset, p.subset, seed)
    if key not in _SPLITS:
        s = data.load_data(p.dataset, seed=seed)
        if p.subset is not None and p.subset < len(s.train):
            g = torch.Generator().manual_seed(1000 + seed)
            idx = torch.randperm(len(s.train), generator=g)[: p.subset].sort().values
            old = s.train
            train = data.TensorImageDataset(old.images[idx], old.labels[idx], old.transform)
            train.batch_transform = old.batch_transform
            s = dataclasses.replace(s, train=train)
        _SPLITS[key] = s
    return _SPLITS[key]


def _model(name: str, splits: data.DataSplits) -> nn.Module:
    from fxprune.models import create_model

    return create_model(name, in_chans=splits.in_chans, num_classes=splits.num_classes)


def dense_path(out: Path, model: str, seed: int) -> Path:
    return out / "dense" / f"{model}_s{seed}.pt"


def _fit_kwargs(p: Preset, seed: int, teacher: nn.Module | None = None,
                pruner: Any = None, parts: tuple[str, ...] = ("kd",)) -> dict[str, Any]:
    """fit's keywords; with a ``teacher``, the distillation the recipe ``parts`` switch on
    (``kd``: the logits, ``fkd``: the features)."""
    kw: dict[str, Any] = dict(lr=p.lr, seed=seed, progress=False, pruner=pruner, amp=p.amp,
                              bn_recalibration=p.bn_recalibration if pruner is not None else 0)
    if teacher is not None and ("kd" in parts or "fkd" in parts):
        kw.update(teacher=teacher, distill=p.distill if "kd" in parts else 0.0,
                  temperature=p.temperature)
        if "fkd" in parts:
            kw["feature_distill"] = p.feature_distill
    return kw


def _fit(p: Preset, model: nn.Module, train: Any, epochs: int, lr: float, seed: int,
         pruner: Any = None, teacher: nn.Module | None = None) -> None:
    kw = _fit_kwargs(p, seed, teacher, pruner)
    if getattr(pruner, "variant", "fxprune") == "paper":  # the authors' schedule, no recal
        kw.pop("bn_recalibration", None)
        kw.update(paper_settings(pruner.method_name).fit_keywords(epochs))
    kw["lr"] = lr
    fit(model, train, None, epochs, **kw)


def _acc(model: nn.Module, split: HeldOut | list) -> float:
    """A reported accuracy: on the held-out test split (opened for this evaluation only), or on
    the validation batches of a ``--tune`` run."""
    if isinstance(split, HeldOut):
        with split.reading() as loader:
            return evaluate(model, loader)[1]
    return evaluate(model, split)[1]


def _recal_acc(p: Preset, model: nn.Module, train: Any, split: Any) -> tuple[nn.Module, float]:
    """A copy of ``model`` with BatchNorm recalibrated on training batches, and its accuracy."""
    recal = copy.deepcopy(model)
    recalibrate_bn(recal, train, batches=p.recal_batches)
    return recal, _acc(recal, split)


def _tp_importance(kind: str) -> Any:
    import torch_pruning as tp

    if kind == "magnitude":  # per layer: the root conv's L2 norm (MagnitudeImportance(p=2)
        # with its defaults equals the group importance in 1.6.1)
        return tp.importance.MagnitudeImportance(p=2, group_reduction="first", normalizer=None)
    return tp.importance.GroupMagnitudeImportance(p=2)  # DepGraph's default (GroupNorm)


def tp_prune(model: nn.Module, x: torch.Tensor, target: float, kind: str,
             tol: float = 0.02) -> tuple[nn.Module, float, int]:
    """Torch-Pruning's uniform ratio bisected until the pruned copy keeps ``target`` of the
    MACs within ``tol`` (relative). Returns (pruned copy, ratio, trials)."""
    import torch_pruning as tp

    base = count(model, (x,)).macs
    lo, hi, best = 0.0, 0.95, None
    for trial in range(1, 25):
        r = (lo + hi) / 2
        m = copy.deepcopy(model)
        pr = tp.pruner.MetaPruner(m, x, importance=_tp_importance(kind), pruning_ratio=r,
                                  ignored_layers=[mod for mod in m.modules()
                                                  if isinstance(mod, nn.Linear)])
        pr.step()
        kept = count(m, (x,)).macs / base
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (m, kept, r)
        if abs(kept - target) <= tol * target:
            return m, r, trial
        lo, hi = (r, hi) if kept > target else (lo, r)
    assert best is not None
    return best[0], best[2], 24


def _latency(dense: nn.Module, small: nn.Module, x: torch.Tensor, batch: int) -> float | None:
    xb = x.expand(batch, *x.shape[1:]).contiguous()
    r = measure_latency(dense.eval(), small.eval(), xb, warmup=2, repeat=10, threads=1)
    return r.speedup


def _oneshot(p: Preset, job: Job, model: nn.Module, x: torch.Tensor, train: Any,
             val_batches: list, test: Any, row: dict[str, Any], how: dict[str, Any],
             teacher: nn.Module | None) -> tuple[nn.Module, float | None]:
    """A criterion's cut (or a recipe's cuts) at the row's MACs, then fine-tuning."""
    parts = how.get("parts", ())
    allocation = "search" if "search" in parts else how.get(
        "allocation", p.recipe_allocation if parts else "uniform")
    ckw: dict[str, Any] = {"criterion": how["criterion"], "seed": job.seed,
                           "allocation": allocation}
    if get_criterion(how["criterion"]).needs_data:
        ckw["data"] = val_batches
    if "group" in parts:
        ckw["scoring"] = p.group_scoring
    fkw = _fit_kwargs(p, job.seed, teacher, parts=parts)
    if "gradual" in parts:
        if ckw["allocation"] == "search":
            raise InputError(f"{job.method}: recipe_allocation='search' measures one cut; "
                             "it does not combine with gradual")
        if "fkd" in parts:
            raise InputError(f"{job.method}: fkd compares channels with the model of one cut; "
                             "after a second cut they refer to the first cut's model, so it "
                             "does not combine with gradual")
        if "recal" in parts:  # every cut recalibrated on training batches
            ckw.update(data=train, recalibrate=p.recal_batches)
        if "recon" in parts:  # every cut's layers refitted on training batches
            ckw.update(data=train, reconstruct=p.recon_batches)
        steps = min(p.gradual_steps, p.epochs)  # at least one epoch per cut
        row.update(gradual_steps=steps, acc_oneshot=None, acc_oneshot_recal=None)
        small, _ = prune_iteratively(model, target_flops=job.target, steps=steps,
                                     train_loader=train, epochs=p.epochs, example_inputs=(x,),
                                     compress_kwargs=ckw, fit_kwargs=fkw)
        return small, None
    if ckw["allocation"] == "search":
        small = _searched(p, job, model, x, train, val_batches, row, ckw)
    else:
        small = compress(model, target_flops=job.target, example_inputs=(x,), **ckw)
    keep_rate = None
    alloc = small.meta.get(ALLOCATION, {})
    if alloc.get("allocation") == "uniform" and alloc.get("amount") is not None \
            and ckw["allocation"] != "search":
        keep_rate = 1.0 - float(alloc["amount"])
    row["acc_oneshot"] = _acc(small, test)
    row["residual"] = "coupled"  # compress's default
    if "recon" in parts:  # refit the cut layers to the dense model's outputs
        t0 = time.perf_counter()
        reconstruct(small, model, train, batches=p.recon_batches, seed=job.seed)
        row.update(recon_seconds=time.perf_counter() - t0, acc_oneshot_recon=_acc(small, test))
    recal, row["acc_oneshot_recal"] = _recal_acc(p, small, train, test)
    if "recal" in parts:
        small = recal
    fit(small, train, None, p.epochs, **fkw)
    return small, keep_rate


def _searched(p: Preset, job: Job, model: nn.Module, x: torch.Tensor, train: Any,
              val_batches: list, row: dict[str, Any], ckw: dict[str, Any]) -> nn.Module:
    """The cut at the row's MACs with the per-group ratios :func:`search_allocation` measured
    best (candidates recalibrated on training batches, ranked on the scoring batches of the
    validation split)."""
    found = search_allocation(model, float(job.target), data=train, eval_data=val_batches,
                              criterion=ckw["criterion"], example_inputs=(x,),
                              candidates=p.search_candidates, spread=p.search_spread,
                              recal_batches=p.recal_batches, scoring=ckw.get("scoring"),
                              seed=job.seed)
    row.update(search_seconds=found.seconds, search_chosen=found.chosen,
               search_loss=found.loss, search_uniform_loss=found.uniform_loss)
    kw = {k: v for k, v in ckw.items() if k != "allocation"}
    return compress(model, ratios=found.ratios, example_inputs=(x,), **kw)


def _run_method(p: Preset, job: Job, model: nn.Module, x: torch.Tensor, train: Any,
                val_batches: list, test: Any, row: dict[str, Any],
                teacher: nn.Module | None = None) -> tuple[nn.Module, float | None]:
    """Prune and train ``model`` (a copy of the dense baseline) the way ``job`` says; returns
    the compact model and the uniform keep rate (None for non-uniform allocations).
    ``teacher``: the dense model, for recipes with ``kd``."""
    _, kind, how = method_spec(job.method)
    keep_rate = None
    if kind == "oneshot":
        return _oneshot(p, job, model, x, train, val_batches, test, row, how, teacher)
    if kind == "tp":
        small, ratio, trials = tp_prune(model, x, float(job.target), how["importance"])
        row.update(tp_ratio=ratio, tp_trials=trials, acc_oneshot=_acc(small, test))
        row["acc_oneshot_recal"] = _recal_acc(p, small, train, test)[1]
        kd = teacher if "kd" in how.get("parts", ()) else None
        _fit(p, small, train, p.epochs, p.lr, job.seed, teacher=kd)
        return small, None
    kw: dict[str, Any] = {"example_inputs": (x,), "seed": job.seed, "method": how["method"],
                          "variant": how.get("variant", "fxprune")}
    if "kernel" in how:  # SWP's finalize kernel (swp-budget: "stripe")
        kw["kernel"] = row["kernel"] = how["kernel"]
    if "granularity" in how:  # SWP's budget grain (swp-shape: kernel row/column pairs)
        kw["granularity"] = row["granularity"] = how["granularity"]
    if p.score_recalibration and how["method"] in ("mfp", "fppmo"):
        kw["score_recalibration"] = p.score_recalibration
    if kw["variant"] == "fxprune":
        kw.update(_soft_engine(p, how["method"]))
    if kind == "swp":
        kw["alpha"] = row["alpha"] = job.option
    elif kind != "learned":
        kw["target_flops"] = job.target
    if needs_data(how["method"]):
        kw["data"] = val_batches
    pruner = SoftPruner(model, **kw)
    row["variant"] = pruner.variant
    if _channel_selection(how["method"]):
        row["residual"] = pruner.residual
    if pruner.allocation.get("amount") is not None:
        keep_rate = 1.0 - float(pruner.allocation["amount"])
    row["acc_oneshot"] = _acc(model, test) if kind == "soft" else None
    _fit(p, model, train, p.epochs, p.lr, job.seed, pruner=pruner)
    return pruner.finalize(), keep_rate


def _soft_engine(p: Preset, method: str) -> dict[str, Any]:
    """SoftPruner keywords of the preset's soft settings that differ from SoftPruner's
    defaults (``Preset.soft_clip``, ``soft_settle``, ``fppmo_tau``)."""
    kw: dict[str, Any] = {}
    if p.soft_clip != PRESET_DEFAULTS["soft_clip"]:
        try:
            kw["max_grad_norm"] = None if p.soft_clip == "none" else float(p.soft_clip)
        except ValueError:
            raise InputError(f"soft_clip must be 'auto', 'none' or a number, got "
                             f"{p.soft_clip!r}") from None
    if p.soft_settle != PRESET_DEFAULTS["soft_settle"]:
        kw["settle"] = settle_epochs(p.soft_settle, p.epochs)
    if method == "fppmo" and p.fppmo_tau != PRESET_DEFAULTS["fppmo_tau"]:
        kw["tau"] = p.fppmo_tau
    return kw


def _channel_selection(method: str) -> bool:
    """Whether ``method`` selects channels (its rows have a residual policy)."""
    from fxprune.train.methods import get_method

    return get_method(method).channel_selection


def _paper_cut(dense: nn.Module, keep_rate: float | None, x: torch.Tensor,
               residual: str | None) -> float | None:
    """The papers' FLOPs cut at the row's uniform keep rate under the row's own residual
    policy; None (n/a) without a uniform keep rate or a residual policy (SWP, Torch-Pruning,
    non-uniform allocations)."""
    if keep_rate is None or residual is None:
        return None
    return paper_flops_cut(dense, keep_rate, example_inputs=(x,), residual=residual)


def run_job(p: Preset, job: Job, out: Path, split: str = "test") -> dict[str, Any]:
    """Compute ``job``; returns its row (the keys of the issue's table and a few more).

    ``split="val"`` (``--tune``): every accuracy of the row is measured on the validation
    batches that do not score masks, and the test split is not read at all."""
    splits = load_splits(p, job.seed)
    train, val, test_loader = data.make_loaders(splits, p.batch)
    test: Any = HeldOut(test_loader)
    if split == "val":
        test = list(itertools.islice(val, p.eval_batches, None))
    x = splits.example_input()
    row: dict[str, Any] = {"key": job.key, "model": job.model, "tool": job.tool,
                           "method": job.method, "target": job.target, "seed": job.seed,
                           "epochs": p.epochs, "train_images": len(splits.train),
                           "lr": p.lr, "amp": p.amp, "split": split}
    torch.manual_seed(job.seed)
    dense = _model(job.model, splits)
    t0 = time.perf_counter()
    if job.method == "dense":
        path = dense_path(out, job.model, job.seed)
        if path.exists():  # trained for another preset of this folder (--tune): evaluated only
            dense.load_state_dict(torch.load(path, weights_only=True))
            row["checkpoint_reused"] = True
        else:
            _fit(p, dense, train, p.dense_epochs, p.dense_lr, job.seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(dense.state_dict(), path)
        row.update(epochs=p.dense_epochs, lr=p.dense_lr, acc=_acc(dense, test),
                   acc_oneshot=None, macs_kept=1.0, params_kept=1.0, paper_flops_cut=0.0,
                   speedup=1.0, seconds=time.perf_counter() - t0)
        return row
    dense.load_state_dict(torch.load(dense_path(out, job.model, job.seed), weights_only=True))
    dense.eval()
    base = count(dense, (x,))
    val_batches = [b for _, b in zip(range(p.eval_batches), val)]
    t0 = time.perf_counter()
    small, keep_rate = _run_method(p, job, copy.deepcopy(dense), x, train, val_batches, test,
                                   row, teacher=dense)
    row["seconds"] = time.perf_counter() - t0
    after = count(small, (x,))
    row.update(acc=_acc(small, test), macs_kept=after.macs / base.macs,
               params_kept=after.params / base.params,
               paper_flops_cut=_paper_cut(dense, keep_rate, x, row.get("residual")),
               speedup=_latency(dense, small, x, p.latency_batch))
    stripes = small.meta.get(STRIPES) if hasattr(small, "meta") else None
    if stripes:  # SWP rows: what the rewrite emitted, e.g. {"Conv2d 3x3": 17, "Conv2d 1x3": 2}
        row["stripe_forms"] = dict(Counter(r.form for r in stripes.values()))
        row["stripe_filters_cut"] = sum(r.filters[1] - r.filters[0] for r in stripes.values())
    return row
