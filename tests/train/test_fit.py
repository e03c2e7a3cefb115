"""fxprune.train.fit on digits: training, the pruner contract, schedules, checkpoints and an
exact resume, one-shot compress + fine-tune, and bad input. The pruner is a test double of the
SoftPruner contract (tests/train_helpers.py); tests against the real engine are at the end."""

from __future__ import annotations

import pytest
import torch

import fxprune
from fxprune.errors import FxPruneError, InputError
from fxprune.train import History, data, evaluate, fit
from fxprune.train.distributed import DistInfo, shard_train_loader
from fxprune.train.trainer import recalibrate_bn

pytest.importorskip("sklearn")

import train_helpers as td  # noqa: E402  (tests/ is on sys.path: conftest.py)


@pytest.fixture(scope="module")
def splits() -> data.DataSplits:
    return data.digits(seed=0)


def _loaders(splits: data.DataSplits, batch: int = 64):
    return data.make_loaders(splits, batch)[:2]


def test_fit_trains_and_reports(splits) -> None:
    train, val = _loaders(splits)
    torch.manual_seed(0)
    model = td.tiny_net()
    seen = []
    hist = fit(model, train, val, 3, lr=0.1, progress=False, callback=seen.append)
    assert isinstance(hist, History) and [r.epoch for r in hist.epochs] == [1, 2, 3]
    assert seen == hist.epochs
    first, last = hist.epochs[0], hist.epochs[-1]
    assert last.train_loss < first.train_loss
    assert last.val_acc > 0.3  # chance is 0.1
    assert all(r.kept_macs is None and r.samples_per_s > 0 for r in hist.epochs)
    # cosine over 3 epochs, stepped per epoch
    assert [r.lr for r in hist.epochs] == pytest.approx([0.1, 0.075, 0.025])
    assert len(train) * 64 == 20 * 64 and first.line(3).startswith("epoch 1/3  loss ")
    loss, acc = evaluate(model, val)
    assert acc == pytest.approx(last.val_acc) and loss == pytest.approx(last.val_loss)


def test_step_schedule_warmup_and_constant(splits) -> None:
    from torch.utils.data import DataLoader, Subset

    train = DataLoader(Subset(splits.train, range(128)), 64, shuffle=True, drop_last=True)
    h = fit(td.tiny_net(), train, None, 5, lr=0.1, schedule="step", milestones=[2, 4],
            gamma=0.1, progress=False)
    assert [r.lr for r in h.epochs] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    h = fit(td.tiny_net(), train, None, 3, lr=0.1, schedule="constant", warmup_epochs=1,
            progress=False)
    assert [r.lr for r in h.epochs] == pytest.approx([0.01, 0.1, 0.1])
    assert all(r.val_acc is None for r in h.epochs)


def test_pruner_contract(splits) -> None:
    """attach once, masks hold after every optimizer step, epoch_end once per epoch, no
    broadcast in one process, kept MACs in the history, the hook removed at the end."""
    train, val = _loaders(splits)
    torch.manual_seed(0)
    model = td.tiny_net()
    double = td.MaskDouble(model, 0.5)
    hist = fit(model, train, val, 2, lr=0.1, pruner=double, progress=False,
               label_smoothing=0.1, bn_recalibration=3)
    assert int(model[1].num_batches_tracked) == 3  # recalibrated after the last epoch_end
    assert double.attached == 1 and double.epoch_ends == 2 and double.broadcasts == 0
    assert double.steps == 2 * len(train) and double.violations == 0
    assert [r.kept_macs for r in hist.epochs] == [0.5, 0.5]
    for c, m in zip(double.convs, double.masks):
        assert c.weight[m == 0].abs().sum() == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    assert double.steps == 2 * len(train)  # fit removed its hook


def test_recalibrate_bn() -> None:
    bn = torch.nn.BatchNorm2d(3)
    model = torch.nn.Sequential(bn).eval()
    bn.running_mean.fill_(5.0)
    batches = [(torch.randn(4, 3, 2, 2) * (i + 1) + i, None) for i in range(4)]
    assert recalibrate_bn(model, batches, 3) == 3
    xs = [b[0] for b in batches[:3]]
    means = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var,
                               torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs]).mean(0))
    assert bn.momentum == 0.1 and not bn.training and int(bn.num_batches_tracked) == 3
    assert recalibrate_bn(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), batches, 3) == 0


