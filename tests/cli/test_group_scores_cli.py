"""``--group-scores SPEC`` reaches compress (fxprune compress, fxprune train --method oneshot)
and SoftPruner (fxprune train, soft methods); a bad spec is a usage error."""

from __future__ import annotations

import pytest

from fxprune.cli import app as cli
from fxprune.plan import compress as plan_compress
from fxprune.train import engine

CIFAR = ["cifar:resnet20", "--input", "1,3,32,32"]


def _spy(monkeypatch, module, name):
    seen: dict = {}
    real = getattr(module, name)

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_compress_group_scores(monkeypatch, capsys) -> None:
    seen = _spy(monkeypatch, plan_compress, "compress")
    assert cli.main(["-q", "compress", *CIFAR, "--ratio", "0.5", "--group-scores", "all/none/sum",
                     "--no-latency", "--no-verify"]) == 0
    assert seen["scoring"] == "all/none/sum"
    capsys.readouterr()


def test_bad_spec_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["compress", *CIFAR, "--ratio", "0.5", "--group-scores", "everything"])
    assert e.value.code == 2 and "members" in capsys.readouterr().err


def test_train_group_scores(monkeypatch, capsys, tmp_path) -> None:
    pytest.importorskip("sklearn")
    base = ["train", "cifar:resnet20", "--data", "digits", "--epochs", "1", "--batch", "64",
            "--repeat", "1", "-q", "--no-latency", "--ratio", "0.4", "--group-scores", "all"]
    seen = _spy(monkeypatch, engine, "SoftPruner")
    assert cli.main([*base, "--method", "sfp"]) == 0
    assert seen["scoring"] == "all"
    seen = _spy(monkeypatch, plan_compress, "compress")
    assert cli.main([*base, "--method", "oneshot"]) == 0
    assert seen["scoring"] == "all"
    capsys.readouterr()
