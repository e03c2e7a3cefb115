"""fxprune.reconstruct: the layers whose inputs were cut are refitted by least squares to the
original's outputs. Exact where the removed channels are linear combinations of kept ones; never
worse on the samples; the original model untouched; clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import fxprune
from fxprune.core.reconstruct import RECONSTRUCTED
from fxprune.errors import InputError


def _loader(shape: tuple[int, ...], n: int = 64, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=16)


def _last_channel_lowest(group, ctx) -> torch.Tensor:
    """A criterion that removes the highest-numbered channels first."""
    return -torch.arange(group.size, dtype=torch.float32)


def _dependent_conv() -> nn.Module:
    """conv_a's filter 3 is filter 0 + filter 1 and nothing lies between conv_a and conv_b, so
    conv_b's input channel 3 is a sum of two kept channels: refitting conv_b is exact."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(4, 5, 3, stride=2))
    with torch.no_grad():
        net[0].weight[3] = net[0].weight[0] + net[0].weight[1]
    return net.eval()


def _dependent_mlp() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight[3] = net[0].weight[0] + net[0].weight[1]
        net[0].bias[3] = net[0].bias[0] + net[0].bias[1]
    return net.eval()


@pytest.mark.parametrize("make, shape", [(_dependent_conv, (3, 8, 8)), (_dependent_mlp, (6,))])
def test_exact_when_removed_channels_are_combinations_of_kept(make, shape) -> None:
    net = make()
    x = torch.randn(8, *shape)
    pruned = fxprune.compress(net, 0.25, criterion=_last_channel_lowest, example_inputs=(x[:2],))
    with torch.no_grad():
        assert (pruned(x) - net(x)).abs().max() > 1e-2  # the cut alone loses channel 3
        report = fxprune.reconstruct(pruned, net, _loader(shape), batches=4, ridge=0.0)
        torch.testing.assert_close(pruned(x), net(x), rtol=1e-4, atol=1e-4)
    assert report["1"]["changed"] and report["1"]["after"] < 1e-5 < report["1"]["before"]
    assert pruned.meta[RECONSTRUCTED] == report


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 1))
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise: left alone
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(self.dw(h + self.body(h)))
        return self.head(h.mean((2, 3)))


