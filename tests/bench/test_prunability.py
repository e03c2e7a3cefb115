"""``fxprune bench prunability``: child processes, records, reports (two tiny timm models)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import timm

from fxprune.bench import prunability as bench
from fxprune.bench import report as bench_report
from fxprune.bench import sets as bench_sets

TINY = "test_resnet,test_efficientnet"
HAS_TP = importlib.util.find_spec("torch_pruning") is not None


def _load(out):
    data = json.loads((out / "prunability.json").read_text())
    md = (out / "prunability.md").read_text()
    return data, md


def test_prunability_two_tiny_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out (the children run elsewhere)
    rc = bench.main(["prunability", "--models", TINY, "--out", "out", "--timeout", "120",
                     "--strict"])
    assert rc == 0
    data, md = _load(tmp_path / "out")
    assert data["meta"]["ratio"] == 0.5 and data["meta"]["timm"] == timm.__version__
    assert [m["model"] for m in data["models"]] == TINY.split(",")
    for row in data["models"]:
        rec = row["fxprune"]
        assert row["family"] in ("resnet", "efficientnet")
        assert rec["status"] == "pass", rec
        assert rec["stage"] is None and not rec.get("error")
        assert rec["seconds"] > 0 and rec["wall_seconds"] >= rec["seconds"]
        assert 0.2 < rec["macs_cut"] < 1 and 0.2 < rec["params_cut"] < 1
        assert rec["macs_after"] < rec["macs_before"]
        assert rec["oracle"] == "exact" and rec["max_abs_err"] < 1e-3
        assert rec["input_shape"][0] == 1
    assert data["summary"]["fxprune"] == {"pass": 2, "approximate": 0, "fail": 0}
    assert "**fxprune: 2 pass (exact oracle), 0 approximate, 0 fail of 2 models.**" in md
    assert "| model | family | fxprune | MACs cut | verdict | stage | prune s |" in md
    assert "| test_resnet | resnet | pass |" in md and " | exact |  | " in md
    assert "## Per family" in md and "| efficientnet | 1 | 1 | 0 | 0 |" in md
    assert "Torch-Pruning" not in md


@pytest.mark.skipif(not HAS_TP, reason="torch-pruning is not installed (the bench extra)")
def test_against_torch_pruning(tmp_path):
    rc = bench.main(["prunability", "--models", "test_resnet", "--out", str(tmp_path),
                     "--against", "torch-pruning", "--timeout", "120"])
    assert rc == 0
    data, md = _load(tmp_path)
    tp = data["models"][0]["torch_pruning"]
    assert tp["status"] == "pass", tp
    assert tp["macs_cut"] > 0.2 and tp["seconds"] > 0
    assert tp["verdict"] == "exact" and tp["max_abs_err"] < 1e-3  # fxprune's oracle on TP
    assert data["summary"]["torch_pruning"] == {"pass": 1, "fail": 0}
    assert data["summary"]["torch_pruning_verdicts"]["exact"] == 1
    assert data["summary"]["median_time_ratio_tp_over_fxprune"] > 0
    assert "**Torch-Pruning: 1 pass, 0 fail of 1 models** (pass = runs, same output" in md
    assert "verdicts of the passes: 1 exact, 0 approximate, 0 unverified" in md
    assert "Median pruning time ratio Torch-Pruning / fxprune" in md


def test_timeout_and_memory_cap_are_recorded(tmp_path):
    bench.main(["prunability", "--models", "test_resnet", "--out", str(tmp_path / "t"),
                "--timeout", "0.3"])
    rec = _load(tmp_path / "t")[0]["models"][0]["fxprune"]
    assert (rec["status"], rec["stage"]) == ("fail", "timeout")
    assert rec["error"].startswith("timed out after 0.3 s during ")
    # 1 GiB of address space: the child cannot even import torch
    bench.main(["prunability", "--models", "test_resnet", "--out", str(tmp_path / "m"),
                "--mem-gb", "1"])
    data, md = _load(tmp_path / "m")
    rec = data["models"][0]["fxprune"]
    assert (rec["status"], rec["stage"]) == ("fail", "oom"), rec
    assert data["summary"]["fxprune_fail_stages"] == {"oom": 1}
    assert "fxprune failures by stage: oom 1." in md


def test_usage_errors(tmp_path, capsys):
    assert bench.main(["prunability", "--models", "resnet_50", "--out", str(tmp_path)]) == 2
    assert "unknown timm model(s): resnet_50 (did you mean" in capsys.readouterr().out
    assert bench.main(["prunability", "--ratio", "1.5", "--models", "test_resnet"]) == 2
    assert bench.main(["--help"]) == 0
    assert bench.main(["nonsense"]) == 2
    assert bench.main(["prunability", "--set", "torchvision", "--models", "resnet_50",
                       "--out", str(tmp_path)]) == 2
    assert "unknown torchvision model(s): resnet_50 (did you mean" in capsys.readouterr().out
    assert bench.main(["prunability", "--fuzz", "2", "--set", "ci"]) == 2
    assert bench.main(["prunability", "--models", "test_resnet", "--update", "r.md"]) == 2
    assert "--update needs a .json report path" in capsys.readouterr().out


def test_fuzz_mode(tmp_path):
    assert bench.main(["prunability", "--fuzz", "4", "--seed", "7", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "fuzz.json").read_text())
    assert data["cases"] == 4 and data["failed"] == 0 and data["seeds"] == [7, 11]
    assert "4 cases, 0 failed" in (tmp_path / "fuzz.md").read_text()


def test_model_sets_cover_the_families():
    known = set(timm.list_models())
    default = bench.model_set("default")
    assert len(default) == len(set(default)) >= 50
    assert set(default) <= known and set(bench.DEFAULT_SET) <= known
    families = {bench.family_of(m) for m in default}
    wanted = {"byobnet", "byoanet", "convmixer", "convnext", "cspnet", "densenet", "dla", "dpn",
              "edgenext", "efficientformer", "efficientformer_v2", "efficientnet", "fasternet",
              "fastvit", "ghostnet", "hardcorenas", "hgnet", "hrnet", "inception_next",
              "inception_resnet_v2", "inception_v3", "inception_v4", "mambaout", "metaformer",
              "mobilenetv3", "mobilenetv5", "mobilevit", "nasnet", "nfnet", "pnasnet", "rdnet",
              "regnet", "repghost", "repvit", "res2net", "resnest", "resnet", "resnetv2",
              "rexnet", "selecsls", "senet", "sknet", "starnet", "tresnet", "vgg", "vovnet",
              "xception"}
    if "lcnetv2" in timm.list_modules():
        wanted.add("lcnetv2")
    assert wanted <= families, wanted - families
    ci = bench.model_set("ci")
    assert set(timm.list_models("test_*")) <= set(ci) and len(ci) == len(set(ci))
    assert len([m for m in ci if not m.startswith("test_")]) == 5


def test_torchvision_set():
    tv = bench.model_set("torchvision")
    assert tv == list(bench.TORCHVISION_SET) and len(tv) >= 10
    assert {bench.family_of(m, "torchvision") for m in tv} >= {
        "resnet", "mobilenetv3", "efficientnet", "regnet", "convnext", "vision_transformer",
        "swin_transformer", "densenet", "shufflenetv2", "squeezenet"}
    assert bench.family_of("squeezenet1_0") == "?"  # a torchvision name is not a timm model
    model, (x,) = bench_sets.make_model("squeezenet1_0", "torchvision")
    assert tuple(x.shape) == (1, 3, 224, 224) and not model.training
    # SqueezeNet's classifier is a conv: the one Torch-Pruning must leave alone
    assert bench_sets.classifiers(model) == [model.classifier[1]]


def test_unzero_draws_zero_initialised_weights():
    """A zero head (torchvision ViT) makes every output 0: the oracle would prove nothing."""
    import torch.nn as nn

    head = nn.Linear(4, 3)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    model = nn.Sequential(nn.Linear(4, 4), head)
    assert bench_sets.unzero(model) == ["1.weight"]  # biases (1-D) stay as they are
    assert head.weight.abs().max() > 0 and not head.bias.any()
    assert bench_sets.unzero(model) == []


def test_torchvision_model_in_a_child(tmp_path):
    """``--set torchvision --models``: one torchvision model, merged into a report file."""
    report = tmp_path / "results" / "tv.json"
    rc = bench.main(["prunability", "--set", "torchvision", "--models", "squeezenet1_0",
                     "--out", str(tmp_path / "out"), "--timeout", "120", "--strict",
                     "--update", str(report)])
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["meta"]["source"] == "torchvision" and data["meta"]["torchvision"]
    (row,) = data["models"]
    assert (row["model"], row["family"]) == ("squeezenet1_0", "squeezenet")
    rec = row["fxprune"]
    assert (rec["status"], rec["verdict"]) == ("pass", "exact"), rec
    assert rec["input_shape"] == [1, 3, 224, 224] and 0.5 < rec["macs_cut"] < 1
    md = report.with_suffix(".md").read_text()
    assert "torchvision 0." in md and "| squeezenet1_0 | squeezenet | pass |" in md


def test_report_from_records(tmp_path):
    """Summary and markdown from hand-made records (no child processes)."""
    def rec(status, seconds, stage=None, error="", verdict="exact", note=""):
        return {"status": status, "seconds": seconds, "stage": stage, "error": error,
                "macs_cut": 0.5, "params_cut": 0.4, "max_abs_err": 1e-7,
                "verdict": None if status == "fail" else verdict, "verdict_note": note}

    rows = [
        {"model": "a", "family": "f1", "fxprune": rec("pass", 1.0),
         "torch_pruning": rec("pass", 3.0)},
        {"model": "b", "family": "f1", "fxprune": rec("approximate", 2.0, verdict="approximate"),
         "torch_pruning": rec("fail", None, "rewrite", "IndexError: x|y")},
        {"model": "c", "family": "f2", "fxprune": rec("fail", None, "analyze", "Boom"),
         "torch_pruning": rec("pass", 1.0, verdict="unverified", note="cut a frozen group")},
        {"model": "d", "family": "f2", "fxprune": {**rec("pass", 2.0), "vacuous": "all 0",
                                                   "unzeroed": ["head.weight"]},
         "torch_pruning": rec("pass", 2.0)},
    ]
    meta = {"command": "fxprune bench prunability", "ratio": 0.5, "timeout": 300, "mem_gb": 8,
            "against": "torch-pruning", "cpus": 2, "torch": "t", "timm": "m",
            "torch_pruning": "p", "wall_seconds": 60}
    summary = bench.write_report(tmp_path, meta, rows)
    assert summary["fxprune"] == {"pass": 2, "approximate": 1, "fail": 1}
    assert summary["torch_pruning"] == {"pass": 3, "fail": 1}
    assert summary["both_pass"] == 2
    assert summary["median_time_ratio_tp_over_fxprune"] == pytest.approx(2.0)  # 3.0 and 1.0
    assert summary["families"]["f2"] == {"models": 2, "pass": 1, "approximate": 0, "fail": 1,
                                         "tp_pass": 2, "macs_cut": 0.5, "tp_macs_cut": 0.5}
    assert summary["torch_pruning_verdicts"] == {"exact": 2, "approximate": 0,
                                                 "unverified": 1}
    md = (tmp_path / "prunability.md").read_text()
    assert "| c | f2 | fail | 50.0% | - | analyze | - |" in md
    assert "| d | f2 | pass | 50.0% | exact (vacuous) |  | 2.00 |" in md
    assert "vacuous: all 0 |" in md and "instead (else the outputs" in md
    assert "oracle vacuous): d (head.weight)." in md
    assert "| f2 | 2 | 1 | 0 | 1 | 50.0% | 2 | 50.0% |" in md
    assert "TP unverified: cut a frozen group" in md
    assert "TP: IndexError: x\\|y" in md and "fail (rewrite)" in md
    assert "**2.00x**" in md


def test_update_merges_a_rerun(tmp_path):
    """--update: a rerun replaces its models' rows in place and is noted in the report."""
    meta = {"command": "fxprune bench prunability --set torchvision", "ratio": 0.5,
            "timeout": 300, "mem_gb": 8, "against": None, "cpus": 2, "torch": "t",
            "torchvision": "v", "wall_seconds": 60, "date": "d0"}

    def row(model, cut, tp=None):
        r = {"model": model, "family": model, "fxprune": {
            "status": "pass", "verdict": "exact", "seconds": 1.0, "macs_cut": cut}}
        return {**r, "torch_pruning": tp} if tp else r

    path = tmp_path / "r" / "tv.json"
    tp = {"status": "pass", "verdict": "exact", "seconds": 2.0, "macs_cut": 0.6}
    bench_report.merge_rows(path, {**meta, "against": "torch-pruning"},
                            [row("a", 0.1, tp), row("b", 0.2, tp)])  # creates it
    rerun = {**meta, "command": "fxprune bench prunability --models b,c", "date": "d1"}
    summary = bench_report.merge_rows(path, rerun, [row("b", 0.7), row("c", 0.3)])
    data = json.loads(path.read_text())
    assert [(r["model"], r["fxprune"]["macs_cut"]) for r in data["models"]] == [
        ("a", 0.1), ("b", 0.7), ("c", 0.3)]
    assert data["meta"]["command"] == meta["command"] and summary["models"] == 3
    assert data["meta"]["reruns"][0]["models"] == ["b", "c"]
    assert data["models"][1]["torch_pruning"] == tp  # kept: the rerun had no --against
    md = path.with_suffix(".md").read_text()
    assert "Rows of b, c rerun by `fxprune bench prunability --models b,c` (d1)." in md
    assert "| b | b | pass | 70.0% | exact |" in md and "| c | c | pass | 30.0% |" in md
    with pytest.raises(ValueError, match="needs a .json report path"):
        bench_report.merge_rows(tmp_path / "r.md", meta, [])
