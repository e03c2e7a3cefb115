"""fxprune.inspect (groups, layers, renders) and fxprune.graph_dot (DOT text, SVG rendering)."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.tools.graph_dot import render_svg, to_dot
from fxprune.tools.inspect import InspectReport, normalized_per_layer

X = torch.randn(1, 3, 16, 16)


class TinyRes(nn.Module):
    """stem → (c1 → c2) + stem → head: stem and c2 share one residual channel group."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        s = F.relu(self.bn(self.stem(x)))
        return self.head(s + self.c2(F.relu(self.c1(s))))


class Rolled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.flip(self.b(self.a(x)), dims=[1]))


def _residual(report: InspectReport):
    return next(g for g in report.groups if "stem" in g.members and "c2" in g.members)


def test_inspect_groups_of_residual_model():
    report = fxprune.inspect(TinyRes(), X)
    res = _residual(report)
    assert {"stem", "bn", "c2", "c1", "head"} >= set(res.members) >= {"stem", "c2", "head"}
    assert {"stem", "c2"} <= set(res.producers)
    assert (res.channels, res.units, res.divisor, res.kept) == (8, 8, 1, None)
    inner = next(g for g in report.groups if g.producers == ("c1",))
    assert set(inner.members) == {"c1", "c2"} and inner.frozen_units == 0
    frozen = [g for g in report.groups if g.prunable == 0]
    assert frozen and all(g.frozen_reason for g in frozen)  # graph input and output
    assert report.n_frozen_groups == len(frozen) and report.unsupported == {}
    assert report.macs_after is None and not report.pruned
    layers = {r.name: r for r in report.layers}
    assert list(layers) == ["stem", "bn", "c1", "c2", "head"]
    assert layers["c2"].group == layers["stem"].group == res.id
    assert (layers["c1"].in_before, layers["c1"].out_before) == (8, 8)
    assert layers["c1"].macs_before == 8 * 8 * 9 * 16 * 16
    assert layers["bn"].params_before == 16 and layers["c1"].params_before == 8 * 8 * 9 + 8


def test_inspect_with_ratio_and_renders():
    model = TinyRes()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = fxprune.inspect(model, X, ratio=0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert _residual(report).kept == 4 and report.criterion == "l1"
    layers = {r.name: r for r in report.layers}
    assert (layers["c1"].in_after, layers["c1"].out_after) == (4, 4)
    assert (layers["head"].in_after, layers["head"].out_after) == (4, 4)
    assert layers["c1"].macs_after == layers["c1"].macs_before // 4
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    pruned = fxprune.compress(model, 0.5, example_inputs=X)
    assert report.macs_after == fxprune.count(pruned, X).macs

    data = json.loads(json.dumps(report.to_json()))
    assert data["summary"]["groups"] == report.n_groups
    assert data["summary"]["macs_after"] == report.macs_after
    assert [r["name"] for r in data["layers"]] == list(layers)
    text = report.to_text()
    assert str(report) == text
    assert "Channel groups" in text and "stem" in text and "8 → 4" in text
    md = report.to_markdown()
    assert "### Channel groups" in md and "|--" in md and "| stem " in md


def test_inspect_reports_unsupported_ops_without_raising():
    report = fxprune.inspect(Rolled(), X, ratio=0.5)
    assert list(report.unsupported) == ["torch.flip"]
    assert report.summary()["unsupported_ops"] == ["torch.flip"]
    assert "torch.flip" in report.to_text()
    assert any(g.frozen_reason and "torch.flip" in g.frozen_reason for g in report.groups)


def test_inspect_bad_ratio():
    with pytest.raises(fxprune.InputError):
        fxprune.inspect(TinyRes(), X, ratio=1.0)


def test_normalized_per_layer_merges_macs_and_params():
    model = TinyRes()
    per = normalized_per_layer(model, fxprune.count(model, X))
    assert per["c1"]["macs"] > 0 and per["c1"]["params"] == 8 * 8 * 9 + 8
    assert per[""]["macs"] == fxprune.count(model, X).macs


# --- graph_dot --------------------------------------------------------------------------------

def _attrs(dot: str, name: str) -> str:
    return next(ln for ln in dot.splitlines() if ln.strip().startswith(f'"{name}" ['))


def test_to_dot_colours_groups_and_marks_frozen():
    gm = fxprune.trace(TinyRes(), X)
    fxprune.analyze(gm)
    dot = to_dot(gm)
    assert dot.startswith('digraph "TinyRes" {') and dot.rstrip().endswith("}")
    for n in ("x", "stem", "c1", "c2", "head", "add", "output"):
        assert f'"{n}" [' in dot
    assert '"stem" -> "bn";' in dot and '"c2" -> "add";' in dot

    def fill(n: str) -> str:
        return _attrs(dot, n).split('fillcolor="')[1].split('"')[0]

    assert fill("stem") == fill("c2") == fill("add") != fill("c1")
    assert "dashed" in _attrs(dot, "x") and 'color="red"' in _attrs(dot, "x")
    assert "graph input" in _attrs(dot, "x")  # the frozen reason, in the tooltip
    assert "dashed" not in _attrs(dot, "c1")
    assert "cluster_legend" in dot and "legend_frozen" in dot
    a = fxprune.analyze(fxprune.trace(TinyRes(), X))
    assert "digraph" in to_dot(a)  # an Analysis works too


def test_to_dot_needs_analysis_and_render_svg(tmp_path, monkeypatch):
    gm = fxprune.trace(TinyRes(), X)
    with pytest.raises(fxprune.InputError, match="analyze"):
        to_dot(gm)
    fxprune.analyze(gm)
    dot = to_dot(gm)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(fxprune.InputError, match=r"\.dot"):
        render_svg(dot, tmp_path / "g.svg")
    monkeypatch.undo()
    fake = tmp_path / "bin" / "dot"  # a stand-in Graphviz that copies stdin to -o
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport sys\n"
                    "open(sys.argv[sys.argv.index('-o') + 1], 'w').write(sys.stdin.read())\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    render_svg(dot, tmp_path / "g.svg")
    assert (tmp_path / "g.svg").read_text() == dot


def test_inspect_fully_frozen_model_keeps_everything():
    class Frozen(nn.Module):  # every channel reaches the output or torch.roll
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return torch.flip(self.a(x), dims=[1])

    report = fxprune.inspect(Frozen(), X, ratio=0.5)
    assert report.n_fully_frozen_groups == report.n_groups
    assert all(g.kept == g.units for g in report.groups)
    assert report.macs_after == report.macs_before
