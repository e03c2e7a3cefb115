"""The accuracy benchmark's protocol: presets, methods and the rows they expand to."""

from __future__ import annotations

__all__ = ["Preset", "PRESETS", "PRESET_DEFAULTS", "METHODS", "RECIPE_PARTS", "Job", "jobs",
           "row_key", "method_spec", "method_names", "recipe_spec"]

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fxprune.criteria import list_criteria
from fxprune.errors import InputError
from fxprune.train.methods import get_method, list_methods

# name: (tool, kind, how). kind: "oneshot" (compress, then fine-tune), "soft" (SoftPruner
# during the same epochs, then finalize), "swp" (learned budget, a row per preset alpha),
# "learned" (a method that learns its amounts: one row), "tp" (Torch-Pruning, tuned to the
# same MACs, then fine-tuned). ``"variant": "paper"`` runs the method with its authors'
# settings (fxprune.train.methods.paper_settings: no clip, no settle epoch, residual scatter,
# no BN recalibration, their step schedule); the other soft rows run fxprune's defaults.
# The benchmark also runs any name of the registries that is not a row here (see
# method_spec): a new training method or criterion needs no edit of this file.
METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "random": ("fxprune", "oneshot", {"criterion": "random"}),
    "l1": ("fxprune", "oneshot", {"criterion": "l1"}),
    "fpgm": ("fxprune", "oneshot", {"criterion": "fpgm"}),
    "rnf+clr": ("fxprune", "oneshot", {"criterion": "rnf", "allocation": "clr"}),
    "sfp": ("fxprune", "soft", {"method": "sfp"}),
    "fpgm-soft": ("fxprune", "soft", {"method": "fpgm"}),
    "mfp": ("fxprune", "soft", {"method": "mfp"}),
    "fppmo": ("fxprune", "soft", {"method": "fppmo"}),
    "swp": ("fxprune", "swp", {"method": "swp"}),
    "sfp (paper)": ("fxprune", "soft", {"method": "sfp", "variant": "paper"}),
    "fpgm-soft (paper)": ("fxprune", "soft", {"method": "fpgm", "variant": "paper"}),
    "mfp (paper)": ("fxprune", "soft", {"method": "mfp", "variant": "paper"}),
    "fppmo (paper)": ("fxprune", "soft", {"method": "fppmo", "variant": "paper"}),
    "swp (paper)": ("fxprune", "swp", {"method": "swp", "variant": "paper"}),
    # SWP with a budget (fxprune's addition): the weakest stripes removed on a ramp until the
    # stripe-convention MACs reach the row's target; finalized with the stripe kernel in every
    # layer, so that the measured MACs are the target's (the default kernel="probe" keeps a
    # layer dense where that is faster: its MACs then stay near 1.0)
    "swp-budget": ("fxprune", "soft", {"method": "swp", "kernel": "stripe"}),
    # the same budget over whole kernel row/column pairs (3x3 -> 1x3 -> 1x1), finalized with
    # the dense kernel: every MAC the budget removes is one the finalized model does not run
    "swp-shape": ("fxprune", "soft", {"method": "swp", "granularity": "shape",
                                      "kernel": "dense"}),
    # ... and whole filters of the convs that alone produce their channels (block-inner convs)
    "swp-shape+filter": ("fxprune", "soft", {"method": "swp", "granularity": "shape+filter",
                                             "kernel": "dense"}),
    "tp-magnitude": ("torch-pruning", "tp", {"importance": "magnitude"}),
    "tp-group": ("torch-pruning", "tp", {"importance": "group"}),
}


def _registered() -> dict[str, tuple[str, str, dict[str, Any]]]:
    """The registries' names that are not rows of METHODS: training methods (soft pruning, or
    learned amounts where ``channel_selection`` is False), then criteria (one-shot)."""
    out: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for m in list_methods():
        kind = "soft" if get_method(m).channel_selection else "learned"
        out.setdefault(m, ("fxprune", kind, {"method": m}))
    for c in list_criteria():
        out.setdefault(c.name, ("fxprune", "oneshot", {"criterion": c.name}))
    return {k: v for k, v in out.items() if k not in METHODS}


