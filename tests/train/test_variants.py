"""variant="paper": the authors' settings, from one place (paper_settings), used by SoftPruner,
the accuracy benchmark's `(paper)` rows and `fxprune train --variant paper`; and scoring
candidates after BatchNorm recalibration (score_recalibration)."""

from __future__ import annotations

import argparse

import pytest
import torch

from fxprune import InputError
from fxprune.bench.accuracy import PRESETS
from fxprune.bench.accuracy import rows as bench_rows
from fxprune.bench.accuracy.presets import METHODS, Job
from fxprune.models import create_model
from fxprune.train import SoftPruner
from fxprune.train.methods import paper_settings

X = torch.randn(1, 1, 16, 16)
VAL = [(torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))) for _ in range(2)]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", in_chans=1, num_classes=4)


@pytest.mark.parametrize("method", ["sfp", "fpgm", "mfp", "fppmo"])
def test_paper_variant_runs_the_authors_settings(method):
    data = VAL if method in ("mfp", "fppmo") else None
    p = SoftPruner(_net(), target_flops=0.5, method=method, example_inputs=(X,), data=data,
                   variant="paper")
    assert (p.variant, p.max_grad_norm, p.settle, p.residual) == ("paper", None, 0, "scatter")
    f = paper_settings(method).fit_keywords(200)
    assert f["bn_recalibration"] == 0 and f["schedule"] == "step"
    assert f["milestones"] == [60, 120, 160] and f["gamma"] == 0.2  # SFP's CIFAR schedule
    mine = SoftPruner(_net(), target_flops=0.5, method=method, example_inputs=(X,), data=data)
    assert (mine.variant, mine.settle, mine.residual) == ("fxprune", 1, "coupled")
    assert mine.max_grad_norm == (5.0 if method in ("sfp", "mfp") else None)


def test_swp_paper_variant_no_clip_no_l1_on_1x1():
    torch.manual_seed(0)
    model = create_model("resnet20_b", in_chans=1, num_classes=4)
    p = SoftPruner(model, method="swp", example_inputs=(X,), variant="paper")
    assert p.max_grad_norm is None and p.method.stripes.regularize_1x1 is False
    f = paper_settings("swp").fit_keywords(160)
    assert f["milestones"] == [80, 120] and f["gamma"] == 0.1 and f["weight_decay"] == 1e-4
    assert SoftPruner(create_model("resnet20_b", in_chans=1, num_classes=4), method="swp",
                      example_inputs=(X,)).max_grad_norm == 5.0  # fxprune's: hold="epoch"


def test_variant_conflicts_and_unknown_names_raise():
    with pytest.raises(InputError, match="variant='paper'"):
        SoftPruner(_net(), 0.3, example_inputs=(X,), variant="paper", settle=2)
    with pytest.raises(InputError, match="variant must be"):
        SoftPruner(_net(), 0.3, example_inputs=(X,), variant="authors")
    # a keyword given with the paper's own value is fine
    assert SoftPruner(_net(), 0.3, example_inputs=(X,), variant="paper",
                      residual="scatter").residual == "scatter"


@pytest.mark.parametrize("name", ["sfp (paper)", "fpgm-soft (paper)", "mfp (paper)",
                                  "fppmo (paper)", "swp (paper)", "sfp", "fppmo",
                                  "swp-budget"])
def test_benchmark_rows_construct_the_labelled_variant(name, monkeypatch):
    """The benchmark row's SoftPruner and fit arguments are the variant's."""
    seen: dict = {}
    monkeypatch.setattr(bench_rows, "fit", lambda model, *a, **kw: seen.update(kw))
    monkeypatch.setattr(bench_rows, "evaluate", lambda *a, **kw: (0.0, 0.5))
    p = PRESETS["smoke"]
    kind = METHODS[name][1]
    job = Job("resnet20", "fxprune", name, None if kind == "swp" else 0.5, 0,
              1e-4 if kind == "swp" else None)
    row: dict = {}
    bench_rows._run_method(p, job, _net(), X, [], VAL, [], row)
    pruner = seen["pruner"]
    if name.endswith("(paper)"):
        assert row["variant"] == pruner.variant == "paper"
        assert pruner.max_grad_norm is None and pruner.settle == 0
        assert seen["bn_recalibration"] == 0 and seen["schedule"] == "step"
        if kind != "swp":
            assert pruner.residual == row["residual"] == "scatter"
        else:
            assert pruner.method.stripes.regularize_1x1 is False
    else:
        assert row["variant"] == "fxprune" and pruner.settle == 1
        # fxprune's clip: 5 for hold="epoch" methods, none for FPPMO (chosen on validation)
        assert pruner.max_grad_norm == (None if name == "fppmo" else 5.0)
        assert pruner.residual == "coupled"
        if name == "swp-budget":  # finalized with stripes everywhere: MACs at the target
            assert row["kernel"] == pruner.method.stripes.kernel == "stripe"
        assert seen["bn_recalibration"] == p.bn_recalibration and "schedule" not in seen


def test_cli_variant_paper_uses_the_authors_schedule():
    from fxprune.cli.train import _schedule_keywords

    args = argparse.Namespace(variant="paper", method="sfp", epochs=10, recalibrate_bn=0,
                              schedule="cosine", weight_decay=5e-4)
    assert _schedule_keywords(args) == paper_settings("sfp").fit_keywords(10)
    with pytest.raises(InputError, match="recalibrate-bn"):
        _schedule_keywords(argparse.Namespace(**{**vars(args), "recalibrate_bn": 5}))
    mine = argparse.Namespace(**{**vars(args), "variant": "fxprune"})
    assert _schedule_keywords(mine)["schedule"] == "cosine"


def test_score_recalibration_scores_a_recalibrated_copy():
    calib = [(torch.randn(8, 1, 16, 16) * 3 + 1, torch.randint(0, 4, (8,))) for _ in range(2)]
    model = _net()
    plain = SoftPruner(model, 0.5, method="mfp", example_inputs=(X,), data=VAL)
    model2 = _net()
    recal = SoftPruner(model2, 0.5, method="mfp", example_inputs=(X,), data=VAL,
                       score_recalibration=2, calibration_data=calib)
    before = {k: v.clone() for k, v in model2.state_dict().items()}
    keep = recal.keep
    a, b = plain.evaluate(keep, plain.method.attribute), recal.evaluate(keep,
                                                                        recal.method.attribute)
    assert a != pytest.approx(b)  # other BatchNorm statistics, another loss
    after = model2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is untouched
    with pytest.raises(InputError, match="score_recalibration"):
        SoftPruner(_net(), 0.5, method="mfp", example_inputs=(X,), data=VAL,
                   score_recalibration=-1)
