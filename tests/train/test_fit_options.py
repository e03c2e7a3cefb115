"""fit's grouped options (Optim, Schedule, Checkpointing): the old keywords and the option
objects train the same weights and write the same checkpoint settings."""

from __future__ import annotations

import pytest
import torch
import train_helpers as td  # tests/ is on sys.path (conftest.py)

import fxprune
from fxprune.errors import InputError
from fxprune.train import Checkpointing, Optim, Schedule, fit
from fxprune.train.checkpoint import load_checkpoint

DATA = [(torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(i)),
         torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(100 + i)))
        for i in range(4)]


def _run(tmp_path, name, **kw):
    torch.manual_seed(0)
    model = td.tiny_net()
    hist = fit(model, DATA, DATA[:1], 3, progress=False, **kw)
    return model, hist, load_checkpoint(tmp_path / name)


def test_old_keywords_and_option_objects_train_the_same(tmp_path):
    old_model, old, old_ckpt = _run(
        tmp_path, "old.ckpt", lr=0.05, momentum=0.8, nesterov=False, weight_decay=1e-4,
        label_smoothing=0.1, schedule="step", milestones=[1, 2], gamma=0.5, warmup_epochs=1,
        checkpoint=tmp_path / "old.ckpt", resume=False)
    new_model, new, new_ckpt = _run(
        tmp_path, "new.ckpt",
        optim=Optim(lr=0.05, momentum=0.8, nesterov=False, weight_decay=1e-4,
                    label_smoothing=0.1),
        schedule=Schedule("step", milestones=[1, 2], gamma=0.5, warmup_epochs=1),
        checkpoint=Checkpointing(tmp_path / "new.ckpt"))
    a, b = old_model.state_dict(), new_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [(r.train_loss, r.lr) for r in old.epochs] == [(r.train_loss, r.lr) for r in new.epochs]
    assert old_ckpt["settings"] == new_ckpt["settings"]
    assert old_ckpt["settings"]["schedule"] == "step" and old_ckpt["settings"]["lr"] == 0.05
    # mixed: lr as a keyword beside an Optim that leaves it out, gamma beside a Schedule
    mixed_model, _, _ = _run(
        tmp_path, "mixed.ckpt", lr=0.05, optim=Optim(momentum=0.8, nesterov=False,
                                                     weight_decay=1e-4, label_smoothing=0.1),
        schedule=Schedule("step", milestones=[1, 2], warmup_epochs=1), gamma=0.5,
        checkpoint=str(tmp_path / "mixed.ckpt"))
    c = mixed_model.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_resume_through_checkpointing(tmp_path):
    ckpt = Checkpointing(tmp_path / "r.ckpt", resume=True)
    torch.manual_seed(0)
    fit(td.tiny_net(), DATA, None, 2, lr=0.05, checkpoint=ckpt, progress=False)
    again = fit(td.tiny_net(), DATA, None, 2, lr=0.05, checkpoint=ckpt, progress=False)
    assert again.resumed_at == 2 and len(again.epochs) == 2


def test_fit_option_errors():
    model = td.tiny_net()
    with pytest.raises(TypeError, match="learning rate"):
        fit(model, DATA, None, 1, progress=False)
    with pytest.raises(InputError, match="lr is given twice"):
        fit(model, DATA, None, 1, lr=0.1, optim=Optim(lr=0.2), progress=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'mommentum'"):
        fit(model, DATA, None, 1, lr=0.1, mommentum=0.9, progress=False)
    with pytest.raises(InputError, match="optim= must be an Optim"):
        fit(model, DATA, None, 1, optim={"lr": 0.1}, progress=False)
    with pytest.raises(InputError, match="schedule must be"):
        fit(model, DATA, None, 1, lr=0.1, schedule=Schedule("linear"), progress=False)
    assert fxprune.Optim is Optim and fxprune.Schedule is Schedule
    assert fxprune.Checkpointing is Checkpointing


def test_bf16_on_a_cpu_without_native_bf16_warns_once_per_fit(monkeypatch):
    """bf16 autocast is emulated on AVX2-only CPUs (measured 10x slower than float32): fit says
    so, with the fix; on a CPU with AVX512-BF16/AMX, or in float32, it says nothing."""
    import warnings

    from fxprune.train import fit_options

    monkeypatch.setattr(fit_options, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="amp=None") as seen:
        fit(td.tiny_net(), DATA[:1], None, 1, lr=0.05, amp="bf16", progress=False)
    assert len([w for w in seen if "emulated" in str(w.message)]) == 1
    monkeypatch.setattr(fit_options, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(td.tiny_net(), DATA[:1], None, 1, lr=0.05, amp="bf16", progress=False)
        fit(td.tiny_net(), DATA[:1], None, 1, lr=0.05, progress=False)