# Recipes: ``BASE+PART+PART...``. BASE is a criterion (a one-shot cut at the row's MACs) or a
# Torch-Pruning row (tp-group, tp-magnitude); each PART switches one step on, so that the
# ablation is a set of rows: l2 (nothing), l2+group, l2+recal, l2+kd, l2+gradual, and
# l2+group+recal+kd+gradual (all). Every recipe trains the preset's ``epochs`` in total.
RECIPE_PARTS: dict[str, str] = {
    "group": "group scores (Preset.group_scoring) instead of the producers' filters",
    "recal": "BatchNorm recalibrated on Preset.recal_batches training batches after each cut, "
             "before fine-tuning",
    "kd": "fine-tuning distilled from the dense model (Preset.distill, Preset.temperature)",
    "gradual": "Preset.gradual_steps cuts, the epochs split over them (prune_iteratively)",
    "search": "per-group ratios measured on the validation split's scoring batches "
              "(fxprune.search_allocation: Preset.search_candidates profiles, "
              "Preset.search_spread) instead of Preset.recipe_allocation",
    "fkd": "fine-tuning also distilled from the dense model's features: the BatchNorm outputs "
           "at the kept channels (fit's feature_distill=Preset.feature_distill)",
    "recon": "the layers whose inputs were cut refitted by least squares to the dense model's "
             "outputs on Preset.recon_batches training batches (fxprune.reconstruct), after "
             "each cut and before recalibration and fine-tuning",
}
_TP_PARTS = ("kd",)  # what Torch-Pruning rows can take (its model is fine-tuned by fxprune)


def recipe_spec(name: str) -> tuple[str, str, dict[str, Any]] | None:
    """``(tool, kind, how)`` of a recipe name ``BASE+PART...`` (see RECIPE_PARTS), or None when
    ``name`` is not one. ``how`` holds the base's own settings and ``parts``: the sorted tuple
    of the steps switched on.

    Raises:
        InputError: an unknown part, a part given twice, or a part the base cannot take.
    """
    base, *parts = name.split("+")
    if not parts or name in METHODS:
        return None
    try:
        tool, kind, how = method_spec(base)
    except InputError:
        return None
    unknown = [q for q in parts if q not in RECIPE_PARTS]
    if unknown or len(set(parts)) != len(parts):
        raise InputError(f"recipe {name!r}: parts must be distinct, from "
                         f"{', '.join(RECIPE_PARTS)}; got {'+'.join(parts)}")
    allowed = _TP_PARTS if kind == "tp" else tuple(RECIPE_PARTS) if kind == "oneshot" else ()
    if any(q not in allowed for q in parts):
        raise InputError(f"recipe {name!r}: a {kind} row takes only "
                         f"{', '.join(allowed) or 'no parts'}")
    return tool, kind, {**how, "parts": tuple(sorted(parts))}


def method_names() -> list[str]:
    """Every name ``--methods`` accepts: the rows of METHODS, then the registries' others."""
    return [*METHODS, *_registered()]


def method_spec(name: str) -> tuple[str, str, dict[str, Any]]:
    """``(tool, kind, how)`` of a benchmark method: its row of METHODS, else a registered
    training method (``how = {"method": name}``), else a registered criterion (one-shot,
    ``how = {"criterion": name}``).

    Raises:
        InputError: ``name`` is none of them.
    """
    if name in METHODS:
        return METHODS[name]
    recipe = recipe_spec(name) if "+" in name else None
    if recipe is not None:
        return recipe
    spec = _registered().get(name)
    if spec is None:
        raise InputError(f"unknown benchmark method {name!r}; choose from "
                         f"{', '.join(method_names())}")
    return spec