def test_checkpoint_and_exact_resume(splits, tmp_path) -> None:
    """Two epochs straight == one epoch, crash, resume: bit for bit (augmentation on, so the
    RNG states must come back too), pruner state included."""
    train, val = _loaders(splits)

    def run(epochs_done=None, resume=False, ckpt=tmp_path / "a.ckpt"):
        torch.manual_seed(0)
        model = td.tiny_net()
        double = td.MaskDouble(model, 0.5)

        def stop(rec):
            if epochs_done is not None and rec.epoch == epochs_done:
                raise KeyboardInterrupt

        try:
            h = fit(model, train, val, 2, lr=0.1, pruner=double, checkpoint=ckpt,
                    resume=resume, progress=False, callback=stop)
        except KeyboardInterrupt:
            h = None
        return model, double, h

    ref_model, ref_double, ref_hist = run(ckpt=tmp_path / "ref.ckpt")
    assert run(epochs_done=1)[2] is None
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and set(ckpt) >= {"model", "optimizer", "scheduler", "pruner",
                                                 "rng", "history", "settings"}
    model, double, hist = run(resume=True)
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert all(torch.equal(a, b) for a, b in zip(ref_double.masks, double.masks))
    assert hist.resumed_at == 1 and len(hist.epochs) == 2
    assert [r.train_loss for r in hist.epochs] == [r.train_loss for r in ref_hist.epochs]
    assert [r.val_acc for r in hist.epochs] == [r.val_acc for r in ref_hist.epochs]
    # a finished run resumes to nothing: same weights, same history
    model2, _, hist2 = run(resume=True)
    assert torch.equal(model2[0].weight, model[0].weight) and hist2.resumed_at == 2
    with pytest.raises(InputError, match="settings differ"):
        fit(td.tiny_net(), train, val, 3, lr=0.1, checkpoint=tmp_path / "a.ckpt",
            resume=True, progress=False)
    with pytest.raises(InputError, match="with a pruner"):
        fit(td.tiny_net(), train, val, 2, lr=0.1, checkpoint=tmp_path / "a.ckpt",
            resume=True, progress=False)


def test_oneshot_compress_then_finetune(splits) -> None:
    train, val = _loaders(splits)
    torch.manual_seed(0)
    model = td.tiny_net()
    fit(model, train, val, 2, lr=0.1, progress=False)
    small = fxprune.compress(model, 0.5, example_inputs=(splits.example_input(),))
    before = evaluate(small, val)[1]
    shapes = [p.shape for p in small.parameters()]
    hist = fit(small, train, val, 2, lr=0.05, progress=False)
    assert [p.shape for p in small.parameters()] == shapes
    assert hist.epochs[-1].val_acc >= before - 0.02 and hist.epochs[-1].val_acc > 0.3


def test_bad_input(splits) -> None:
    train, val = _loaders(splits)
    m = td.tiny_net()
    with pytest.raises(InputError, match="epochs"):
        fit(m, train, val, 0, lr=0.1)
    with pytest.raises(InputError, match="Nesterov"):
        fit(m, train, val, 1, lr=0.1, momentum=0.0)
    with pytest.raises(InputError, match="another module"):
        fit(m, train, val, 1, lr=0.1, pruner=td.MaskDouble(td.tiny_net()))
    with pytest.raises(InputError, match="bn_recalibration"):
        fit(m, train, val, 1, lr=0.1, bn_recalibration=-1)
    with pytest.raises(InputError, match="schedule"):
        fit(m, train, val, 1, lr=0.1, schedule="linear")
    with pytest.raises(InputError, match="checkpoint"):
        fit(m, train, val, 1, lr=0.1, resume=True)
    with pytest.raises(InputError, match="not divisible by 3"):
        shard_train_loader(train, DistInfo(0, 3), 0)
    big = data.make_loaders(splits, 4096)[0]
    with pytest.raises(InputError, match="no full batch"):
        fit(m, big, val, 1, lr=0.1)
    with pytest.raises(FxPruneError, match="loss became"):
        fit(m, train, None, 1, lr=1e30, progress=False)


@pytest.mark.parametrize("method", ["sfp", "fpgm"])
def test_with_softpruner(splits, tmp_path, method) -> None:
    """Integration with the real engine: train, resume exactly, finalize exactly."""
    train, val = _loaders(splits)
    x = splits.example_input()

    def run(resume=False, stop_at=None):
        torch.manual_seed(0)
        model = td.tiny_net()
        pruner = fxprune.SoftPruner(model, 0.5, method=method, example_inputs=(x,))

        def stop(rec):
            if rec.epoch == stop_at:
                raise KeyboardInterrupt

        try:
            h = fit(model, train, val, 2, lr=0.1, pruner=pruner, checkpoint=tmp_path / method,
                    resume=resume, progress=False, callback=stop)
        except KeyboardInterrupt:
            h = None
        return model, pruner, h

    ref, ref_pruner, ref_hist = run()
    assert 0 < ref_hist.epochs[-1].kept_macs < 1
    (tmp_path / method).unlink()
    run(stop_at=1)
    model, pruner, hist = run(resume=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    small = pruner.finalize().eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert evaluate(small, val)[1] == pytest.approx(hist.epochs[-1].val_acc, abs=0.01)
