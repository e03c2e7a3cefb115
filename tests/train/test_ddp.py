"""Scale-out: fit() under a torchrun-style launch (2 CPU processes, gloo on 127.0.0.1) gives
the same weights as 1 process with the same global batch and seed.

Why 2 x (B/2) equals 1 x B here: both runs draw the same global batches (fit always uses a
DistributedSampler seeded with ``seed``: rank r takes positions r, r+2, ... of the same
permutation, and the last incomplete global batch is dropped); each rank's loss is the mean
over its B/2 samples and DDP averages the gradients over ranks, which is the mean over B; the
model has no BatchNorm (per-rank batch statistics would differ; SyncBatchNorm is CUDA-only) and
no dropout, and augmentation is off. What remains is float summation order: atol 1e-4 (on an
AVX2-only AMD EPYC the conv kernels sum a batch of B and of B/2 in other orders, and after one
epoch the weights differed by up to 4.4e-5; on the AVX-512 machines of earlier CI runs they
stayed under 1e-5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

import train_helpers as td  # noqa: E402  (tests/ is on sys.path: conftest.py)


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)




@pytest.mark.parametrize("pruner", [
    "double",
    "sfp",
])
def test_two_processes_equal_one(tmp_path, pruner) -> None:
    code = (f"import train_helpers as t; t.ddp_digits({str(tmp_path / 'two.pt')!r}, "
            f"pruner={pruner!r})")
    results = td.launch(code, 2)
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    td.ddp_digits(tmp_path / "one.pt", pruner=pruner)
    one = _load(tmp_path / "one.rank0.pt")
    r0, r1 = _load(tmp_path / "two.rank0.pt"), _load(tmp_path / "two.rank1.pt")
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"ranks differ: {k}"
        torch.testing.assert_close(v, one["state"][k], rtol=0, atol=1e-4, msg=k)
    for k, v in r0["state"].items():  # the same filters are zero everywhere
        assert torch.equal(v == 0, one["state"][k] == 0), f"masks differ: {k}"
    if pruner == "double":  # masks identical on both ranks and equal to the single process's
        for a, b, c in zip(r0["masks"], r1["masks"], one["masks"]):
            assert torch.equal(a, b) and torch.equal(a, c)
        steps1, ends1, bcast1, viol1 = one["counters"]
        for r in (r0, r1):
            steps, ends, bcast, viol = r["counters"]
            assert steps == steps1 and ends == ends1 == 1 and viol == viol1 == 0
            assert bcast == 2 and bcast1 == 0  # once before training, once after epoch_end
    h1, h2 = one["history"]["epochs"][0], r0["history"]["epochs"][0]
    assert h1["kept_macs"] == h2["kept_macs"] < 1
    assert r0["history"]["world_size"] == 2
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], abs=1e-4)
    assert h2["val_acc"] == pytest.approx(h1["val_acc"], abs=1e-9)  # full val set, sharded
    ckpt = _load(tmp_path / "two.ckpt")  # written by rank 0 only, with both ranks' RNGs
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert r0["saves"] == 1 and r1["saves"] == 0


def test_feature_distillation_two_processes_equal_one(tmp_path) -> None:
    """fit(teacher=, distill=, feature_distill=) under DDP: the teacher runs on every rank (its
    features hooked on each rank's own copy) and the ranks end equal to one process."""
    code = f"import train_helpers as t; t.ddp_feature_distill({str(tmp_path / 'two.pt')!r})"
    for r in td.launch(code, 2):
        assert r.returncode == 0, r.stderr[-4000:]
    td.ddp_feature_distill(tmp_path / "one.pt")
    one = _load(tmp_path / "one.rank0.pt")
    r0, r1 = _load(tmp_path / "two.rank0.pt"), _load(tmp_path / "two.rank1.pt")
    assert r0["hooks"] == r1["hooks"] == one["hooks"] == 0
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"ranks differ: {k}"
        torch.testing.assert_close(v, one["state"][k], rtol=0, atol=1e-4, msg=k)