@dataclass(frozen=True)
class Preset:
    """One benchmark configuration. ``epochs`` is what every method gets after the dense
    baseline (fine-tuning after a one-shot cut, or soft-pruning epochs); ``subset`` caps the
    training images (None: all of the training split)."""

    name: str
    dataset: str
    models: tuple[str, ...]
    dense_epochs: int
    epochs: int
    batch: int = 128
    dense_lr: float = 0.1
    lr: float = 0.01
    subset: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    targets: tuple[float, ...] = (0.5, 0.25)
    methods: tuple[str, ...] = tuple(METHODS)
    # Torch-Pruning cannot prune option-A shortcuts (they pad a fixed number of zero
    # channels): its rows, with fxprune's l1 beside them, run on the option-B twin.
    tp_models: dict[str, str] = field(default_factory=dict)
    amp: str | None = "bf16"
    eval_batches: int = 4  # validation batches that score MFP/FPPMO masks
    bn_recalibration: int = 10
    score_recalibration: int = 0  # MFP/FPPMO: training batches that recalibrate candidates
    # SWP's budget is learned: on short schedules the stripe L1 has a cliff (measured on
    # digits, 1,170 steps at lr 0.01: alpha 0.01 prunes nothing, 0.02 keeps 4% of the MACs,
    # 0.03 everything; the cpu preset's alphas are scaled to its 468 steps), so a preset runs
    # a few alphas and reports the MACs each one reached.
    swp_alpha: tuple[float, ...] = (0.01, 0.02)
    latency_batch: int = 64
    # recipes (RECIPE_PARTS) and the one-shot rows' recalibrated accuracy: defaults picked
    # before any measurement (the usual values in the literature); `--tune` evaluates
    # candidates on the validation split (docs/accuracy.md)
    recal_batches: int = 20
    group_scoring: str = "all"
    distill: float = 0.5
    temperature: float = 4.0
    gradual_steps: int = 2
    # how a recipe's cut spreads over the groups ("uniform", "global", "clr"; see
    # fxprune.plan.policies; or "search": measured candidates, fxprune.plan.search); plain
    # criterion rows (l1, l2, ...) stay uniform, as the papers
    recipe_allocation: str = "uniform"
    # recipe_allocation="search" (fxprune.search_allocation): profiles measured per cut, and
    # how far a group's share may move from uniform
    search_candidates: int = 16
    search_spread: float = 0.5
    # recon: training batches fxprune.reconstruct fits each layer on
    recon_batches: int = 8
    # fkd: the weight of feature distillation (fit's feature_distill)
    feature_distill: float = 1.0
    # the fxprune variant of the soft rows (sfp, mfp, fppmo, fpgm-soft): SoftPruner's
    # max_grad_norm ("auto", "none" or a number), settle epochs (an int, or a share of the
    # epochs in (0, 1): settle_epochs) and FPPMO's prior temperature; the defaults are
    # SoftPruner's, re-chosen on validation (docs/accuracy.md)
    soft_clip: str = "auto"
    soft_settle: float = 1
    fppmo_tau: float = 0.25
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"], d["seeds"], d["targets"], d["methods"] = (
            list(self.models), list(self.seeds), list(self.targets), list(self.methods))
        d["swp_alpha"] = list(self.swp_alpha)
        # results files of earlier presets stay comparable
        if not d["score_recalibration"]:
            del d["score_recalibration"]
        for name in _QUIET_DEFAULTS:
            if d[name] == PRESET_DEFAULTS[name]:
                del d[name]
        return d


# fields added after results were committed: left out of a preset's record while at their
# default, so that those results stay comparable (runner._row_config)
_QUIET_DEFAULTS = ("recipe_allocation", "search_candidates", "search_spread", "soft_clip",
                   "soft_settle", "fppmo_tau", "recon_batches", "feature_distill")
PRESET_DEFAULTS = {f.name: f.default for f in fields(Preset)}


# the methods of the longer budget: both variants of every paper method, and the references
_LONG = ("l1", "fpgm", "sfp", "sfp (paper)", "fpgm-soft", "fpgm-soft (paper)", "mfp",
         "mfp (paper)", "fppmo", "fppmo (paper)", "swp", "swp (paper)", "swp-budget", "swp-shape",
         "swp-shape+filter", "tp-group")

# the soft rows whose settle share was re-chosen on validation
_SETTLE = ("sfp", "mfp", "fppmo", "fpgm-soft", "swp-shape+filter")


def settle_epochs(settle: float, epochs: int) -> int:
    """A preset's ``soft_settle`` in epochs: an int as is; a share in (0, 1) of ``epochs``,
    rounded, at least 1 and at most ``epochs - 1`` (one soft epoch stays)."""
    if isinstance(settle, float) and 0.0 < settle < 1.0:
        return max(1, min(epochs - 1, round(settle * epochs)))
    return int(settle)


