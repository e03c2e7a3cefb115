"""SoftPruner engine: masks under optimizer hooks, checkpoints, exact finalize, arguments."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
import train_helpers as H  # noqa: E402  (tests/ is on sys.path: conftest.py)

import fxprune
from fxprune.train import SoftPruner, list_methods

METHODS = ["sfp", "fpgm", "mfp", "fppmo"]


def opts(method: str, data: list) -> dict:
    return {"data": data} if method in ("mfp", "fppmo") else {}


def outputs(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    flags = [mm.training for mm in m.modules()]
    m.eval()
    with torch.no_grad():
        out = m(x)
    for mm, t in zip(m.modules(), flags):
        mm.training = t
    return out


# --- masks hold under the optimizer hooks ---------------------------------------------------

@pytest.mark.parametrize("opt_name", ["sgd", "adam", "scaler"])
@pytest.mark.parametrize("method,hold", [("fpgm", None), ("sfp", "step"), ("fppmo", "step")])
def test_masks_hold_after_every_step(opt_name, method, hold):
    model = H.make_model("vgg")
    data = H.batches(3)
    pruner = SoftPruner(model, 0.5, method=method, example_inputs=H.X8, hold=hold,
                        **opts(method, data[:1]))
    params = list(model.parameters())
    opt = (torch.optim.Adam(params, lr=0.05, weight_decay=1e-3) if opt_name == "adam" else
           torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4))
    scaler = torch.amp.GradScaler("cpu") if opt_name == "scaler" else None
    pruner.attach(opt)
    checks = []
    for _ in range(2):
        H.train_epoch(model, opt, data, pruner,
                      after_step=lambda: checks.append(pruner.masks_hold()), scaler=scaler)
    assert checks and all(checks)
    assert pruner.stats["steps"] == 6
    if method == "fpgm" and opt_name == "adam":  # masked gradients keep Adam's moments zero
        w = model.features[0].weight
        kept = pruner.keep[_group_of(pruner, w)].indices
        pruned = [i for i in range(w.shape[0]) if i not in kept]
        assert pruned and float(opt.state[w]["exp_avg"][pruned].abs().max()) == 0.0


def _group_of(pruner: SoftPruner, w: torch.Tensor) -> int:
    for g in pruner.analysis.groups:
        for m in g.members:
            if m.role == "out" and m.tensor(pruner.model).data_ptr() == w.data_ptr():
                return g.id
    raise AssertionError("no group")


def test_keep_set_helper_and_remove_handle():
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, method="sfp", hold="step", example_inputs=H.X8)
    assert pruner.masks_hold()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    handle = pruner.attach(opt)
    H.train_epoch(model, opt, H.batches(1))
    assert pruner.masks_hold()
    handle.remove()
    H.train_epoch(model, opt, H.batches(1))
    assert not pruner.masks_hold()  # without hooks the pruned filters train again


def test_sfp_default_lets_filters_regrow_within_an_epoch():
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, example_inputs=H.X8)  # sfp, hold="epoch"
    assert pruner.hold == "epoch" and pruner.masks_hold()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.attach(opt)
    H.train_epoch(model, opt, H.batches(2))
    assert not pruner.masks_hold()  # gradients are not masked: zeroed filters train
    pruner.epoch_end()
    assert pruner.masks_hold()


# --- finalize is exact ----------------------------------------------------------------------

@pytest.mark.parametrize("bn", ["zero", "keep"])
@pytest.mark.parametrize("residual", ["coupled", "scatter"])
@pytest.mark.parametrize("method", METHODS)
def test_finalize_exact_resnet20(method, residual, bn):
    _finalize_exact("resnet20", method, residual, bn)


@pytest.mark.parametrize("bn", ["zero", "keep"])
@pytest.mark.parametrize("method", METHODS)
def test_finalize_exact_vgg(method, bn):
    _finalize_exact("vgg", method, "coupled", bn)


def _finalize_exact(name: str, method: str, residual: str, bn: str) -> None:
    model = H.make_model(name)
    data = H.batches(2)
    pruner = SoftPruner(model, 0.4, method=method, example_inputs=H.X8, residual=residual,
                        bn=bn, **opts(method, data[:1]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.attach(opt)
    H.train_epoch(model, opt, data, pruner)
    H.train_epoch(model, opt, data)  # no epoch_end: hold="epoch" weights have regrown
    small = pruner.finalize()
    assert pruner.masks_hold()
    x = torch.randn(3, 3, 8, 8)
    want = outputs(model, x)  # atol relative to the output scale, as the oracle's
    torch.testing.assert_close(outputs(small, x), want, rtol=1e-4,
                               atol=1e-4 * float(want.abs().max()))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    macs = fxprune.count(small, H.X8).macs / fxprune.count(model, H.X8).macs
    assert macs == pytest.approx(pruner.kept_macs, rel=1e-6)
    folds = small.meta["fxprune.folds"]
    if bn == "zero":
        assert folds == []  # pruned conv->BN->ReLU channels are exactly zero: nothing to fold
    else:
        assert folds  # relu(BN(0)) of the pruned channels reaches the next layers


def test_finalize_keep_folds_border_maps_and_roundtrips(tmp_path):
    model = H.make_model("resnet20")
    pruner = SoftPruner(model, 0.5, method="fpgm", example_inputs=H.X8, bn="keep")
    small = pruner.finalize()
    shapes = [s for _, _, s in small.meta["fxprune.folds"]]
    assert any(len(s) == 4 and s[2] > 1 for s in shapes)  # zero padding: a spatial map
    assert any(len(s) == 2 for s in shapes)  # the classifier: a per-feature constant
    fxprune.save(small, tmp_path / "s.pt")
    again = fxprune.load(tmp_path / "s.pt")
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(outputs(again, x), outputs(model, x), rtol=1e-4, atol=1e-5)


# --- checkpoints ----------------------------------------------------------------------------

def _run(method: str, epochs: int, model: nn.Module, opt: torch.optim.Optimizer,
         pruner: SoftPruner, data: list) -> None:
    for _ in range(epochs):
        H.train_epoch(model, opt, data, pruner)


@pytest.mark.parametrize("method", METHODS)
def test_resume_continues_exactly(method):
    data, val = H.batches(2), H.batches(1, seed=5)

    def build(seed: int):
        model = H.make_model("vgg", seed=seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        pruner = SoftPruner(model, 0.5, method=method, example_inputs=H.X8, seed=3,
                            **opts(method, val))
        return model, opt, pruner

    model_a, opt_a, pr_a = build(0)
    pr_a.attach(opt_a)
    _run(method, 4, model_a, opt_a, pr_a, data)

    model_b, opt_b, pr_b = build(0)
    pr_b.attach(opt_b)
    _run(method, 2, model_b, opt_b, pr_b, data)
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(),
                "pruner": pr_b.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    model_c, opt_c, pr_c = build(1)  # a fresh run: other weights, its own first selection
    model_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["opt"])
    pr_c.load_state_dict(ckpt["pruner"])
    pr_c.attach(opt_c)
    assert pr_c.epoch == 2 and pr_c.keep == pr_b.keep
    _run(method, 2, model_c, opt_c, pr_c, data)
    assert pr_c.keep == pr_a.keep
    for (k, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        torch.testing.assert_close(c, a, rtol=0, atol=1e-6, msg=k)
    torch.testing.assert_close(outputs(pr_c.finalize(), H.X8), outputs(pr_a.finalize(), H.X8),
                               rtol=0, atol=1e-6)


def test_state_dict_rejects_other_method_or_model():
    model = H.make_model("vgg")
    sd = SoftPruner(model, 0.5, example_inputs=H.X8).state_dict()
    with pytest.raises(fxprune.InputError, match="method"):
        SoftPruner(copy.deepcopy(model), 0.5, method="fpgm", example_inputs=H.X8) \
            .load_state_dict(sd)
    with pytest.raises(fxprune.InputError, match="group sizes"):
        SoftPruner(H.TinyVGG((8, 8, 16)), 0.5, example_inputs=H.X8).load_state_dict(sd)
    with pytest.raises(fxprune.InputError, match="not a SoftPruner"):
        SoftPruner(model, 0.5, example_inputs=H.X8).load_state_dict({"epoch": 1})


# --- allocation -----------------------------------------------------------------------------

# An option-A (zero-padded) stream under "coupled" spans layers of three resolutions, so its
# MACs depend on WHICH units a re-selection keeps, not only how many: the target holds at
# construction there, and across re-selections with projection shortcuts or "scatter".
@pytest.mark.parametrize(("name", "residual"), [("resnet20_b", "coupled"),
                                                ("resnet20", "scatter")])
def test_target_flops_respected(name, residual):
    model = H.make_model(name)
    pruner = SoftPruner(model, target_flops=0.5, example_inputs=H.X8, residual=residual)
    assert abs(pruner.kept_macs - 0.5) <= 0.01
    H.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), H.batches(1), pruner)
    assert abs(pruner.kept_macs - 0.5) <= 0.01  # re-selection keeps the allocated widths
    small = pruner.finalize()
    macs = fxprune.count(small, H.X8).macs / fxprune.count(model, H.X8).macs
    assert abs(macs - 0.5) <= 0.01


def test_ratios_ignore_round_to_and_global_allocation():
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, allocation="global", round_to=4, ignore=["features.0"],
                        ratios={"head.2": 0.25}, example_inputs=H.X8)
    small = pruner.finalize()
    assert small.get_submodule("features.0").out_channels == 8  # ignored
    assert small.get_submodule("head.2").out_features == 8  # 12 * 0.75 = 9, rounded to 4s
    for name in ("features.4", "features.8"):
        assert small.get_submodule(name).out_channels % 4 == 0


# --- arguments ------------------------------------------------------------------------------

def test_methods_registered():
    assert {"sfp", "soft", "fpgm", "mfp", "fppmo"} <= set(list_methods())
    assert fxprune.SoftPruner is SoftPruner


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "nope"}, "unknown method"),
    ({"method": "oneshot"}, "compress"),
    ({"ratio": 1.5}, "ratio must be in"),
    ({"ratio": None}, "nothing to prune"),
    ({"interval": 0}, "interval"),
    ({"bn": "drop"}, "bn must be"),
    ({"hold": "batch"}, "hold must be"),
    ({"criterion": "nope"}, "unknown criterion"),
    ({"residual": "sideways"}, "residual must be"),
    ({"allocation": "magic"}, "allocation must be"),
    ({"ratio": None, "target_flops": 2.0}, "target_flops"),
    ({"target_flops": 0.5}, "not both"),
    ({"method": "sfp", "pool": ["l1"]}, "no option"),
    ({"method": "mfp"}, "needs data"),
    ({"method": "mfp", "data": iter([])}, "re-iterable"),
    ({"method": "mfp", "data": [], "pool": ["l1"]}, "at least two"),
    ({"method": "mfp", "data": [], "switch": "both"}, "switch"),
    ({"method": "mfp", "data": [], "criterion": "l1"}, "pool"),
    ({"method": "mfp", "data": [], "attribute": "f1"}, "attribute must be"),
    ({"method": "fppmo", "data": [], "lam": 1}, "lam"),
    ({"method": "fppmo", "data": [], "eta": -1}, "eta"),
    ({"method": "fppmo", "data": [], "theta_min": 0.7}, "theta_min"),
    ({"method": "fppmo", "data": [], "init": "gauss"}, "init"),
    ({"method": "fppmo", "data": [], "eval_batches": 0}, "eval_batches"),
])
def test_bad_arguments_raise_input_error(kwargs, match):
    kwargs = {"ratio": 0.5, **kwargs}
    with pytest.raises(fxprune.InputError, match=match):
        SoftPruner(H.make_model("vgg"), example_inputs=H.X8, **kwargs)


def test_bad_model_optimizer_and_data():
    model = H.make_model("vgg")
    with pytest.raises(fxprune.InputError, match="unwrapped"):
        SoftPruner(nn.DataParallel(model), 0.5, example_inputs=H.X8)
    with pytest.raises(fxprune.InputError, match="nn.Module"):
        SoftPruner(model.state_dict(), 0.5)
    pruner = SoftPruner(model, 0.5, example_inputs=H.X8)
    with pytest.raises(fxprune.InputError, match="Optimizer"):
        pruner.attach(model.parameters())
    with pytest.raises(fxprune.InputError, match="no batches"):
        SoftPruner(model, 0.5, method="mfp", data=[], example_inputs=H.X8)
    with pytest.raises(fxprune.InputError, match="pairs"):
        SoftPruner(model, 0.5, method="mfp", data=[torch.randn(2, 3, 8, 8)],
                   example_inputs=H.X8)


def test_example_inputs_default_to_first_data_batch():
    model = H.make_model("vgg")
    pruner = SoftPruner(model, 0.5, method="fppmo", data=H.batches(1))
    assert tuple(pruner.inputs[0].shape) == (1, 3, 8, 8)


# --- DDP: masks identical on every rank -----------------------------------------------------

_DDP_SCRIPT = r'''
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, store, out):
    import fxprune
    from fxprune.models import create_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4)
    pruner = fxprune.SoftPruner(model, 0.5, example_inputs=torch.randn(1, 3, 8, 8))
    if rank == 1:  # this rank's weights differ (pruned filters too): its re-selection differs
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
    pruner.epoch_end()
    before = pruner.state_dict()["keep"]
    pruner.broadcast(0)
    torch.save({"before": before, "after": pruner.state_dict(), "hold": pruner.masks_hold(),
                "tensors": [t.detach().clone() for t in pruner.masks.tensors()]},
               f"{out}/{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
'''


def test_broadcast_makes_masks_and_masked_weights_identical(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    subprocess.run([sys.executable, "-P", str(script), str(tmp_path / "store"), str(tmp_path)],
                   check=True, timeout=240, env={**__import__("os").environ,
                                                 "OMP_NUM_THREADS": "1"})
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["before"] != r1["before"]  # the ranks disagreed before the broadcast
    assert r0["after"] == r1["after"] and r1["hold"]
    for a, b in zip(r0["tensors"], r1["tensors"]):
        assert torch.equal(a, b)
