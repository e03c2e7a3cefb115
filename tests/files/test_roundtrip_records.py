"""Save/load gives back what compress returned (issue 24, item 5): tied parameters stay tied,
every module's training flag and every parameter's requires_grad come back as saved."""

from __future__ import annotations

import torch
import torch.nn as nn

import fxprune
from fxprune.files.serialize import read

X = torch.randn(2, 3, 8, 8)


class Tied(nn.Module):
    """c2 shares c1's weight; a prunable wide/narrow pair after them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2.weight = self.c1.weight
        self.wide = nn.Conv2d(8, 16, 1)
        self.bn = nn.BatchNorm2d(16)
        self.narrow = nn.Conv2d(16, 8, 1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(torch.relu(self.stem(x))))))
        h = self.narrow(torch.relu(self.bn(self.wide(h))))
        return self.fc(self.drop(h.mean((2, 3))))


def _described(m: nn.Module) -> tuple:
    """Everything the round trip must keep: tie structure, flags, requires_grad, values."""
    params = list(m.named_parameters(remove_duplicate=False))
    first: dict[int, str] = {}
    ties = {name: first.setdefault(id(p), name) for name, p in params}
    return (ties, {n: x.training for n, x in m.named_modules(remove_duplicate=False)},
            {n: p.requires_grad for n, p in params},
            {n: p.detach().clone() for n, p in params}, len(list(m.parameters())))


def test_ties_flags_and_requires_grad_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    model.eval()
    model.bn.train()  # mixed flags: one module in training mode
    model.fc.bias.requires_grad_(False)
    pruned = fxprune.compress(model, 0.5, example_inputs=X)
    assert pruned.c2.weight is pruned.c1.weight and pruned.bn.training and not pruned.training
    fxprune.save(pruned, tmp_path / "p.pt")
    assert read(tmp_path / "p.pt")["ties"] == {"c2.weight": "c1.weight"}
    loaded = fxprune.load(tmp_path / "p.pt")
    want, got = _described(pruned), _described(loaded)
    assert got[0] == want[0], "ties"
    assert got[1] == want[1], "training flags"
    assert got[2] == want[2], "requires_grad"
    assert got[3].keys() == want[3].keys() and all(
        torch.equal(got[3][k], v) for k, v in want[3].items()), "values"
    assert got[4] == want[4], "parameter count"
    for m in (pruned, loaded):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), pruned(X), rtol=0, atol=0)
    # the loaded model trains its one tied weight
    loaded.train()
    loaded(X).sum().backward()
    assert loaded.c1.weight.grad is loaded.c2.weight.grad is not None
    assert loaded.fc.bias.grad is None
