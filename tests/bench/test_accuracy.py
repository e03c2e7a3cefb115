"""The accuracy benchmark (fxprune bench accuracy): protocol, resumable rows, the table."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fxprune import InputError
from fxprune.bench.accuracy import PRESETS, run
from fxprune.bench.accuracy.presets import METHODS, jobs
from fxprune.bench.accuracy.report import markdown, summarize

pytest.importorskip("sklearn")

ROW_KEYS = {"model", "tool", "method", "target", "seed", "macs_kept", "params_kept",
            "acc_oneshot", "acc", "epochs", "train_images"}


def test_cpu_preset_expands_to_every_method_target_and_seed():
    p = PRESETS["cpu"]
    dense, rows = jobs(p)
    assert len(dense) == 6  # resnet20 and its option-B twin (for Torch-Pruning), 3 seeds
    # fxprune one-shot and soft (fxprune's and the paper's variants, SWP with a budget in its
    # three grains), SWP's alphas in both variants, tp, l1 on the twin
    per_seed = (4 + 4 + 4 + 3) * 2 + 2 * len(p.swp_alpha) + 2 * 2 + 2
    assert len(rows) == 3 * per_seed
    assert len({j.key for j in dense + rows}) == len(dense) + len(rows)
    assert {j.model for j in rows if j.tool == "torch-pruning"} == {"resnet20_b"}
    assert [j.seed for j in rows] == sorted(j.seed for j in rows)  # whole seeds first
    assert {m for m in METHODS} == {j.method for j in rows}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("acc")
    cmd = [sys.executable, "-m", "fxprune", "bench", "accuracy", "--preset", "smoke",
           "--methods", "random,l1,sfp", "--workers", "1", "--out", str(out), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, json.loads((out / "accuracy_smoke.json").read_text()), r.stdout


def test_smoke_rows_have_the_table_keys_and_are_sane(smoke):
    out, doc, stdout = smoke
    rows = doc["rows"]
    assert len(rows) == 1 + 3 * 2 and not any("error" in r for r in rows)
    for r in rows:
        assert set(r) >= ROW_KEYS, r
    dense = [r for r in rows if r["method"] == "dense"][0]
    assert dense["tool"] == "dense" and dense["macs_kept"] == 1.0
    assert dense["acc"] > 0.5  # digits: far above the 10% of a random-init network
    for r in rows:
        if r["method"] == "dense":
            continue
        assert abs(r["macs_kept"] - r["target"]) < 0.03 * r["target"] + 0.01, r
        assert 0 <= r["acc"] <= 1 and r["acc_oneshot"] is not None
        assert r["params_kept"] < 1 and r["speedup"] > 0 and r["seconds"] > 0
    assert doc["meta"]["command"].startswith("fxprune bench accuracy --preset smoke")
    table = (out / "accuracy_smoke.md").read_text()
    assert "| resnet20 | fxprune | l1" in table and "Δ vs dense" in table
    assert "rows (0 failed)" in stdout


def test_recheck_reproduces_a_row(smoke, capsys):
    from fxprune.cli.bench_accuracy import main

    out, doc, _ = smoke
    args = ["--preset", "smoke", "--methods", "random,l1,sfp", "--out", str(out)]
    assert main([*args, "--recheck", "resnet20/fxprune/l1/0.5/0", "--tolerance", "0"]) == 0
    assert "+0.00 pt" in capsys.readouterr().out  # same seed, same process setup: identical
    assert main([*args, "--recheck", "resnet20/fxprune/nosuch/0.5/0"]) == 2


def test_resume_skips_finished_rows_and_refuses_another_configuration(smoke):
    out, doc, _ = smoke
    p = dataclasses.replace(PRESETS["smoke"], methods=("random", "l1", "sfp"))
    seen = []
    again = run(p, out, workers=1, on_row=lambda *a: seen.append(a))
    assert seen == [] and len(again["rows"]) == len(doc["rows"])
    # fewer methods (or other seeds, models, targets) keep the finished rows
    run(dataclasses.replace(p, methods=("l1",)), out, workers=1,
        on_row=lambda *a: seen.append(a))
    assert seen == []
    with pytest.raises(InputError, match="another configuration"):
        run(dataclasses.replace(p, dense_epochs=2), out, workers=1)
    # another list of methods keeps every finished row (a method added runs only its rows)
    run(dataclasses.replace(p, methods=("l1", "random")), out, workers=1,
        on_row=lambda *a: seen.append(a))
    assert seen == []
    # another method budget keeps the dense baselines and redoes the rows
    seen.clear()
    redone = run(dataclasses.replace(p, epochs=2, methods=("l1",)), out, workers=1,
                 on_row=lambda row, *a: seen.append(row["key"]))
    assert sorted(seen) == ["resnet20/fxprune/l1/0.25/0", "resnet20/fxprune/l1/0.5/0"]
    assert all(r["epochs"] == 2 for r in redone["rows"] if r["method"] == "l1")
    # a dense checkpoint gone (another clone) is trained again only when a row needs it
    for f in (out / "dense").glob("*.pt"):
        f.unlink()
    seen.clear()
    run(dataclasses.replace(p, epochs=2, methods=("l1",)), out, workers=1,
        on_row=lambda row, *a: seen.append(row["key"]))
    assert seen == [] and not list((out / "dense").glob("*.pt"))
    run(dataclasses.replace(p, epochs=2, methods=("l1", "l2")), out, workers=1,
        on_row=lambda row, *a: seen.append(row["key"]))
    assert seen[0] == "resnet20/dense/dense/learned/0" and len(seen) == 3, seen


def test_report_means_and_deltas_per_seed():
    rows = [{"key": f"d{s}", "model": "m", "tool": "dense", "method": "dense", "target": None,
             "seed": s, "acc": a, "macs_kept": 1.0, "params_kept": 1.0}
            for s, a in ((0, 0.90), (1, 0.80))]
    rows += [{"key": f"l{s}", "model": "m", "tool": "fxprune", "method": "l1", "target": 0.5,
              "seed": s, "acc": a, "acc_oneshot": 0.1, "macs_kept": 0.5, "params_kept": 0.4,
              "speedup": 1.5, "seconds": 3.0} for s, a in ((0, 0.85), (1, 0.79))]
    rows.append({"key": "x", "model": "m", "tool": "fxprune", "method": "sfp", "target": 0.5,
                 "seed": 0, "error": "RuntimeError: boom"})
    s = {e["method"]: e for e in summarize(rows)}
    assert s["l1"]["delta"] == pytest.approx([-0.05, -0.01])
    assert "sfp" not in s
    md = markdown({"meta": {"preset": {"name": "t", "latency_batch": 64}}, "rows": rows})
    assert "82.00 ± 4.24" in md and "-3.00 ± 2.83" in md and "1 row(s) failed" in md


def test_tune_report_with_a_reused_dense_baseline(tmp_path):
    """`--tune` reuses a dense checkpoint as a row without accuracy: the table still renders
    (it raised KeyError: 'macs_kept' once every candidate had run)."""
    from fxprune.bench.accuracy.presets import Job
    from fxprune.bench.accuracy.rows import dense_path
    from fxprune.bench.accuracy.runner import _reuse_dense

    dense_path(tmp_path, "m", 0).parent.mkdir()
    dense_path(tmp_path, "m", 0).write_bytes(b"")
    done: dict = {}
    job = Job(model="m", tool="dense", method="dense", target=None, seed=0)
    _reuse_dense(tmp_path, [job], done)
    rows = [*done.values(), {"key": "l", "model": "m", "tool": "fxprune", "method": "l1",
                              "target": 0.5, "seed": 0, "acc": 0.8, "acc_oneshot": 0.1,
                              "macs_kept": 0.5, "params_kept": 0.4, "speedup": 1.5,
                              "seconds": 3.0}]
    md = markdown({"meta": {"preset": {"name": "t", "latency_batch": 64}, "split": "val"},
                   "rows": rows})
    assert "80.00" in md


def test_torch_pruning_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    p = dataclasses.replace(PRESETS["smoke"], methods=("l1", "tp-group"),
                            tp_models={"resnet20": "resnet20_b"})
    with pytest.raises(InputError, match="pip install"):
        run(p, tmp_path, workers=1)


def test_paper_flops_column_follows_the_rows_residual_policy():
    import torch

    from fxprune.bench.accuracy.rows import _paper_cut
    from fxprune.models import create_model

    m, x = create_model("resnet20", in_chans=1), torch.randn(1, 1, 28, 28)
    scatter, coupled = _paper_cut(m, 0.6, x, "scatter"), _paper_cut(m, 0.6, x, "coupled")
    assert 0 < scatter < coupled
    assert _paper_cut(m, 0.6, x, None) is None and _paper_cut(m, None, x, "coupled") is None
    row = {"key": "s", "model": "m", "tool": "fxprune", "method": "swp", "target": None,
           "alpha": 0.01, "seed": 0, "acc": 0.5, "macs_kept": 0.4, "params_kept": 0.5,
           "paper_flops_cut": None}
    assert "| n/a " in markdown({"meta": {"preset": {"name": "t"}}, "rows": [row]})


def test_cpu_long_preset_is_four_times_the_cpu_budget():
    cpu, long = PRESETS["cpu"], PRESETS["cpu-long"]
    assert long.epochs == 4 * cpu.epochs == 16
    assert (long.dataset, long.subset, long.dense_epochs, long.seeds, long.targets) == (
        cpu.dataset, cpu.subset, cpu.dense_epochs, (0, 1, 2), (0.5, 0.25))
    assert long.amp is None  # float32: bf16 is emulated, 10x slower, on AVX2-only CPUs
    for m in ("l1", "fpgm", "sfp", "fpgm-soft", "mfp", "fppmo", "swp", "tp-group"):
        assert m in long.methods
        if m in ("sfp", "fpgm-soft", "mfp", "fppmo", "swp"):
            assert f"{m} (paper)" in long.methods
    dense, rows = jobs(long)
    assert {j.method for j in rows} == set(long.methods)


_ORPHAN_SCRIPT = """
import concurrent.futures as cf, multiprocessing as mp, os, sys, time
from fxprune.bench.accuracy import runner

