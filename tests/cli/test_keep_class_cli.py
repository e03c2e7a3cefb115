"""``fxprune compress --keep-class``: the model's own class, checked, not saved with -o."""

from __future__ import annotations

from fxprune.cli import app as cli

CIFAR = ["cifar:resnet20", "--input", "1,3,32,32"]


def test_compress_keep_class(capsys, tmp_path):
    assert cli.main(["-q", "compress", *CIFAR, "--ratio", "0.5", "--keep-class",
                     "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "oracle: exact" in out and "not saved" in out
    assert cli.main(["-q", "compress", *CIFAR, "--ratio", "0.5", "--keep-class",
                     "--no-latency", "-o", str(tmp_path / "p.pt")]) == 2
    assert "--keep-class returns a model of its own class" in capsys.readouterr().err
