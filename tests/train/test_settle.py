"""SoftPruner's gradient clipping (max_grad_norm), the settle phase, FPPMO's prior, fit(amp=)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import train_helpers as H

import fxprune
from fxprune import InputError, SoftPruner
from fxprune.train import fit
from fxprune.train.methods.fppmo import _fill


def _step_change(max_grad_norm, lr=0.1):
    """Norm of the parameter change of one SGD step (no momentum) on a huge loss."""
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, example_inputs=H.X8, max_grad_norm=max_grad_norm)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    pruner.attach(opt)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = H.batches(1)[0]
    model.train()
    opt.zero_grad()
    (F.cross_entropy(model(x), y) * 1e4).backward()
    opt.step()
    return torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in
                          zip(model.parameters(), before))).item(), pruner


def test_max_grad_norm_auto_is_five_for_hold_epoch_methods_but_fppmo():
    m = H.make_model("vgg")
    assert SoftPruner(m, 0.5, example_inputs=H.X8).max_grad_norm == 5.0  # sfp, hold epoch
    assert SoftPruner(m, 0.5, method="fpgm", example_inputs=H.X8).max_grad_norm is None
    # FPPMO: measured better without it on validation (docs/training.md)
    data = [(H.X8[0].repeat(4, 1, 1, 1), torch.zeros(4, dtype=torch.long))]
    assert SoftPruner(m, 0.5, method="fppmo", example_inputs=H.X8,
                      data=data).max_grad_norm is None
    assert SoftPruner(m, 0.5, method="fppmo", example_inputs=H.X8, data=data,
                      max_grad_norm=5.0).max_grad_norm == 5.0
    assert SoftPruner(m, 0.5, example_inputs=H.X8, hold="step").max_grad_norm is None
    assert SoftPruner(m, 0.5, example_inputs=H.X8, max_grad_norm=None).max_grad_norm is None


def test_max_grad_norm_clips_the_step():
    clipped, _ = _step_change(1.0)
    free, _ = _step_change(None)
    assert clipped <= 0.1 * 1.0 * (1 + 1e-4)  # lr * max norm
    assert free > 10 * clipped


@pytest.mark.parametrize("bad", [0, -1.0, True, "big", float("nan")])
def test_bad_max_grad_norm_and_settle(bad):
    with pytest.raises(InputError, match="max_grad_norm"):
        SoftPruner(H.make_model("vgg"), 0.5, example_inputs=H.X8, max_grad_norm=bad)
    with pytest.raises(InputError, match="settle"):
        SoftPruner(H.make_model("vgg"), 0.5, example_inputs=H.X8, settle=-1)
    with pytest.raises(InputError, match="epochs"):
        SoftPruner(H.make_model("vgg"), 0.5, example_inputs=H.X8, epochs=0)


def _epochs(pruner, model, opt, n, data, check_hold=None):
    for e in range(n):
        model.train()
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if check_hold is not None and check_hold(e):
                assert pruner.masks_hold()
        pruner.epoch_end()


def test_settle_trains_fppmo_final_selection_under_held_masks():
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, method="fppmo", example_inputs=H.X8, data=H.batches(1),
                        seed=1, epochs=3, settle=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.attach(opt)
    _epochs(pruner, model, opt, 2, H.batches(2))
    assert pruner.settled and pruner.epoch == 2
    final = pruner.normalize(pruner.method.deterministic(pruner))
    assert pruner.keep == final  # the last epoch trains under FPPMO's final selection
    updates = len(pruner.method.history)
    _epochs(pruner, model, opt, 1, H.batches(2), check_hold=lambda e: True)  # held every step
    assert len(pruner.method.history) == updates  # no sampling once settled
    keep = pruner.keep
    pruner.finalize()
    assert pruner.keep == keep


def test_settle_stops_sfp_reselection_and_zero_restores_authors_schedule():
    data = H.batches(2)
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, example_inputs=H.X8, epochs=2)  # settle=1
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.attach(opt)
    _epochs(pruner, model, opt, 1, data)
    keep = pruner.keep
    _epochs(pruner, model, opt, 1, data, check_hold=lambda e: True)
    assert pruner.keep == keep

    model = H.make_model("vgg")
    authors = SoftPruner(model, 0.5, example_inputs=H.X8, epochs=2, settle=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    authors.attach(opt)
    _epochs(authors, model, opt, 1, data)
    model.train()
    x, y = data[0]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert not authors.masks_hold()  # filters regrow in the last epoch, as in SFP's code


def test_fit_tells_the_pruner_the_run_length():
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, example_inputs=H.X8)
    assert pruner.epochs is None and not pruner.settled
    fit(model, H.batches(2), None, 2, lr=0.01, pruner=pruner, progress=False)
    assert pruner.epochs == 2 and pruner.epoch == 2 and pruner.masks_hold()


def test_fppmo_prior_fills_to_the_pruned_count():
    g = torch.Generator().manual_seed(0)
    for peak in (0.01, 1.0, 100.0):
        p = torch.softmax(torch.randn(16, generator=g, dtype=torch.float64) * peak, 0)
        for n in (1, 6, 12):
            theta = _fill(p, n, 0.01)
            assert abs(float(theta.sum()) - n) < 1e-6
            assert float(theta.min()) >= 0.01 - 1e-12 and float(theta.max()) <= 0.99 + 1e-12
            # monotone in p: a higher prior probability never gets a lower theta
            ordered = theta[torch.argsort(p)]
            assert bool((ordered[1:] >= ordered[:-1] - 1e-12).all())


def test_fppmo_norm_prior_concentrates_on_low_scores():
    model = H.make_model("vgg")
    scores = fxprune.score(fxprune.analyze(fxprune.trace(copy.deepcopy(model), H.X8)), "l2")
    pruner = SoftPruner(model, 0.5, method="fppmo", example_inputs=H.X8, data=H.batches(1),
                        eta=1e-9)  # the first update leaves the prior as it is
    for gid, theta in pruner.method.theta.items():
        n = pruner.analysis.groups[gid].size - pruner.counts[gid]
        low = set(torch.argsort(scores[gid])[:n].tolist())
        high_theta = set(torch.argsort(-theta)[:n].tolist())
        assert len(low & high_theta) >= n - 1  # the prior matches the norm criterion


def test_fit_amp_bf16_trains_and_rejects_unknown_precision():
    model = H.make_model("vgg")
    hist = fit(model, H.batches(2), None, 1, lr=0.01, amp="bf16", progress=False)
    assert hist.epochs[0].train_loss > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(InputError, match="amp"):
        fit(model, H.batches(2), None, 1, lr=0.01, amp="fp8", progress=False)