def pid_then_sleep():
    return os.getpid()

if __name__ == "__main__":
    pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                                  initializer=runner._init_worker, initargs=(1,))
    print(pool.submit(pid_then_sleep).result(), flush=True)
    pool.submit(time.sleep, 600)
    time.sleep(600)
"""


def test_workers_stop_when_the_run_is_killed(tmp_path):
    """A killed `fxprune bench accuracy` leaves no worker training on, orphaned."""
    import os
    import signal
    import time

    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    stat = Path(f"/proc/{worker}/stat")
    for _ in range(100):
        try:
            os.kill(worker, 0)
            if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return  # exited, not yet reaped by whoever inherited it
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the worker outlived its run")


def test_a_record_without_a_newer_field_keeps_its_rows():
    """A results file written before a Preset field existed (distill, recal_batches, ... were
    added after the cpu rows) reads that field as its default: resuming it with a new method
    does not discard the finished rows; a changed value still does."""
    from fxprune.bench.accuracy.runner import _row_config

    new = PRESETS["cpu"].to_dict()
    old = {k: v for k, v in new.items() if k not in ("distill", "group_scoring",
                                                     "recal_batches", "gradual_steps")}
    assert _row_config(old) == _row_config(new)
    assert _row_config({**old, "distill": 0.9}) != _row_config(new)
    committed = Path(__file__).resolve().parents[2] / "benchmarks/results/accuracy_cpu.json"
    if committed.exists():  # the committed cpu rows: resumable by today's preset
        stored = json.loads(committed.read_text())["meta"]["preset"]
        assert _row_config(stored) == _row_config(new)
