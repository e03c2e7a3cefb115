"""Inputs the model mutates, and the last unclear errors (issue 24, items 2 and 3).

Every run of the user's model gets its own copy of the example inputs; every bad argument is
an InputError naming the argument, file or module and what to do (exit code 2 and one line on
the command line). Models that prune go through the oracle.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune import cli
from fxprune.testing import checked_compress, prune_and_check

X = torch.randn(2, 3, 8, 8)


def net(cin: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(cin, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


class MulInPlace(nn.Module):
    """forward writes into its input first (x.mul_(2))."""

    def __init__(self) -> None:
        super().__init__()
        self.body = net()

    def forward(self, x):
        x.mul_(2)
        return self.body(x)


# --- item 2: inputs are copied ------------------------------------------------------------

def test_forward_that_mutates_its_input():
    model, x = MulInPlace().eval(), X.clone()
    pruned = fxprune.compress(model, 0.5, example_inputs=x)
    assert torch.equal(x, X), "the user's example tensor changed"
    assert pruned.meta["fxprune.verify"].status == "exact"
    assert fxprune.verify(model, pruned, x).status == "exact"
    assert torch.equal(x, X)
    fxprune.count(pruned, x)
    assert torch.equal(x, X)
    checked_compress(MulInPlace().eval(), x)  # also checks that every input is unchanged


# --- item 3: clear errors -------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_example_inputs(bad):
    x = X.clone()
    x[0, 1, 2, 3] = bad
    with pytest.raises(fxprune.InputError, match=r"example input 0 .* 1 NaN or infinite"):
        fxprune.compress(net(), 0.5, example_inputs=x)
    pruned = fxprune.compress(net(), 0.5, example_inputs=X)
    with pytest.raises(fxprune.InputError, match="NaN or infinite.*Hint: pass finite"):
        fxprune.verify(net(), pruned, x)


def test_script_module_says_pass_the_eager_module():
    scripted = torch.jit.script(net())
    for call in (lambda: fxprune.compress(scripted, 0.5, example_inputs=X),
                 lambda: fxprune.trace(scripted, X)):
        with pytest.raises(fxprune.InputError, match="TorchScript.*Hint: pass the eager module"):
            call()
    pruned = fxprune.compress(net(), 0.5, example_inputs=X)
    with pytest.raises(fxprune.InputError, match="original is a TorchScript module"):
        fxprune.verify(scripted, pruned, X)


class Unbatched(nn.Module):
    """Conv2d(1, 1) then a prunable pair, called on a 3-D [C, H, W] input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3)
        self.b = nn.Conv2d(1, 8, 3)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.a(x))))


@pytest.mark.parametrize("model,x", [
    (Unbatched, torch.randn(1, 10, 10)),
    (lambda: nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU(), nn.Conv1d(8, 4, 3)), torch.randn(2, 9)),
])
def test_unbatched_convs_are_pruned_exactly(model, x):
    pruned = prune_and_check(model().eval(), (x,))
    assert pruned(x).dim() == x.dim()


def test_count_none():
    with pytest.raises(fxprune.InputError, match=r"count\(model\): model must be a torch.nn."
                                                 r"Module, got None. Hint"):
        fxprune.count(None)


@pytest.mark.parametrize("seed", ["x", 1.5, True, None])
def test_seed_must_be_an_int(seed):
    with pytest.raises(fxprune.InputError, match=r"seed must be an int, got .*Hint"):
        fxprune.compress(net(), 0.5, example_inputs=X, seed=seed, criterion="random")


def test_taylor_data_that_does_not_fit():
    with pytest.raises(fxprune.InputError, match=r"criterion 'taylor': data= batch 0 "
                                                 r"\(\(2, 5, 8, 8\)\) does not fit.*Hint"):
        fxprune.compress(net(), 0.5, example_inputs=X, criterion="taylor",
                         data=[torch.randn(2, 5, 8, 8)])


def test_save_to_a_directory_or_a_missing_folder(tmp_path, capsys):
    pruned = fxprune.compress(net(), 0.5, example_inputs=X)
    with pytest.raises(fxprune.InputError, match="is a directory; give a file name"):
        fxprune.save(pruned, tmp_path)
    with pytest.raises(fxprune.InputError, match="does not exist; create it first"):
        fxprune.save(pruned, tmp_path / "nope" / "p.pt")
    assert not (tmp_path / "nope").exists()
    for out, why in ((tmp_path, "is a directory"), (tmp_path / "nope" / "p.pt", "does not exist")):
        code = cli.main(["compress", "resnet20", "--input", "1,3,8,8", "--ratio", "0.5",
                         "-o", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and why in err, err
