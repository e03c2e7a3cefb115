"""Files saved by fxprune before the stage subpackages (commit 685fa08) still load and compute
what they computed then. The files and the recipe that made them: tests/fixtures/legacy/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fxprune
from fxprune.train import fit
from fxprune.train.checkpoint import load_checkpoint

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"
EXPECTED = torch.load(LEGACY / "expected.pt", weights_only=True)


@pytest.mark.parametrize("name", ["plain", "scatter", "attention", "stripes"])
def test_old_file_loads_and_computes_the_same(name: str) -> None:
    pruned = fxprune.load(LEGACY / f"{name}.pt")
    x, want = EXPECTED[name]
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), want, rtol=1e-5, atol=1e-6)


def test_old_names_resolve_to_the_moved_objects() -> None:
    from fxprune.core.rewrite import scatter_channels
    from fxprune.files.legacy import current_name
    from fxprune.files.trust import resolve

    assert current_name("fxprune.rewrite.scatter_channels") == \
        "fxprune.core.rewrite.scatter_channels"
    assert resolve("fxprune.rewrite.scatter_channels", "function", "test") is scatter_channels
    assert current_name("fxprune.stripes.forms.StripeConv2d") == \
        "fxprune.stripes.forms.StripeConv2d"


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def test_old_training_checkpoint_resumes(tmp_path: Path) -> None:
    """A finished run's checkpoint resumes to nothing: the saved weights, the saved history."""
    ckpt = load_checkpoint(LEGACY / "train.ckpt")
    assert ckpt["format"] == "fxprune.train/1"
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 1, 8, 8, generator=g)
    ys = torch.randint(0, 4, (64,), generator=g)
    loader = DataLoader(TensorDataset(xs, ys), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = _tiny()
    pruner = fxprune.SoftPruner(model, 0.5, method="sfp", example_inputs=(xs[:2],))
    copy = tmp_path / "train.ckpt"
    copy.write_bytes((LEGACY / "train.ckpt").read_bytes())
    hist = fit(model, loader, None, 2, lr=0.05, pruner=pruner, checkpoint=copy, resume=True,
               progress=False)
    assert hist.resumed_at == 2
    x, want = EXPECTED["train"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), want, rtol=1e-5, atol=1e-6)
