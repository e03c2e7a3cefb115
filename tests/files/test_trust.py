"""Trust (issue 9): verdicts, verification by default, the user's model untouched (buffers,
flags, ties) and source locations that do not depend on where the code lives.

Every case is checked with the oracle (``fxprune.verify`` / ``compress(verify=True)``)."""

from __future__ import annotations

import copy
import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxprune
import fxprune.models
import fxprune.models.resnet_cifar
import fxprune.plan.compress
from fxprune.cli import app as cli
from fxprune.core.verify import OK_KINDS, VERDICTS, VerifyReport
from fxprune.errors import is_library_file
from fxprune.testing import n_params

X = torch.randn(2, 3, 8, 8)


class ConvNet(nn.Module):
    def __init__(self, norm: str = "bn", out: int = 4):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.n = nn.BatchNorm2d(8) if norm == "bn" else nn.GroupNorm(2, 8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, out, 1)

    def forward(self, x):
        return self.c(self.b(self.n(self.a(x)).relu()).relu()).mean((2, 3))


class SpatialOut(ConvNet):
    """Same parameters as ConvNet, but returns the feature map: another output shape."""

    def forward(self, x):
        return self.c(self.b(self.n(self.a(x)).relu()).relu())


def _pruned(model: nn.Module, ratio: float = 0.5, **kw) -> fx.GraphModule:
    return fxprune.compress(model, ratio, example_inputs=X, **kw)


# --- item 2: a mismatch is never "ok" ------------------------------------------------------------

def test_every_verdict_kind_has_an_explicit_ok():
    assert set(VERDICTS) == {"exact", "approximate", "mismatch", "structural_mismatch",
                             "shape_mismatch", "incompatible"}
    assert {"exact", "approximate"} == OK_KINDS
    for kind, ok in VERDICTS.items():
        assert VerifyReport("whatever", 0.0, 0.0, kind).ok is ok
    assert not VerifyReport("exact", 0.0, 0.0).ok  # a report that names no kind is not ok
    with pytest.raises(ValueError, match="unknown verdict kind"):
        VerifyReport("exact", 0.0, 0.0, "fine")


def _perturb(pruned: nn.Module) -> nn.Module:
    with torch.no_grad():
        pruned.b.weight.add_(0.5)  # no longer what the oracle computes
    return pruned


def _add_dim(pruned: fx.GraphModule) -> fx.GraphModule:
    out = next(n for n in pruned.graph.nodes if n.op == "output")
    with pruned.graph.inserting_before(out):
        new = pruned.graph.call_method("unsqueeze", (out.args[0], 0))
    out.args = (new,)
    pruned.recompile()
    return pruned


def _verdict(kind: str):
    """(original, pruned) whose verdict is ``kind``, each made for real."""
    if kind == "exact":
        m = ConvNet()
        return m, _pruned(m)
    if kind == "approximate":
        m = ConvNet("gn")
        return m, _pruned(m)
    if kind == "mismatch":
        m = ConvNet()
        return m, _perturb(_pruned(m))
    if kind == "structural_mismatch":
        m = ConvNet("gn")
        return m, _perturb(_pruned(m))
    if kind == "shape_mismatch":
        m = ConvNet()
        other = SpatialOut()
        other.load_state_dict(m.state_dict())
        return other, _pruned(m)
    m = ConvNet()
    return ConvNet(out=5), _pruned(m)  # incompatible: another original


@pytest.mark.parametrize("kind", sorted(VERDICTS))
def test_verify_gives_each_verdict_and_its_ok(kind):
    original, pruned = _verdict(kind)
    report = fxprune.verify(original, pruned, X)
    assert report.kind == kind, report
    assert report.ok is VERDICTS[kind]
    if not report.ok:
        assert report.status.startswith("mismatch"), report


def test_incompatible_original_with_out_of_range_manifest():
    m = ConvNet()
    pruned = _pruned(m)
    pruned.meta["fxprune.manifest"]["b.weight"][0] = [0, 1, 2, 99]
    report = fxprune.verify(m, pruned, X)
    assert report.kind == "incompatible" and not report.ok
    assert "do not fit its 8 channels" in report.status


