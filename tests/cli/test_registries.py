"""The registries are the single source: a training method and a criterion registered by the
documented recipe (docs/architecture.md), in this process and nowhere else, are usable from
``fxprune train``, ``fxprune compress``, ``fxprune list-criteria`` and the accuracy benchmark's
row function."""

from __future__ import annotations

import dataclasses

import pytest

from fxprune.bench.accuracy import PRESETS
from fxprune.bench.accuracy.presets import Job, jobs, method_names, method_spec
from fxprune.bench.accuracy.rows import run_job
from fxprune.cli import main
from fxprune.criteria import CRITERIA, producer_scores, register_criterion
from fxprune.train import Method, register_method
from fxprune.train.methods import METHODS, needs_data

pytest.importorskip("sklearn")

METHOD, CRITERION = "test_registry_method", "test_registry_norm"
SEEN: dict[str, list] = {"method": [], "criterion": []}


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The recipe's method and criterion, registered for this module and removed after it."""

    @register_method(METHOD)
    class Probe(Method):
        """L1 once, before the first epoch; records what it was given."""

        default_criterion = "l1"
        hold = "epoch"
        needs_data = True                  # the engine must be given data=
        options = {"alpha": 0.1}

        def initial(self, pruner):
            SEEN["method"].append((pruner.data is not None, self.opts["alpha"]))
            return pruner.select(pruner.scores(pruner.criterion))

        def update(self, pruner):
            return None

    @register_criterion(CRITERION)
    def norm(group, ctx):
        """Max |w| per filter (a test criterion)."""
        SEEN["criterion"].append(group.id)
        return producer_scores(group, ctx, lambda w: w.abs().amax(1))

    yield
    METHODS.pop(METHOD)
    CRITERIA.pop(CRITERION)


TRAIN = ["train", "cifar:resnet20", "--data", "digits", "--epochs", "1", "--batch", "64",
         "--lr", "0.05", "-q", "--no-latency"]


def test_a_registered_method_trains_from_the_command_line(tmp_path, capsys):
    SEEN["method"].clear()
    out = tmp_path / "small.pt"
    assert main([*TRAIN, "--method", METHOD, "--ratio", "0.4", "--alpha", "0.25",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"method {METHOD}, ratio 0.4" in text and f"saved {out}" in text
    assert SEEN["method"] == [(True, 0.25)]  # needs_data: the validation split; --alpha: its
    assert main([*TRAIN, "--method", METHOD, "--ratio", "0.4", "--option", "beta=2"]) == 2
    assert "has no option(s) beta" in capsys.readouterr().err


def test_a_registered_criterion_compresses_from_the_command_line(capsys):
    SEEN["criterion"].clear()
    assert main(["list-criteria"]) == 0
    assert CRITERION in capsys.readouterr().out
    assert main(["-q", "compress", "cifar:resnet20", "--input", "1,3,32,32", "--ratio", "0.5",
                 "--criterion", CRITERION, "--no-latency"]) == 0
    text = capsys.readouterr().out
    assert f"criterion {CRITERION}, pruned and verified" in text and "oracle: exact" in text
    assert SEEN["criterion"]


def test_the_benchmark_runs_registered_names(tmp_path):
    assert {METHOD, CRITERION} <= set(method_names())
    assert method_spec(METHOD) == ("fxprune", "soft", {"method": METHOD})
    assert method_spec(CRITERION) == ("fxprune", "oneshot", {"criterion": CRITERION})
    assert needs_data(METHOD) and not needs_data("sfp") and needs_data("soft", "taylor")
    p = dataclasses.replace(PRESETS["smoke"], dense_epochs=1, epochs=1, targets=(0.5,),
                            methods=(METHOD, CRITERION), latency_batch=4)
    dense, rows = jobs(p)
    assert [j.key for j in rows] == [f"resnet20/fxprune/{METHOD}/0.5/0",
                                     f"resnet20/fxprune/{CRITERION}/0.5/0"]
    assert run_job(p, dense[0], tmp_path)["method"] == "dense"
    SEEN["method"].clear()
    SEEN["criterion"].clear()
    for job in rows:
        row = run_job(p, job, tmp_path)
        assert row["key"] == job.key and 0 <= row["acc"] <= 1
        assert abs(row["macs_kept"] - 0.5) < 0.05, row
    assert SEEN["method"] == [(True, 0.1)] and SEEN["criterion"]
    with pytest.raises(Exception, match="unknown benchmark method"):
        run_job(p, Job("resnet20", "fxprune", "nosuch", 0.5, 0), tmp_path)
