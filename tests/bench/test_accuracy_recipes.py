"""Recipe rows (BASE+PART...), the recalibrated one-shot accuracy, the held-out test split
(nothing but the reported evaluations may read it) and --tune on the validation split."""

from __future__ import annotations

import dataclasses

import pytest

from fxprune import InputError
from fxprune.bench.accuracy import PRESETS
from fxprune.bench.accuracy import rows as R
from fxprune.bench.accuracy.heldout import HeldOut, TestSplitError
from fxprune.bench.accuracy.presets import Job, jobs, method_spec
from fxprune.bench.accuracy.tune import best, candidates, parse_grid

pytest.importorskip("sklearn")
TINY = dataclasses.replace(PRESETS["smoke"], dense_epochs=1, epochs=2, recal_batches=2,
                           gradual_steps=2, latency_batch=2)


def test_recipe_names() -> None:
    tool, kind, how = method_spec("l2+kd+group+recal+gradual")
    assert (tool, kind, how["criterion"]) == ("fxprune", "oneshot", "l2")
    assert how["parts"] == ("gradual", "group", "kd", "recal")
    assert method_spec("tp-group+kd")[1:] == ("tp", {"importance": "group", "parts": ("kd",)})
    assert method_spec("rnf+clr")[2] == {"criterion": "rnf", "allocation": "clr"}
    for bad in ("tp-group+gradual", "l2+nosuch", "l2+kd+kd", "sfp+kd"):
        with pytest.raises(InputError):
            method_spec(bad)


def test_twin_in_models_names_each_job_once() -> None:
    p = dataclasses.replace(PRESETS["cpu"], models=("resnet20", "resnet20_b"),
                            methods=("l2", "l2+kd", "tp-group", "tp-group+kd"))
    dense, rows = jobs(p)
    keys = [j.key for j in dense + rows]
    assert len(keys) == len(set(keys)) and len(dense) == 6
    assert {j.model for j in rows if j.method == "l2+kd"} == {"resnet20", "resnet20_b"}


def test_held_out_raises_outside_reading() -> None:
    split = HeldOut([1, 2])
    with pytest.raises(TestSplitError):
        list(split)
    with split.reading() as loader:
        assert list(loader) == [1, 2]
    with pytest.raises(TestSplitError):
        iter(split)


def _no_test_split(monkeypatch) -> list[str]:
    """Every pruner, scorer, schedule and training entry the rows use raises when it is handed
    the test split (a HeldOut) in any argument."""
    seen: list[str] = []
    for name in ("compress", "fit", "prune_iteratively", "recalibrate_bn", "SoftPruner",
                 "tp_prune", "search_allocation", "reconstruct"):
        real = getattr(R, name)

        def spy(*a, _real=real, _name=name, **k):
            values = list(a) + list(k.values())
            values += [v for d in values if isinstance(d, dict) for v in d.values()]
            assert not any(isinstance(v, HeldOut) for v in values), f"{_name} got the test split"
            seen.append(_name)
            return _real(*a, **k)

        monkeypatch.setattr(R, name, spy)
    return seen


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipes")
    R.run_job(TINY, Job("resnet20", "dense", "dense", None, 0), out)
    return out


def test_oneshot_row_reports_raw_and_recalibrated(dense_dir, monkeypatch) -> None:
    seen = _no_test_split(monkeypatch)
    row = R.run_job(TINY, Job("resnet20", "fxprune", "l2", 0.5, 0), dense_dir)
    assert 0 <= row["acc_oneshot"] <= 1 and 0 <= row["acc_oneshot_recal"] <= 1
    assert abs(row["macs_kept"] - 0.5) < 0.02 * 0.5 + 0.01
    assert {"compress", "recalibrate_bn", "fit"} <= set(seen)


def test_full_recipe_row(dense_dir, monkeypatch) -> None:
    seen = _no_test_split(monkeypatch)
    from fxprune.train import gradual

    teachers = []
    real_fit = gradual.fit

    def fit(*a, **k):
        teachers.append(k.get("teacher"))
        assert not any(isinstance(v, HeldOut) for v in list(a) + list(k.values()))
        return real_fit(*a, **k)

    monkeypatch.setattr(gradual, "fit", fit)
    row = R.run_job(TINY, Job("resnet20", "fxprune", "l2+group+recal+kd+gradual", 0.5, 0),
                    dense_dir)
    assert "error" not in row and row["gradual_steps"] == 2 and row["acc_oneshot"] is None
    assert abs(row["macs_kept"] - 0.5) < 0.02 * 0.5 + 0.01 and 0 <= row["acc"] <= 1
    assert "prune_iteratively" in seen and len(teachers) == 2 and all(teachers)