@pytest.mark.parametrize("kind", ["mismatch", "structural_mismatch", "shape_mismatch"])
def test_compress_raises_on_every_bad_verdict(kind, monkeypatch):
    real = fxprune.plan.compress.prune_graph
    broken = _add_dim if kind == "shape_mismatch" else _perturb

    def prune_graph(*a, **kw):
        pruned, analysis = real(*a, **kw)
        return broken(pruned), analysis

    monkeypatch.setattr(fxprune.plan.compress, "prune_graph", prune_graph)
    model = ConvNet("gn" if kind == "structural_mismatch" else "bn")
    with pytest.raises(fxprune.VerificationError, match="does not pass the oracle"):
        _pruned(model)  # verify=True is the default
    assert _pruned(model, verify=False) is not None  # the opt-out returns the broken model


def test_compress_verifies_by_default():
    model = ConvNet()
    report = _pruned(model).meta["fxprune.verify"]
    assert report.kind == "exact" and report.ok
    assert "fxprune.verify" not in _pruned(model, verify=False).meta
    assert _pruned(ConvNet("gn")).meta["fxprune.verify"].kind == "approximate"


def test_cli_exits_nonzero_on_bad_verdicts(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    fxprune.save(fxprune.compress(fxprune.models.create_model("resnet20"), 0.5,
                                  example_inputs=torch.randn(1, 3, 32, 32)), tmp_path / "p.pt")
    p = str(tmp_path / "p.pt")
    assert cli.main(["-q", "verify", "cifar:resnet20", p]) == 0
    # a pruned file checked against a different original: another architecture, other weights
    assert cli.main(["-q", "verify", "cifar:resnet32", p]) == 1
    assert "not made from this original" in capsys.readouterr().out
    assert cli.main(["-q", "verify", "cifar:resnet20", p, "--seed", "1"]) == 1
    assert "oracle: mismatch" in capsys.readouterr().out

    real = fxprune.plan.compress.prune_graph

    def prune_graph(*a, **kw):
        pruned, analysis = real(*a, **kw)
        with torch.no_grad():
            next(pruned.parameters()).add_(1.0)
        return pruned, analysis

    monkeypatch.setattr(fxprune.plan.compress, "prune_graph", prune_graph)
    args = ["-q", "compress", "cifar:resnet20", "--input", "1,3,32,32", "--ratio", "0.5",
            "--no-latency"]
    assert cli.main([*args, "--verify"]) == 1
    assert cli.main(args) == 1  # --verify is the default
    assert "does not pass the oracle" in capsys.readouterr().err
    assert cli.main([*args, "--no-verify"]) == 0


# --- item 4: the user's model is untouched -------------------------------------------------------

class Counting(nn.Module):
    """Forward updates buffers three ways: in place (traced), an EMA, and a reassignment inside
    an untraceable submodule (an opaque leaf)."""

    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("last", torch.zeros(()))

        def forward(self, x):
            if x.sum() > -1e9:  # data-dependent: traced as one opaque node
                self.last = x.detach().mean()
            return x

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)
        self.last = Counting.Last()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema", torch.zeros(8))

    def forward(self, x):
        self.calls.add_(1)
        y = self.bn(self.a(x)).relu()
        self.ema.mul_(0.9).add_(0.1 * y.mean((0, 2, 3)))
        return self.last(self.c(self.b(y).relu())).mean((2, 3))


def _state(model: nn.Module) -> dict:
    return {k: (v, v.detach().clone(), v.requires_grad) for k, v in
            model.state_dict(keep_vars=True).items()}


def _assert_same_state(model: nn.Module, before: dict) -> None:
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, (obj, value, req) in before.items():
        assert after[k] is obj, f"{k} was replaced"
        assert torch.equal(after[k], value), f"{k} changed"
        assert after[k].requires_grad == req, f"requires_grad of {k} changed"


