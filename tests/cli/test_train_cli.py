"""``fxprune train``: one-shot compress + fine-tune on digits via main(argv), resume, the
pretrained loader, bad input; soft methods with the real engine; one torchrun subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fxprune
from fxprune.cli import app as cli
from fxprune.cli.train import build_model, load_pretrained
from fxprune.errors import InputError
from fxprune.models import create_model

pytest.importorskip("sklearn")
BASE = ["train", "cifar:resnet20", "--data", "digits", "--epochs", "2", "--batch", "64",
        "--lr", "0.05", "--repeat", "3", "-q"]


def test_oneshot_then_resume(tmp_path, capsys) -> None:
    out = tmp_path / "small.pt"
    argv = [*BASE, "--method", "oneshot", "--criterion", "l1", "--ratio", "0.4", "-o", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "cifar:resnet20 on digits (1294 train / 144 val / 359 test, 1x8x8, 10 classes)" in text
    assert re.search(r"compressed to 0\.\d{3} of the MACs: test accuracy", text)
    lines = [ln for ln in text.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and all("kept MACs 0." in ln and "val acc" in ln for ln in lines)
    for row in ("test accuracy", "MACs", "params", "latency (batch 8"):
        assert row in text
    assert f"saved {out}" in text and Path(f"{out}.ckpt").is_file()
    small = fxprune.load(out)
    dense = create_model("resnet20", in_chans=1, num_classes=10)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # the run is complete: --resume trains nothing and writes the same model again
    w = [p.clone() for p in small.parameters()]
    assert cli.main([*argv, "--resume"]) == 0
    again = capsys.readouterr().out
    assert "epoch " not in again.replace("epochs", "")
    assert all(torch.equal(a, b) for a, b in zip(w, fxprune.load(out).parameters()))


@pytest.mark.parametrize("argv, msg", [
    (["--data", "nosuch"], "unknown dataset"),
    (["--data", "digits", "--batch", "0"], "--batch must be >= 1"),
    (["--data", "digits", "--resume"], "--resume needs --checkpoint"),
    (["--data", "digits", "--pretrained", "missing.pt"], "no such file"),
    (["--data", "digits", "--feature-distill", "-1"], "--feature-distill must be >= 0"),
])
def test_bad_input(argv, msg, capsys) -> None:
    assert cli.main(["train", "cifar:resnet20", "--method", "oneshot", "--ratio", "0.5",
                     *argv]) == 2
    assert msg in capsys.readouterr().err


def test_build_model_and_pretrained(tmp_path) -> None:
    m = build_model("cifar:resnet20", 7, 1)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 7
    assert build_model("resnet18", 5, 1).num_classes == 5  # timm takes in_chans too
    with pytest.raises(InputError, match="3-channel"):
        build_model("tv:resnet18", 5, 1)
    src = build_model("cifar:resnet20", 7, 1)
    torch.save(src.state_dict(), tmp_path / "sd.pt")
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}},
               tmp_path / "ddp.pt")
    for f in ("sd.pt", "ddp.pt"):
        dst = build_model("cifar:resnet20", 7, 1)
        load_pretrained(dst, tmp_path / f)
        assert torch.equal(dst.conv1.weight, src.conv1.weight)
    with pytest.raises(InputError, match="does not fit"):
        load_pretrained(build_model("cifar:resnet20", 10, 1), tmp_path / "sd.pt")
    fxprune.save(fxprune.compress(src, 0.0, example_inputs=(torch.randn(1, 1, 8, 8),)),
                 tmp_path / "dense.pt")  # what `fxprune train --method oneshot --ratio 0` saves
    dst = build_model("cifar:resnet20", 7, 1)
    load_pretrained(dst, tmp_path / "dense.pt")
    assert torch.equal(dst.fc.weight, src.fc.weight)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(InputError, match="no state_dict"):
        load_pretrained(build_model("cifar:resnet20", 7, 1), tmp_path / "list.pt")
    # a whole pickled module is unpickled only when trusted; a payload never runs otherwise
    torch.save(src, tmp_path / "module.pt")
    with pytest.raises(InputError, match="--trust-pickle"):
        load_pretrained(build_model("cifar:resnet20", 7, 1), tmp_path / "module.pt")
    dst = build_model("cifar:resnet20", 7, 1)
    load_pretrained(dst, tmp_path / "module.pt", trust_pickle=True)
    assert torch.equal(dst.fc.weight, src.fc.weight)
    marker = tmp_path / "ran"
    torch.save(_Payload(str(marker)), tmp_path / "evil.pt")
    with pytest.raises(InputError, match="--trust-pickle"):
        load_pretrained(build_model("cifar:resnet20", 7, 1), tmp_path / "evil.pt")
    assert not marker.exists()


class _Payload:
    """Unpickling this creates a marker file: the proof that code from a file ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("method", ["sfp", "fpgm", "mfp", "fppmo"])