PRESETS: dict[str, Preset] = {
    "smoke": Preset("smoke", "digits", ("resnet20",), dense_epochs=3, epochs=1, batch=64,
                    lr=0.02, seeds=(0,),
                    methods=("random", "l1", "sfp", "sfp (paper)", "fppmo", "swp"),
                    swp_alpha=(2e-4,), amp=None, eval_batches=2, bn_recalibration=2,
                    recal_batches=2,
                    latency_batch=16, note="digits, seconds: shape and sanity only"),
    "cpu": Preset("cpu", "fashion-mnist", ("resnet20",), dense_epochs=15, epochs=4,
                  subset=15000, tp_models={"resnet20": "resnet20_b"},
                  swp_alpha=(0.03, 0.04, 0.05),
                  note="15,000 training images (of 54,000), 2 workers of 1 thread; about 2 "
                       "hours on 2 cores with native bf16 (AVX512-BF16/AMX; elsewhere use "
                       "--amp none)"),
    # float32: bf16 autocast is emulated, ~10x slower, on CPUs without AVX512-BF16/AMX (an
    # AVX2 AMD EPYC of this project's cloud), and a run of many hours must not depend on
    # which CPU a session gets; the dense baselines are the cpu preset's (bf16-trained)
    "cpu-long": Preset("cpu-long", "fashion-mnist", ("resnet20",), dense_epochs=15, epochs=16,
                       subset=15000, tp_models={"resnet20": "resnet20_b"}, amp=None,
                       swp_alpha=(0.0075, 0.01, 0.0125), methods=_LONG,
                       note="the cpu preset with 4x its fine-tuning/soft epochs (16), in "
                            "float32; the same dense baselines; many hours on 2 cores"),
    # the soft rows with the settle share chosen on the cpu preset's validation split (3 of 4
    # epochs, docs/accuracy.md): own presets, so that the settle-1 rows stay comparable
    "cpu-settle": Preset("cpu-settle", "fashion-mnist", ("resnet20",), dense_epochs=15,
                         epochs=4, subset=15000, soft_settle=0.75, methods=_SETTLE,
                         note="the cpu preset; soft rows settle 3 of 4 epochs"),
    "cpu-long-settle": Preset("cpu-long-settle", "fashion-mnist", ("resnet20",),
                              dense_epochs=15, epochs=16, subset=15000, amp=None,
                              soft_settle=0.75, methods=_SETTLE,
                              note="the cpu-long preset; soft rows settle 12 of 16 epochs"),
    # the recipe's fine-tuning rate: after reconstruction lr 0.02 beat 0.01 on the validation
    # split at both budgets (docs/accuracy.md); its own preset, so that the cpu rows at 0.01
    # stay comparable. Torch-Pruning's rows run here too: each method at each rate
    "cpu-lr0.02": Preset("cpu-lr0.02", "fashion-mnist", ("resnet20",), dense_epochs=15,
                         epochs=4, subset=15000, tp_models={"resnet20": "resnet20_b"},
                         lr=0.02, methods=("l2+group+kd+recon", "tp-group+kd", "tp-group"),
                         note="the cpu preset with fine-tuning lr 0.02 (the recipe's, chosen "
                              "on validation) instead of 0.01"),
    "full": Preset("full", "fashion-mnist", ("resnet20", "resnet56"), dense_epochs=60,
                   epochs=40, tp_models={"resnet20": "resnet20_b", "resnet56": "resnet56_b"},
                   amp=None, note="all 54,000 training images; for a GPU"),
}


@dataclass(frozen=True)
class Job:
    """One row to compute: a dense baseline (``method == "dense"``) or a method run."""

    model: str
    tool: str
    method: str
    target: float | None
    seed: int
    option: float | None = None  # SWP's alpha

    @property
    def key(self) -> str:
        return row_key(self.model, self.tool, self.method, self.target, self.seed, self.option)


def row_key(model: str, tool: str, method: str, target: Any, seed: int,
            option: Any = None) -> str:
    t = "learned" if target is None else f"{float(target):g}"
    o = "" if option is None else f"/{float(option):g}"
    return f"{model}/{tool}/{method}{o}/{t}/{seed}"


def jobs(p: Preset) -> tuple[list[Job], list[Job]]:
    """(dense baselines, method rows) of preset ``p``; method rows ordered seed-major, so a
    run cut short has whole seeds."""
    dense, rows = [], []
    specs = {m: method_spec(m) for m in p.methods}
    with_tp = any(tool == "torch-pruning" for tool, _, _ in specs.values())
    for seed in p.seeds:
        for model in p.models:
            dense.append(Job(model, "dense", "dense", None, seed))
            twin = p.tp_models.get(model)
            if twin and with_tp:
                dense.append(Job(twin, "dense", "dense", None, seed))
    for seed in p.seeds:
        for model in p.models:
            twin = p.tp_models.get(model)
            for m in p.methods:
                tool, kind, _ = specs[m]
                if kind in ("swp", "learned"):
                    alphas = p.swp_alpha if kind == "swp" else (None,)
                    rows += [Job(model, tool, m, None, seed, a) for a in alphas]
                    continue
                for t in p.targets:
                    if kind == "tp":
                        rows.append(Job(twin or model, tool, m, t, seed))
                    else:
                        rows.append(Job(model, tool, m, t, seed))
            if twin and with_tp:
                rows += [Job(twin, "fxprune", "l1", t, seed) for t in p.targets]
    # a preset whose models include a twin (resnet20 and resnet20_b) names some jobs twice
    return list({j.key: j for j in dense}.values()), list({j.key: j for j in rows}.values())