def _warm(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, then eval mode."""
    net.train()
    with torch.no_grad():
        for xb, _ in _loader((3, 8, 8), seed=1):
            net(xb)
    return net.eval()


def test_never_worse_on_the_samples_and_the_original_untouched() -> None:
    torch.manual_seed(0)
    net = _warm(_Block())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.cat([b[0] for b in _loader((3, 8, 8), seed=2)])
    pruned = fxprune.compress(net, 0.5, example_inputs=(x[:2],))
    with torch.no_grad():
        err_cut = float((pruned(x) - net(x)).norm())
    pruned.train()  # its flags come back as they were
    report = fxprune.reconstruct(pruned, net, _loader((3, 8, 8)), batches=3)
    assert pruned.training
    assert "dw" not in report and {"body.0", "body.3", "head"} <= set(report)
    assert all(r["after"] <= r["before"] for r in report.values())
    assert any(r["changed"] for r in report.values())
    pruned.eval()
    with torch.no_grad():
        assert float((pruned(x) - net(x)).norm()) < err_cut
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net.training
    assert not any(m._forward_hooks for m in net.modules())
    assert not any(m._forward_hooks for m in pruned.modules())


@pytest.mark.parametrize("keep_class", [False, True])
def test_compress_reconstructs_before_recalibrating(keep_class) -> None:
    net = _warm(_Block())
    x = torch.randn(2, 3, 8, 8)
    pruned = fxprune.compress(net, 0.5, example_inputs=(x,), data=_loader((3, 8, 8)),
                              reconstruct=2, recalibrate=2, keep_class=keep_class)
    record = pruned.fxprune_meta if keep_class else pruned.meta
    assert set(record[RECONSTRUCTED]) >= {"body.0", "head"}
    assert record["fxprune.recalibrated"] == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(pruned=nn.Linear(2, 2)), "manifest"),
    (dict(pruned=None), "nn.Module"),
    (dict(batches=0), "batches"),
    (dict(positions=True), "positions"),
    (dict(ridge=-1.0), "ridge"),
    (dict(data=None), "iterable"),
    (dict(data=[]), "no batches"),
])
def test_bad_input(kwargs, match) -> None:
    net = _dependent_mlp()
    args = dict(pruned=fxprune.compress(net, 0.25, example_inputs=(torch.randn(2, 6),)),
                original=net, data=_loader((6,)))
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        fxprune.reconstruct(**args)


def test_compress_needs_data_to_reconstruct() -> None:
    with pytest.raises(InputError, match="reconstruct=4 needs data="):
        fxprune.compress(_dependent_mlp(), 0.25, example_inputs=(torch.randn(2, 6),),
                         reconstruct=4)


def test_train_cli_reconstructs_a_oneshot_cut(monkeypatch, capsys) -> None:
    """``fxprune train --method oneshot --reconstruct N`` refits the cut on N training batches;
    with a training method it is a usage error."""
    pytest.importorskip("sklearn")
    from fxprune.cli import app as cli
    from fxprune.core import reconstruct as module

    seen: dict = {}
    real = module.reconstruct

    def spy(pruned, original, data, batches=8, **kw):
        seen.update(batches=batches, data=data)
        return real(pruned, original, data, batches=batches, **kw)

    monkeypatch.setattr(module, "reconstruct", spy)
    base = ["train", "cifar:resnet20", "--data", "digits", "--epochs", "1", "--batch", "64",
            "--repeat", "1", "-q", "--no-latency", "--ratio", "0.4", "--reconstruct", "2"]
    assert cli.main([*base, "--method", "oneshot"]) == 0
    assert seen["batches"] == 2
    assert cli.main([*base, "--method", "sfp"]) == 2
    assert "--reconstruct" in capsys.readouterr().err


def test_too_few_samples_leave_the_layer_alone() -> None:
    """Fewer sampled rows than weights per output: the fit would interpolate the samples (and
    be worse elsewhere), so the layer keeps the rewrite's weights and the report says why."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    pruned = fxprune.compress(net, 0.25, example_inputs=(torch.randn(2, 8),))
    weight = pruned.get_submodule("2").weight.clone()
    report = fxprune.reconstruct(pruned, net, [torch.randn(4, 8) for _ in range(3)], batches=3)
    assert not report["2"]["changed"] and "more batches" in report["2"]["skipped"]
    assert torch.equal(pruned.get_submodule("2").weight, weight)


def test_a_fit_worse_on_the_held_out_batch_is_not_kept() -> None:
    """The last batch judges the fit: calibration batches unlike it (here: a different input
    distribution) make a fit that does not generalise, and the layer is left alone."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    pruned = fxprune.compress(net, 0.5, example_inputs=(torch.randn(2, 4),))
    weight = pruned.get_submodule("2").weight.clone()
    fit = [torch.randn(64, 4) * 0.01 for _ in range(2)]  # nearly constant features
    report = fxprune.reconstruct(pruned, net, [*fit, torch.randn(64, 4) * 10], batches=3,
                                 ridge=0.0)
    assert not report["2"]["changed"] and report["2"]["after"] == report["2"]["before"]
    assert torch.equal(pruned.get_submodule("2").weight, weight)
    # the same layer refitted on batches like the held-out one is kept
    same = [torch.randn(64, 4) * 10 for _ in range(3)]
    assert fxprune.reconstruct(pruned, net, same, batches=3)["2"]["changed"]


class _Guarded(nn.Module):
    """A forward that catches every Exception (as some model code does)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)
        self.caught = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.b(torch.relu(self.a(x)))
        except Exception:  # noqa: BLE001
            self.caught += 1
            return torch.zeros(x.shape[0], 3)


def test_a_model_catching_exceptions_still_stops_at_the_layer() -> None:
    torch.manual_seed(0)
    net = _Guarded().eval()
    pruned = fxprune.compress(net, 0.25, example_inputs=(torch.randn(2, 6),), keep_class=True)
    report = fxprune.reconstruct(pruned, net, _loader((6,), n=256), batches=4)
    assert report["b"]["changed"] and report["b"]["after"] < report["b"]["before"]
    assert pruned.caught == 0 and net.caught == 0  # the stop went through their except
