"""networkx graphs (inspect(...).to_networkx(), GraphML) and the CLI's latency commands:
compress --target-latency, inspect --latency, export --onnx, graph -o .graphml."""

from __future__ import annotations

import networkx as nx
import pytest
import torch.nn as nn

import fxprune
from fxprune.cli import app as cli
from fxprune.models import create_model

CIFAR = ["cifar:resnet20", "--input", "1,3,32,32"]


def test_inspect_to_networkx_attributes():
    model = create_model("resnet20")
    import torch

    report = fxprune.inspect(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    g = report.to_networkx()
    assert isinstance(g, nx.DiGraph) and g.graph["name"] == "ResNetCifar"
    conv = g.nodes["conv1"]
    assert conv["op"] == "call_module" and conv["kind"] == "Conv2d" and conv["group"] >= 0
    row = next(r for r in report.layers if r.name == "layer3.0.conv1")
    c = g.nodes["layer3_0_conv1"]
    assert (c["in_before"], c["out_before"]) == (row.in_before, row.out_before) == (32, 64)
    assert c["out_after"] == row.out_after == c["channels_after"] == 32  # uniform 0.5
    assert c["channels"] == 64
    assert g.nodes["x"]["frozen"] and "graph input" in g.nodes["x"]["frozen_reason"]
    assert g.has_edge("x", "conv1") and g.edges["x", "conv1"]["shape"] == "1x3x32x32"
    assert nx.is_directed_acyclic_graph(g)
    convs = [n for n, d in g.nodes(data=True) if d["kind"] == "Conv2d"]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules())


def test_graph_graphml_and_latency_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "g.graphml"
    assert cli.main(["-q", "graph", *CIFAR, "-o", str(out)]) == 0
    g = nx.read_graphml(out)
    assert g.nodes["conv1"]["kind"] == "Conv2d" and g.number_of_edges() > 20
    assert cli.main(["-q", "inspect", *CIFAR, "--ratio", "0.5", "--latency", "--batch", "2",
                     "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "ms predicted" in text and "ms measured" in text
    pt = tmp_path / "small.pt"
    assert cli.main(["-q", "compress", "cifar:resnet20_b", "--input", "2,3,32,32",
                     "--target-latency", "0.6", "--round-to", "8",
                     "--batch", "2", "--threads", "1", "--repeat", "3", "--verify",
                     "-o", str(pt)]) == 0
    text = capsys.readouterr().out
    assert "target latency 0.6 (measured" in text and "oracle: exact" in text
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "small.onnx"
    assert cli.main(["-q", "export", str(pt), "--onnx", str(onnx), "--batch", "2",
                     "--threads", "1", "--repeat", "3"]) == 0
    text = capsys.readouterr().out
    assert "matches PyTorch" in text and "ONNX Runtime" in text and onnx.is_file()
    assert cli.main(["-q", "export", str(pt), "--onnx", str(tmp_path / "x.txt")]) == 2