@pytest.mark.parametrize("training", [False, True])
def test_forward_that_updates_buffers_leaves_the_model_bit_identical(training):
    model = Counting().train(training)
    model.a.bias.requires_grad_(False)
    with torch.no_grad():
        model.bn.running_mean.uniform_()
    before = _state(model)
    flags = [m.training for m in model.modules()]
    with pytest.warns(UserWarning, match="Last"):
        pruned = _pruned(model)
    _assert_same_state(model, before)
    assert [m.training for m in model.modules()] == flags
    assert int(model.bn.num_batches_tracked) == 0
    # torch.fx runs `self.calls.add_(1)` and `self.ema.mul_(0.9)` once while tracing (they
    # are not in the graph): the model is restored after that too. The result starts from the
    # original's buffers (the analysis, the rewrite's check and the oracle ran the EMA update)
    assert not pruned.ema.any() and float(pruned.last.last) == 0.0
    assert pruned.meta["fxprune.verify"].kind == "exact"
    assert fxprune.verify(model, pruned, X).kind == "exact"
    _assert_same_state(model, before)
    ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not ptrs & {t.data_ptr() for t in pruned.state_dict().values()}
    assert not pruned.a.bias.requires_grad and pruned.a.weight.requires_grad


def test_forward_that_writes_a_parameter_in_place_is_named():
    class Scaling(ConvNet):
        def forward(self, x):
            with torch.no_grad():
                self.b.weight.mul_(1.0)  # in place: cannot be undone without a copy
            return super().forward(x)

    with pytest.raises(fxprune.InputError, match=r"(?s)parameter\(s\) b\.weight.*deepcopy"):
        _pruned(Scaling())


def _flags(m: nn.Module) -> dict[str, bool]:
    return {name: mod.training for name, mod in m.named_modules() if name}


def test_per_module_training_flags_survive():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)),
                          nn.Conv2d(8, 4, 1))
    model.eval()
    model[1].train()
    model[3].train()  # a container and its children
    model[3][0].eval()
    flags = _flags(model)
    before = _state(model)
    same = fxprune.compress(model, 0.0, example_inputs=X)
    assert same.meta["fxprune.verify"].kind == "exact"
    assert _flags(model) == flags and not model.training
    _assert_same_state(model, before)
    got = _flags(same)
    assert {k: got[k] for k in flags} == flags and not same.training
    with torch.no_grad():  # in their own modes (BatchNorm 1 and 3.1 use batch statistics)
        torch.testing.assert_close(copy.deepcopy(same)(X), copy.deepcopy(model)(X),
                                   rtol=0, atol=0)
    pruned = fxprune.compress(model, 0.5, example_inputs=X)
    assert pruned.meta["fxprune.verify"].ok
    got = _flags(pruned)
    assert {k: got[k] for k in flags} == flags
    _assert_same_state(model, before)


class Tied(nn.Module):
    """Two branches whose 3x3 convs share ONE Parameter (and a shared bias)."""

    def __init__(self):
        super().__init__()
        self.stem1 = nn.Conv2d(3, 8, 1)
        self.stem2 = nn.Conv2d(3, 8, 1)
        self.a = nn.Conv2d(8, 12, 3, padding=1)
        self.b = nn.Conv2d(8, 12, 3, padding=1)
        self.b.weight = self.a.weight
        self.b.bias = self.a.bias
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(self.stem1(x).relu()), self.b(self.stem2(x).relu())], 1)
        return self.head(y.relu()).mean((2, 3))


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_tied_parameters_stay_tied(ratio):
    model = Tied()
    before = _state(model)
    pruned = fxprune.compress(model, ratio, example_inputs=X)
    assert pruned.meta["fxprune.verify"].kind == "exact"
    assert fxprune.verify(model, pruned, X).kind == "exact"
    assert pruned.a.weight is pruned.b.weight and pruned.a.bias is pruned.b.bias
    assert isinstance(pruned.a.weight, nn.Parameter)
    assert pruned.a.weight is not model.a.weight
    _assert_same_state(model, before)
    assert model.a.weight is model.b.weight
    if ratio == 0.0:
        assert n_params(pruned) == n_params(model)
    else:
        # the tie couples both uses: the input channels of a and b (from stem1 and stem2) and
        # their filters are cut alike
        assert pruned.a.weight.shape == (6, 4, 3, 3)
        assert pruned.stem1.out_channels == pruned.stem2.out_channels == 4
        assert n_params(pruned) < n_params(model)