def test_searched_allocation_row(dense_dir, monkeypatch) -> None:
    """recipe_allocation="search": the candidates are ranked on the validation batches (never
    the test split), the cut meets the MACs, and the uniform paper-FLOPs column is n/a."""
    seen = _no_test_split(monkeypatch)
    p = dataclasses.replace(TINY, recipe_allocation="search", search_candidates=2)
    row = R.run_job(p, Job("resnet20", "fxprune", "l2+kd", 0.5, 0), dense_dir)
    assert "error" not in row and row["search_chosen"] in (0, 1)
    assert row["search_loss"] <= row["search_uniform_loss"] and row["paper_flops_cut"] is None
    assert abs(row["macs_kept"] - 0.5) < 0.02 * 0.5 + 0.01
    assert {"search_allocation", "compress", "fit"} <= set(seen)
    with pytest.raises(InputError, match="gradual"):
        R.run_job(p, Job("resnet20", "fxprune", "l2+gradual", 0.5, 0), dense_dir)
    assert method_spec("l2+search+kd")[2]["parts"] == ("kd", "search")
    calls = []
    monkeypatch.setattr(R, "_searched", lambda *a: calls.append(a[-1]["allocation"]) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # the part, whatever the preset's allocation
        R._oneshot(TINY, Job("resnet20", "fxprune", "l2+search", 0.5, 0), None, None, None, [],
                   None, {}, method_spec("l2+search")[2], None)
    assert calls == ["search"]


def test_reconstructed_recipe_row(dense_dir, monkeypatch) -> None:
    """``recon``: the cut's layers are refitted on training batches (never the test split),
    the row records the accuracy after the refit and its time, and the cut meets the MACs;
    with ``gradual`` every cut is refitted through compress(reconstruct=...)."""
    seen = _no_test_split(monkeypatch)
    row = R.run_job(TINY, Job("resnet20", "fxprune", "l2+recon", 0.5, 0), dense_dir)
    assert "error" not in row and 0 <= row["acc_oneshot_recon"] <= 1
    assert row["recon_seconds"] > 0 and abs(row["macs_kept"] - 0.5) < 0.02 * 0.5 + 0.01
    assert {"compress", "reconstruct", "fit"} <= set(seen)
    from fxprune.plan import compress as plan_compress

    batches = []
    real = plan_compress.reconstruct_layers
    monkeypatch.setattr(plan_compress, "reconstruct_layers",
                        lambda *a, **k: batches.append(k["batches"]) or real(*a, **k))
    row = R.run_job(TINY, Job("resnet20", "fxprune", "l2+recon+gradual", 0.5, 0), dense_dir)
    assert "error" not in row and batches == [TINY.recon_batches] * 2


def test_feature_distilled_recipe_row(dense_dir, monkeypatch) -> None:
    """``fkd``: fit gets the dense model as teacher and the preset's feature_distill (with the
    logits' weight only when ``kd`` is there too); it refuses ``gradual``."""
    _no_test_split(monkeypatch)
    got = []
    real = R.fit
    monkeypatch.setattr(R, "fit", lambda *a, **k: got.append(k) or real(*a, **k))
    p = dataclasses.replace(TINY, feature_distill=2.0)
    for method, alpha in (("l2+fkd", 0.0), ("l2+kd+fkd", p.distill)):
        row = R.run_job(p, Job("resnet20", "fxprune", method, 0.5, 0), dense_dir)
        assert "error" not in row and 0 <= row["acc"] <= 1
        assert got[-1]["teacher"] is not None and got[-1]["feature_distill"] == 2.0
        assert got[-1]["distill"] == alpha
    with pytest.raises(InputError, match="gradual"):
        R.run_job(p, Job("resnet20", "fxprune", "l2+fkd+gradual", 0.5, 0), dense_dir)
    with pytest.raises(InputError):
        method_spec("tp-group+fkd")


def test_tune_split_never_reads_test(dense_dir, monkeypatch) -> None:
    def reading(self):
        raise AssertionError("the test split was opened in a --tune run")

    monkeypatch.setattr(HeldOut, "reading", reading)
    row = R.run_job(TINY, Job("resnet20", "fxprune", "l2+kd", 0.5, 0), dense_dir, split="val")
    assert row["split"] == "val" and 0 <= row["acc"] <= 1 and 0 <= row["acc_oneshot_recal"] <= 1


def test_tune_grid() -> None:
    grid = parse_grid(["distill=0.3,0.6", "gradual-steps=1,2"])
    assert grid == {"distill": [0.3, 0.6], "gradual_steps": [1, 2]}
    cands = candidates(TINY, grid)
    assert len(cands) == 4 and cands[0].name == "smoke-tune-distill0.3-gradual_steps1"
    assert cands[-1].distill == 0.6 and cands[-1].gradual_steps == 2
    with pytest.raises(InputError):
        parse_grid(["seeds=1,2"])
    docs = [(c, {"rows": [{"model": "m", "method": "l2+kd", "target": 0.5, "acc": acc}]})
            for c, acc in zip(cands, (0.5, 0.9, 0.7, 0.8))]
    top = best(docs, list(grid))[0]["candidates"][0]
    assert top == (0.9, {"distill": 0.3, "gradual_steps": 2})


def test_cli_rejects_bad_recipes_and_grids(tmp_path, capsys) -> None:
    from fxprune.cli.bench_accuracy import main

    assert main(["--methods", "l2+nosuch", "--out", str(tmp_path)]) == 2
    assert "parts must be" in capsys.readouterr().err
    assert main(["--methods", "l2+kd", "--tune", "seeds=1,2", "--out", str(tmp_path)]) == 2
    assert "FIELD" in capsys.readouterr().err


def test_soft_and_allocation_tunables_reach_the_rows(monkeypatch) -> None:
    """``soft_clip``/``soft_settle``/``fppmo_tau`` become SoftPruner keywords of the fxprune
    variant only, ``recipe_allocation`` the allocation of recipe rows only, and a preset at
    their defaults records none of them (committed results stay comparable)."""
    from fxprune.bench.accuracy.presets import _QUIET_DEFAULTS

    assert not set(_QUIET_DEFAULTS) & set(PRESETS["cpu"].to_dict())
    grid = parse_grid(["soft_clip=none,20", "soft_settle=0", "fppmo_tau=0.1",
                       "recipe_allocation=global"])
    p = candidates(PRESETS["cpu"], grid)[0]
    assert p.soft_clip == "none" and p.to_dict()["soft_settle"] == 0
    assert R._soft_engine(p, "fppmo") == {"max_grad_norm": None, "settle": 0, "tau": 0.1}
    assert R._soft_engine(p, "sfp") == {"max_grad_norm": None, "settle": 0}
    assert R._soft_engine(PRESETS["cpu"], "fppmo") == {}
    with pytest.raises(InputError, match="soft_clip"):
        R._soft_engine(dataclasses.replace(p, soft_clip="big"), "sfp")
    seen = []
    monkeypatch.setattr(R, "compress", lambda *a, **k: seen.append(k["allocation"]) or 1 / 0)
    for method in ("l2", "l2+kd"):
        with pytest.raises(ZeroDivisionError):
            R._oneshot(p, Job("resnet20", "fxprune", method, 0.5, 0), None, None, None, [],
                       None, {}, method_spec(method)[2], None)
    assert seen == ["uniform", "global"]


def test_settle_share_resolves_per_preset() -> None:
    """soft_settle may be a share of the epochs (chosen on the cpu preset's validation split
    as 3 of 4): the -settle presets give 3 of 4 and 12 of 16 epochs, at least 1, at most all
    but one."""
    from fxprune.bench.accuracy.presets import settle_epochs

    assert parse_grid(["soft_settle=2,0.75"])["soft_settle"] == [2, 0.75]
    assert R._soft_engine(PRESETS["cpu-settle"], "sfp") == {"settle": 3}
    assert R._soft_engine(PRESETS["cpu-long-settle"], "mfp") == {"settle": 12}
    assert settle_epochs(0.75, 1) == 1 and settle_epochs(0.99, 8) == 7 and settle_epochs(2, 8) == 2
    assert PRESETS["cpu-long-settle"].amp is None and PRESETS["cpu-settle"].amp == "bf16"


def test_dense_checkpoint_of_the_folder_is_evaluated_not_retrained(dense_dir,
                                                                   monkeypatch) -> None:
    """A dense row whose checkpoint is already in the folder (trained for a --tune preset)
    is evaluated from it: no training."""
    monkeypatch.setattr(R, "_fit", lambda *a, **k: pytest.fail("dense retrained"))
    row = R.run_job(TINY, Job("resnet20", "dense", "dense", None, 0), dense_dir)
    assert row["checkpoint_reused"] and 0 <= row["acc"] <= 1


def test_cli_overrides_precision_and_targets(tmp_path, capsys, monkeypatch) -> None:
    """--amp none runs float32 (bf16 is emulated on AVX2-only CPUs), --targets picks the MACs
    rows."""
    from fxprune.bench.accuracy import runner
    from fxprune.cli.bench_accuracy import main

    seen = []
    monkeypatch.setattr(runner, "run", lambda preset, *a, **k: seen.append(preset) or
                        {"rows": []})
    assert main(["--preset", "smoke", "--amp", "none", "--targets", "0.5", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    assert seen[0].amp is None and seen[0].targets == (0.5,)
    assert main(["--preset", "cpu", "--out", str(tmp_path)]) == 0 and seen[1].amp == "bf16"
    assert main(["--preset", "smoke", "--targets", "1.5", "--out", str(tmp_path)]) == 2
    assert "--targets 1.5" in capsys.readouterr().err


def test_recipe_rate_preset_is_the_cpu_preset_at_lr_002() -> None:
    """cpu-lr0.02 differs from cpu only in the fine-tuning rate (and its methods, none of
    them SWP, whose alphas are the Preset default there), so that its rows reuse the cpu rows'
    dense checkpoints and compare with them."""
    cpu, fast = PRESETS["cpu"], PRESETS["cpu-lr0.02"]
    assert fast.lr == 0.02 and cpu.lr == 0.01
    assert dataclasses.replace(fast, name=cpu.name, lr=cpu.lr, methods=cpu.methods,
                               note=cpu.note, swp_alpha=cpu.swp_alpha) == cpu
    assert not any(method_spec(m)[1] == "swp" for m in fast.methods)
