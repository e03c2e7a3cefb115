"""Distillation: the loss is Hinton's, the teacher is a frozen private copy (no gradient, the
user's model untouched), alpha=0 is the task loss, and a student distilled from a teacher
moves towards it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxprune.errors import InputError
from fxprune.train.distill import Distiller, distill_loss


def test_loss_is_hintons() -> None:
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    task = torch.tensor(1.3)
    T = 3.0
    want = 0.25 * task + 0.75 * T * T * (F.softmax(t / T, 1) * (F.log_softmax(t / T, 1)
                                         - F.log_softmax(s / T, 1))).sum(1).mean()
    torch.testing.assert_close(distill_loss(s, t, task, 0.75, T), want)


def test_teacher_is_frozen_private_and_eval() -> None:
    teacher = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = Distiller(teacher, 0.5, 2.0)
    student = nn.Linear(4, 3)
    x = torch.randn(8, 4)
    loss = d.loss(student(x), x, F.cross_entropy(student(x), torch.zeros(8, dtype=torch.long)))
    loss.backward()
    assert student.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in d.teacher.parameters())
    assert teacher.training and all(torch.equal(v, state[k])
                                    for k, v in teacher.state_dict().items())
    assert not d.teacher.training


def test_alpha_zero_is_the_task_loss() -> None:
    d = Distiller(nn.Linear(4, 3), 0.0)
    task = torch.tensor(0.7)
    assert d.loss(torch.randn(2, 3), torch.randn(2, 4), task) is task


def test_student_moves_towards_the_teacher() -> None:
    torch.manual_seed(0)
    teacher, student = nn.Linear(6, 4), nn.Linear(6, 4)
    d = Distiller(teacher, 1.0, 1.0)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    x = torch.randn(64, 6)
    gap = []
    for _ in range(50):
        opt.zero_grad()
        loss = d.loss(student(x), x, torch.tensor(0.0))
        loss.backward()
        opt.step()
        gap.append(float(loss))
    assert gap[-1] < 0.2 * gap[0]


@pytest.mark.parametrize("kw, match", [({"alpha": 1.5}, "distill"), ({"alpha": "x"}, "distill"),
                                       ({"temperature": 0}, "temperature")])
def test_bad_arguments(kw, match) -> None:
    args = {"alpha": 0.5, "temperature": 2.0, **kw}
    with pytest.raises(InputError, match=match):
        Distiller(nn.Linear(2, 2), **args)


def _digits_like():
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_fit_with_a_teacher_and_a_soft_pruner(tmp_path) -> None:
    """fit(teacher=, distill=, temperature=) trains a SoftPruner's model, resumes (the settings
    hold the distillation), and leaves the teacher untouched."""
    import fxprune
    from fxprune.train import fit

    teacher = _tiny(1).eval()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    model = _tiny(0)
    x = torch.randn(2, 1, 8, 8)
    pruner = fxprune.SoftPruner(model, 0.5, method="sfp", example_inputs=(x,))
    hist = fit(model, _digits_like(), None, 2, lr=0.05, pruner=pruner, teacher=teacher,
               distill=0.5, temperature=2.0, progress=False, checkpoint=tmp_path / "k.ckpt",
               amp="bf16")
    assert len(hist.epochs) == 2
    assert all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())
    with pytest.raises(InputError, match="settings differ"):
        fit(_tiny(0), _digits_like(), None, 2, lr=0.05, teacher=teacher, distill=0.25,
            progress=False, checkpoint=tmp_path / "k.ckpt", resume=True, amp="bf16")
    with pytest.raises(InputError, match="teacher"):
        fit(_tiny(0), _digits_like(), None, 1, lr=0.05, distill=0.5, progress=False)


def _conv_net(width: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))


def _pruned_pair() -> tuple[nn.Module, nn.Module]:
    import fxprune

    dense = _conv_net().eval()
    for bn in (dense[1], dense[4]):  # distinct channels, so that a wrong mapping shows
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.2, 2.0)
    return dense, fxprune.compress(dense, 0.5, example_inputs=(torch.randn(2, 1, 8, 8),))


def test_feature_pairs_are_the_kept_channels() -> None:
    from fxprune.ir import meta
    from fxprune.train.distill import feature_pairs

    dense, small = _pruned_pair()
    pairs = feature_pairs(small, dense)
    manifest = meta.record_of(small)[meta.MANIFEST]
    assert set(pairs) == {"1", "4"}
    for name, keep in pairs.items():
        assert keep.tolist() == manifest[f"{name}.weight"][0] and len(keep) < 8
        got = dict(small.named_modules())[name].weight
        torch.testing.assert_close(got, dict(dense.named_modules())[name].weight[keep])


def test_feature_loss_is_the_relative_error_at_kept_channels() -> None:
    """beta * mean over the BatchNorm layers and the samples of |s - t[kept]|^2 / |t[kept]|^2:
    the student's training-mode outputs against the frozen teacher's, channel for channel."""
    dense, small = _pruned_pair()
    d = Distiller(dense, 0.0, features=2.5, student=small)
    x = torch.randn(16, 1, 8, 8)
    small.train()
    loss = d.loss(small(x), x, torch.tensor(0.0))
    seen = {}
    mods = {**{("s", n): m for n, m in small.named_modules() if n in ("1", "4")},
            **{("t", n): m for n, m in dense.named_modules() if n in ("1", "4")}}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: seen.__setitem__(k, o))
             for k, m in mods.items()]
    with torch.no_grad():
        small(x)
        dense(x)
    for h in hooks:
        h.remove()
    terms = []
    for name, keep in (("1", d._hooks.pairs["1"]), ("4", d._hooks.pairs["4"])):
        t = seen[("t", name)][:, keep]
        per_sample = ((seen[("s", name)] - t) ** 2).flatten(1).sum(1) / (t ** 2).flatten(1).sum(1)
        terms.append(per_sample.mean())
    torch.testing.assert_close(loss, 2.5 * torch.stack(terms).mean())
    loss.backward()
    assert all(p.grad is not None for n, p in small.named_parameters() if n[0] in "0134")
    assert all(p.grad is None for p in d.teacher.parameters())
    d.close()
    assert not any(m._forward_hooks for m in small.modules())


def test_feature_distillation_refuses_what_it_cannot_match() -> None:
    dense, small = _pruned_pair()
    narrow = _conv_net(width=4)  # no manifest: nothing says which 4 of the 8 channels
    with pytest.raises(InputError, match="no layer of the student matches"):
        Distiller(dense, 0.5, features=1.0, student=narrow)
    with pytest.raises(InputError, match="'1'.*no record of which were kept"):
        Distiller(dense, 0.5, features=1.0, student=narrow, layers=["1"])
    twice = __import__("fxprune").compress(small, 0.5, example_inputs=(torch.randn(2, 1, 8, 8),))
    assert Distiller(small, 0.5, features=1.0, student=twice).layers == ["1", "4"]
    with pytest.raises(InputError, match="pruned from"):  # its manifest refers to `small`
        Distiller(dense, 0.5, features=1.0, student=twice, layers=["1"])
    with pytest.raises(InputError, match="student"):
        Distiller(dense, 0.5, features=1.0)
    with pytest.raises(InputError, match="feature_distill"):
        Distiller(dense, 0.5, features=-1.0, student=small)


def test_fit_with_feature_distillation_moves_features_and_cleans_up() -> None:
    """fit(teacher=, feature_distill=): the student's features move towards the teacher's kept
    channels; no hook stays on either model and the teacher is unchanged."""
    from fxprune.train import fit

    dense, small = _pruned_pair()
    state = {k: v.clone() for k, v in dense.state_dict().items()}

    def gap() -> float:
        d = Distiller(dense, 0.0, features=1.0, student=small)
        small.train()
        x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = float(d.loss(small(x), x, torch.tensor(0.0)))
        d.close()
        return out

    before = gap()
    fit(small, _digits_like(), None, 6, lr=0.05, teacher=dense, feature_distill=5.0,
        progress=False)
    assert gap() < 0.7 * before
    assert not any(m._forward_hooks for m in [*small.modules(), *dense.modules()])
    assert all(torch.equal(v, state[k]) for k, v in dense.state_dict().items())
    with pytest.raises(InputError, match="teacher"):
        fit(small, _digits_like(), None, 1, lr=0.05, feature_distill=1.0, progress=False)