def test_tie_with_a_module_that_cannot_slice_it_is_kept():
    class Opaque(nn.Module):  # untraceable, no channel rule: uses the shared weight as it is
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, x):
            if x.sum() > -1e9:
                return nn.functional.conv2d(x, self.w, padding=1)
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.d = nn.Conv2d(8, 8, 1)
            self.o = Opaque(self.a.weight)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            s = self.stem(x).relu()
            y = torch.cat([self.d(self.a(s).relu()), self.o(s)], 1)
            return self.head(y).mean((2, 3))

    model = Net()
    with pytest.warns(UserWarning, match="Opaque"):
        pruned = fxprune.compress(model, 0.5, example_inputs=X)
    assert pruned.meta["fxprune.verify"].kind == "exact"
    assert pruned.a.weight is pruned.o.w and pruned.a.weight.shape == (8, 8, 3, 3)
    assert pruned.d.out_channels == 4  # the rest of the model is still pruned


# --- item 6: locations do not depend on where the code lives -------------------------------------

def test_library_files_are_recognized_by_real_path():
    import fxprune.models.resnet_cifar as rc
    import fxprune.passes.l1 as l1

    assert is_library_file(torch.nn.functional.__file__)
    assert is_library_file(fxprune.plan.compress.__file__) and is_library_file(l1.__file__)
    assert is_library_file("<eval_with_key>.3")
    assert not is_library_file(rc.__file__)  # fxprune.models is model code: the user's
    assert not is_library_file("/tmp/x/fxprune/torch/model.py")
    assert not is_library_file(__file__)


MODEL = textwrap.dedent("""
    import torch
    import torch.nn as nn


    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:  # data-dependent control flow: not traceable
                return y
            return -y


    class Rolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.flip(self.a(x), dims=[1]))
""")


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_locations_point_at_user_code_in_a_folder_named_fxprune_torch(tmp_path):
    folder = tmp_path / "fxprune" / "torch"
    folder.mkdir(parents=True)
    (folder / "user_model.py").write_text(MODEL)
    src = Path(fxprune.models.resnet_cifar.__file__)
    text = src.read_text().replace("from ._registry import register_model",
                                   "def register_model(f):\n    return f")
    (folder / "resnet_copy.py").write_text(text)
    user = _import(folder / "user_model.py", "fxprune_trust_user_model")
    copied = _import(folder / "resnet_copy.py", "fxprune_trust_resnet_copy")
    here = str(folder)

    with pytest.raises(fxprune.TraceFailure) as e:
        fxprune.compress(user.Branchy(), 0.5, example_inputs=X)
    assert f"{here}/user_model.py:" in str(e.value) and "(forward)" in str(e.value)
    with pytest.raises(fxprune.UnsupportedOpError) as e:
        fxprune.compress(user.Rolled(), 0.5, example_inputs=X, strict=True)
    assert f"{here}/user_model.py:" in str(e.value)
    with pytest.raises(fxprune.InputError) as e:  # wrong input: names the copied file's line
        fxprune.compress(copied.resnet20(), 0.5, example_inputs=torch.randn(1, 4, 32, 32))
    assert f"{here}/resnet_copy.py:" in str(e.value)
    pruned = fxprune.compress(copied.resnet20(), 0.5, example_inputs=torch.randn(1, 3, 32, 32))
    assert pruned.meta["fxprune.verify"].kind == "exact"
