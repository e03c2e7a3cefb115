"""The ``fxprune`` command line: every subcommand as a subprocess (run concurrently: each one
pays ~3 s of torch/timm import), plus in-process checks of model loading and error paths."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.cli import app as cli
from fxprune.models import create_model

X = torch.randn(1, 3, 32, 32)
CIFAR = ["cifar:resnet20", "--input", "1,3,32,32"]

ROLLNET = textwrap.dedent("""
    import torch
    import torch.nn as nn


    class RollNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(torch.flip(self.b(self.a(x)), dims=[1]))


    def build():
        return RollNet()
""")


def _reference(path: Path) -> nn.Module:
    """What `fxprune compress cifar:resnet20` builds (seed 0), pruned and saved in-process."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    fxprune.save(fxprune.compress(model, 0.5, example_inputs=X), path)
    return model


COMMANDS: dict[str, list[str]] = {
    "inspect": ["inspect", *CIFAR, "--ratio", "0.5", "--format", "json"],
    "compress": ["compress", *CIFAR, "--ratio", "0.5", "--verify", "--batch", "2",
                 "--threads", "1", "--repeat", "3", "--warmup", "1", "-o", "pruned.pt"],
    "verify": ["verify", "cifar:resnet20", "ref.pt"],
    # projection shortcuts: in an option-A ResNet the zero-padded stream spans layers of
    # different widths, and round_to applies to the group's kept units, not to each slice
    "auto": ["-q", "compress", "cifar:resnet20_b", "--input", "1,3,32,32", "--ratio", "0.5",
             "--round-to", "auto", "--no-latency", "-o", "auto.pt"],
    "graph": ["graph", *CIFAR, "-o", "graph.dot"],
    "plot": ["plot", *CIFAR, "--ratio", "0.5", "-o", "widths.png"],
    "criteria": ["list-criteria"],
    "rules": ["list-rules"],
    "bench": ["bench", "--help"],
    "bad_ratio": ["-q", "compress", *CIFAR, "--ratio", "1.5"],
    "strict": ["compress", "rollnet:build", "--input", "1,3,16,16", "--ratio", "0.5",
               "--strict"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run every command concurrently; {name: (returncode, stdout, stderr)} and the folder."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "rollnet.py").write_text(ROLLNET)
    _reference(tmp / "ref.pt")
    env = {**os.environ, "PYTHONPATH": str(tmp), "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "fxprune", *args], cwd=tmp, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in COMMANDS.items()}
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (p.returncode, stdout, stderr)
    return out, tmp


def _ok(runs, name):
    rc, stdout, stderr = runs[0][name]
    assert rc == 0, f"{name}: exit {rc}\n{stderr}"
    return stdout, stderr


def test_inspect_json(runs):
    stdout, _ = _ok(runs, "inspect")
    data = json.loads(stdout)
    s = data["summary"]
    assert s["model"] == "ResNetCifar" and s["ratio"] == 0.5 and s["input_shapes"] == [[1, 3, 32,
                                                                                       32]]
    assert s["groups"] == len(data["groups"]) and s["macs_after"] < s["macs_before"]
    assert all(g["kept"] is not None and g["kept"] <= g["units"] for g in data["groups"])
    layers = {r["name"]: r for r in data["layers"]}
    assert layers["layer1.0.conv1"]["out_before"] == 16
    assert layers["layer1.0.conv1"]["out_after"] == 8


def test_compress_prints_table_and_saves(runs):
    stdout, stderr = _ok(runs, "compress")
    for word in ("params", "MACs", "latency (batch 2, 1 thread, cpu)", "x faster",
                 "oracle: exact", "saved pruned.pt"):
        assert word in stdout
    assert "fxprune analyze" in stderr  # the tqdm progress bar
    pruned = fxprune.load(runs[1] / "pruned.pt")
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert fxprune.count(pruned, X).params < fxprune.count(create_model("resnet20"), X).params


def test_compress_round_to_auto(runs):
    _ok(runs, "auto")
    rt = fxprune.auto_round_to("cpu")
    pruned = fxprune.load(runs[1] / "auto.pt")
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert widths and all(w % rt == 0 for w in widths), (rt, widths)


def test_verify(runs):
    stdout, _ = _ok(runs, "verify")
    assert stdout.startswith("oracle: exact")


def test_graph_dot(runs):
    stdout, _ = _ok(runs, "graph")
    dot = (runs[1] / "graph.dot").read_text()
    assert dot.startswith("digraph") and stdout.strip() == "wrote graph.dot"
    gm = fxprune.trace(create_model("resnet20"), X)
    convs = [n.name for n in gm.graph.nodes
             if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d)]
    assert len(convs) == 19
    assert all(f'"{c}" [' in dot for c in convs)


def test_plot(runs):
    rc, stdout, stderr = runs[0]["plot"]
    if importlib.util.find_spec("matplotlib") is None:
        assert rc == 2 and "pip install fxprune[plot]" in stderr
        return
    assert rc == 0, stderr
    from PIL import Image

    with Image.open(runs[1] / "widths.png") as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] == 450


def test_lists(runs):
    stdout, _ = _ok(runs, "criteria")
    assert {"l1", "fpgm"} <= {ln.split()[0] for ln in stdout.splitlines()[2:]}
    stdout, _ = _ok(runs, "rules")
    assert "torch.nn.modules.conv.Conv2d" in stdout and "Tensor.__add__" in stdout


def test_bench(runs):
    rc, stdout, stderr = runs[0]["bench"]
    if importlib.util.find_spec("fxprune.bench") is None:
        assert rc == 2 and "fxprune.bench is missing" in stderr
    else:
        assert rc == 0, stderr


def test_exit_codes(runs):
    rc, stdout, stderr = runs[0]["bad_ratio"]
    assert rc == 2 and "ratio must be in [0, 1)" in stderr and "Traceback" not in stderr
    rc, stdout, stderr = runs[0]["strict"]
    assert rc == 3 and "Traceback" not in stderr
    assert "unsupported ops: torch.flip" in stderr and "rollnet.py:" in stderr


# --- in-process ---------------------------------------------------------------------------------

def test_parse_shape():
    assert cli.parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert cli.parse_shape("2x3x8x8") == (2, 3, 8, 8)
    for bad in ("", "1,a", "1,0,3"):
        with pytest.raises(fxprune.InputError):
            cli.parse_shape(bad)


def test_load_model_sources(tmp_path):
    import timm
    import torchvision

    model, shape = cli.load_model("test_resnet")
    assert isinstance(model, timm.models.ResNet) and shape is None
    assert isinstance(cli.load_model("tv:resnet18")[0], torchvision.models.ResNet)
    model, shape = cli.load_model("resnet20")  # not a timm/torchvision name: fxprune.models
    assert shape == (1, 3, 32, 32) and type(model).__name__ == "ResNetCifar"
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(fxprune.InputError, match="--trust-pickle"):  # never unpickled unasked
        cli.load_model(str(tmp_path / "whole.pt"))
    whole = cli.load_model(str(tmp_path / "whole.pt"), trust_pickle=True)[0]
    assert type(whole).__name__ == "ResNetCifar"
    _reference(tmp_path / "p.pt")
    loaded, shape = cli.load_model(str(tmp_path / "p.pt"))
    assert isinstance(loaded, torch.fx.GraphModule) and shape == (1, 3, 32, 32)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    for bad in ("resnet_50", "cifar:nope", "tv:nope", "no_such_module_xyz:build",
                str(tmp_path / "missing.pt"), str(tmp_path / "sd.pt")):
        with pytest.raises(fxprune.InputError):
            cli.load_model(bad)


def test_main_error_paths(tmp_path, monkeypatch, capsys):
    model = _reference(tmp_path / "p.pt")
    bad = fxprune.load(tmp_path / "p.pt")
    with torch.no_grad():
        next(bad.parameters()).add_(1.0)  # no longer what the oracle computes
    fxprune.save(bad, tmp_path / "bad.pt")
    assert cli.main(["-q", "verify", "cifar:resnet20", str(tmp_path / "bad.pt")]) == 1
    assert "oracle: mismatch" in capsys.readouterr().out
    assert cli.main(["verify", "cifar:resnet20", str(tmp_path / "p.pt"), "--input", "2,3,32,32"]
                    ) == 0
    assert cli.main(["inspect", "nosuch_model_name"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli.main(["graph", *CIFAR, "-o", str(tmp_path / "g.png")]) == 2
    with pytest.raises(SystemExit) as e:  # argparse: --ratio and --target-flops exclude
        cli.main(["compress", *CIFAR, "--ratio", "0.5", "--target-flops", "0.5"])
    assert e.value.code == 2
    capsys.readouterr()
    assert cli.main(["compress", *CIFAR, "--target-flops", "1.5"]) == 2  # out of range
    assert "target_flops" in capsys.readouterr().err
    assert model is not None


def test_main_other_failures_are_one_line(monkeypatch, capsys):
    def boom(*a, **k):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(fxprune.plan.compress, "compress", boom)
    assert cli.main(["compress", *CIFAR, "--ratio", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "fxprune: error: RuntimeError: kaput (run with -v for details)"]
    assert cli.main(["-v", "compress", *CIFAR, "--ratio", "0.5"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_main_inspect_text_and_markdown(capsys):
    assert cli.main(["inspect", *CIFAR, "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### ResNetCifar (input 1x3x32x32)") and "| layer1.0.conv1 " in out
    assert cli.main(["inspect", *CIFAR, "--ratio", "0.25", "--round-to", "4"]) == 0
    out = capsys.readouterr().out
    assert "ratio 0.25, criterion l1" in out and "16 → 12" in out
    assert cli.main(["graph", *CIFAR]) == 0  # DOT on stdout
    assert capsys.readouterr().out.startswith('digraph "ResNetCifar"')


def test_main_paper_flops(capsys):
    args = ["-q", "compress", "cifar:resnet56", "--input", "1,3,32,32", "--ratio", "0.4",
            "--residual", "scatter", "--paper-flops", "--no-latency"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "conv MACs (measured)" in out
    assert "conv MACs, papers' convention (keep 0.6)" in out and "-52.6%" in out
    assert cli.main(["inspect", "cifar:resnet56", "--input", "1,3,32,32", "--ratio", "0.4",
                     "--paper-flops", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert round(data["paper_flops"]["cut"], 4) == 0.5263 and data["paper_flops"]["keep"] == 0.6
    assert cli.main(["inspect", *CIFAR, "--ratio", "0.4", "--paper-flops"]) == 0
    assert "53.96% cut" in capsys.readouterr().out
    assert cli.main(["-q", "compress", *CIFAR, "--target-flops", "0.5", "--paper-flops",
                     "--no-latency"]) == 2
    assert "--paper-flops needs --ratio" in capsys.readouterr().err
    assert cli.main(["-q", "compress", *CIFAR, "--ratio", "0.5", "--allocation", "clr",
                     "--clr-lambda", "10", "--clr-cost", "macs", "--no-latency"]) == 0


def test_compress_attention_heads(tmp_path, capsys):
    pytest.importorskip("timm")
    out = tmp_path / "vit.pt"
    args = ["-q", "compress", "timm:vit_tiny_patch16_224", "--ratio", "0.5", "--attention",
            "heads", "--no-latency", "-o", str(out)]
    assert cli.main(args) == 0
    assert "approximate" in capsys.readouterr().out
    import fxprune

    small = fxprune.load(out)
    rows = small.get_parameter("blocks.0.attn.qkv.weight").shape[0]
    assert rows < 3 * 192 and rows % (3 * 64) == 0  # whole heads of 64 dims (q, k and v)