def test_soft_methods(tmp_path, capsys, method) -> None:
    out = tmp_path / f"{method}.pt"
    assert cli.main([*BASE, "--method", method, "--ratio", "0.4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("kept MACs") == 2 and f"saved {out}" in text
    assert fxprune.load(out)(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_soft_options_amp_settle_and_grad_norm(tmp_path, capsys, monkeypatch) -> None:
    from fxprune.train import trainer

    seen = {}
    real = trainer.fit

    def spy(*a, **k):
        seen["amp"] = k["amp"]
        seen["pruner"] = k["pruner"]
        return real(*a, **k)

    monkeypatch.setattr(trainer, "fit", spy)
    out = tmp_path / "s.pt"
    assert cli.main([*BASE, "--method", "sfp", "--ratio", "0.4", "--amp", "bf16", "--settle",
                     "0", "--max-grad-norm", "2.5", "-o", str(out)]) == 0
    assert seen["amp"] == "bf16"
    assert seen["pruner"].settle == 0 and seen["pruner"].max_grad_norm == 2.5
    assert seen["pruner"].epochs == 2
    capsys.readouterr()
    assert cli.main([*BASE, "--method", "sfp", "--ratio", "0.4", "--max-grad-norm", "none",
                     "--no-latency"]) == 0
    assert seen["pruner"].max_grad_norm is None
    with pytest.raises(SystemExit):
        cli.main([*BASE, "--method", "sfp", "--ratio", "0.4", "--max-grad-norm", "-1"])


def test_swp_method(tmp_path, capsys) -> None:
    out = tmp_path / "swp.pt"
    assert cli.main([*BASE, "--method", "swp", "--alpha", "0.05", "--delta", "0.05",
                     "--stripe-kernel", "density", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "alpha 0.05, delta 0.05" in text and f"saved {out}" in text
    assert fxprune.load(out)(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    capsys.readouterr()
    budget = tmp_path / "swp_budget.pt"  # SWP's budgeted mode, the authors' settings
    assert cli.main([*BASE, "--method", "swp", "--target-flops", "0.5", "--variant", "paper",
                     "--stripe-kernel", "stripe", "--no-latency", "-o", str(budget)]) == 0
    small = fxprune.load(budget)
    x = torch.randn(1, 1, 8, 8)
    kept = fxprune.count(small, (x,)).macs / fxprune.count(
        create_model("resnet20", in_chans=1, num_classes=10), (x,)).macs
    assert 0.4 < kept <= 0.51
    for argv, why in ((["--method", "swp", "--ratio", "0.4"], "learns how much"),
                      (["--method", "sfp"], "needs --ratio")):
        assert cli.main([*BASE, *argv, "-o", str(tmp_path / "x.pt")]) == 2
        assert why in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path) -> None:
    """The same command under torchrun (2 CPU processes, gloo on 127.0.0.1): rank 0 prints
    and saves, the per-rank batch is 32 of the global 64."""
    out = tmp_path / "ddp.pt"
    method = ["--method", "sfp"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "fxprune", *BASE[:-1], "--epochs", "1", "-q", *method, "--ratio", "0.4",
           "--no-latency", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("2 process(es) on cpu") == 1  # rank 0 only
    assert r.stdout.count("epoch 1/1") == 1 and f"saved {out}" in r.stdout
    assert fxprune.load(out)(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_distill_reaches_fit(tmp_path, capsys, monkeypatch) -> None:
    """--distill/--temperature: fit gets a dense teacher (a copy taken before any mask)."""
    from fxprune.train import trainer

    seen = {}
    real = trainer.fit

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(trainer, "fit", spy)
    assert cli.main([*BASE, "--method", "sfp", "--ratio", "0.4", "--distill", "0.5",
                     "--temperature", "3", "--no-latency"]) == 0
    assert seen["distill"] == 0.5 and seen["temperature"] == 3.0
    teacher = seen["teacher"]
    assert teacher is not None and not teacher.training
    convs = [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(bool((c.weight.flatten(1).abs().sum(1) > 0).all()) for c in convs)  # unmasked
    capsys.readouterr()


def test_feature_distill_reaches_fit(capsys, monkeypatch) -> None:
    """--feature-distill: a one-shot cut is fine-tuned with fit(feature_distill=) from the dense
    model; a soft method (masked at full width) is refused with a clear error."""
    from fxprune.train import trainer

    seen = {}
    real = trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda *a, **k: seen.update(k) or real(*a, **k))
    assert cli.main([*BASE, "--method", "oneshot", "--ratio", "0.4", "--feature-distill", "2",
                     "--no-latency"]) == 0
    assert seen["feature_distill"] == 2.0 and seen["teacher"] is not None
    assert seen["distill"] == 0.0
    capsys.readouterr()
    assert cli.main([*BASE, "--method", "sfp", "--ratio", "0.4", "--feature-distill", "1"]) == 2
    assert "needs --method oneshot" in capsys.readouterr().err
