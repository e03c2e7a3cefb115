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
