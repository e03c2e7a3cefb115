"""Clear errors where there were tracebacks (issue 9, item 5): hooks and parametrizations,
wrong-rank inputs, wrong numbers of example inputs, bad criteria results, non-bool switches,
empty example inputs. Every error is an InputError naming its cause; every model that prunes
goes through the oracle harness.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrizations, spectral_norm, weight_norm

import fxprune
from fxprune.testing import prune_and_check

X = torch.randn(2, 3, 8, 8)


def net() -> nn.Sequential:
    """conv0 -> bn -> relu -> conv3 -> relu -> conv5 -> relu -> conv7: two prunable groups."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 12, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(12, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


def _width(gm: nn.Module, name: str) -> int:
    return gm.get_submodule(name).out_channels


def _reasons(model: nn.Module) -> str:
    analysis = fxprune.analyze(fxprune.trace(model, X))
    return " | ".join(g.frozen_reason or "" for g in analysis.groups)


# --- weight_norm: pruned exactly ------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("style", ["parametrization", "hook"])
def test_weight_norm_is_pruned_exactly(style):
    model = net()
    if style == "parametrization":
        parametrizations.weight_norm(model[3])
    else:
        weight_norm(model[3])
    # torch refuses to serialize parametrized modules (pickle or otherwise)
    pruned = prune_and_check(model, X, roundtrip=style == "hook")
    conv = pruned.get_submodule("3")
    assert conv.weight.shape[:2] == (6, 8) and conv.in_channels == 8
    if style == "parametrization":
        g = conv.parametrizations.weight.original0
        assert g.shape[0] == 6 and isinstance(g, nn.Parameter)
    else:
        assert conv.weight_g.shape[0] == 6 and conv.weight_v.shape[:2] == (6, 8)
    pruned.train()
    pruned(X).sum().backward()  # still trains with weight normalization
    assert all(p.grad is not None for p in pruned.parameters())


# --- other parametrizations and hooks: the module keeps its channels, with a reason ---------

def _spectral_new(m: nn.Sequential) -> None:
    parametrizations.spectral_norm(m[3])


def _spectral_old(m: nn.Sequential) -> None:
    spectral_norm(m[3])


def _forward_hook(m: nn.Sequential) -> None:
    scale = torch.rand(1, 12, 1, 1) + 0.5
    m[3].register_forward_hook(lambda mod, args, out: out * scale)


def _pre_hook(m: nn.Sequential) -> None:
    scale = torch.rand(1, 16, 1, 1) + 0.5
    m[3].register_forward_pre_hook(lambda mod, args: (args[0] * scale,))


@pytest.mark.parametrize("setup, names", [
    (_spectral_new, ["parametrization (_SpectralNorm) on 'weight'", "remove_parametrizations"]),
    (_spectral_old, ["hooks or pre-hooks (SpectralNorm)", "remove"]),
    (_forward_hook, ["hooks or pre-hooks", "_forward_hook", "handle.remove()"]),
    (_pre_hook, ["hooks or pre-hooks", "_pre_hook", "handle.remove()"]),
], ids=["spectral_norm", "old_spectral_norm", "forward_hook", "forward_pre_hook"])
def test_opaque_module_keeps_its_channels_with_a_named_reason(setup, names):
    model = net()
    setup(model)
    with torch.no_grad():
        model(X)  # spectral norm's power iteration settles on the same vectors as below
    reasons = _reasons(model)
    assert "module '3'" in reasons
    for name in names:
        assert name in reasons, reasons
    # fxprune files hold data, never code: user hooks are not saved (and torch refuses to
    # serialize parametrized modules), so there is no save/load round trip to check here
    pruned = prune_and_check(model, X, roundtrip=setup is _spectral_old)
    assert _width(pruned, "0") == 16 and _width(pruned, "3") == 12  # kept on both sides
    assert _width(pruned, "5") < 8  # the rest is still pruned


def test_hooks_on_the_model_itself_are_rejected():
    model = net()
    model.register_forward_hook(lambda mod, args, out: out * 2)
    with pytest.raises(fxprune.InputError, match=r"hooks .* on itself.*handle\.remove"):
        fxprune.compress(model, 0.5, example_inputs=X)


# --- example inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("x, match", [
    (torch.randn(2, 3, 8), r"Conv2d\(3, 16\) expects a batched 4-D input \[N, 3, H, W\].*"
                           r"got shape \(2, 3, 8\): 2 channels.*unbatched"),
    (torch.randn(2, 3, 8, 8, 8), r"Conv2d\(3, 16\) expects .* got a 5-D input"),
    (torch.randn(2, 5, 8, 8), r"Conv2d\(3, 16\) expects .* got shape \(2, 5, 8, 8\): 5 channels"),
], ids=["3d", "5d", "channels"])
def test_conv_given_a_wrong_input_says_what_it_expects(x, match):
    with pytest.raises(fxprune.InputError, match=f"(?s)node '_0'.*{match}.*Hint: check that "
                                                 "example_inputs"):
        fxprune.compress(net(), 0.5, example_inputs=x)


def test_linear_given_a_wrong_input_says_what_it_expects():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(fxprune.InputError, match=r"Linear\(8, 16\) expects inputs whose last "
                                                 r"axis has 8 features, got shape \(2, 5\)"):
        fxprune.compress(model, 0.5, example_inputs=torch.randn(2, 5))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = net()

    def forward(self, a, b, scale=1.0):
        return self.body(a) * scale + b


@pytest.mark.parametrize("model, inputs, match", [
    (net(), (X, X), r"2 example input\(s\) given, but Sequential.forward\(input\) takes 1"),
    (TwoInputs(), (X,), r"1 example input\(s\) given, but TwoInputs.forward\(a, b, scale\) "
                        r"takes 2 to 3"),
    (TwoInputs(), (X, X, 1.0, X), r"4 example input\(s\) given"),
], ids=["too_many", "too_few", "too_many_with_default"])
def test_wrong_number_of_example_inputs(model, inputs, match):
    with pytest.raises(fxprune.InputError, match=f"{match}.*Hint: example_inputs is the tuple"):
        fxprune.compress(model.eval(), 0.5, example_inputs=inputs)


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (1, 3, 0, 8)])
def test_empty_example_input(shape):
    with pytest.raises(fxprune.InputError, match=rf"shape \({shape[0]}, 3, {shape[2]}, 8\), "
                                                 "which holds no values.*at least 1"):
        fxprune.compress(net(), 0.5, example_inputs=torch.randn(shape))


def test_example_inputs_of_the_right_count_still_prune():
    model = TwoInputs().eval()
    prune_and_check(model, (X, torch.randn(2, 4, 8, 8)))


# --- switches --------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("strict", "yes"), ("strict", 1), ("verify", 1.0),
                                         ("verify", "no"), ("verify", None)])
def test_non_bool_switches_are_rejected(flag, value):
    with pytest.raises(fxprune.InputError, match=f"{flag} must be True or False, got "
                                                 f"{value!r}"):
        fxprune.compress(net(), 0.5, example_inputs=X, **{flag: value})


def test_analyze_rejects_non_bool_strict():
    with pytest.raises(fxprune.InputError, match="strict must be True or False"):
        fxprune.analyze(fxprune.trace(net(), X), strict="no")


# --- criteria --------------------------------------------------------------------------------

def _scores(value):
    def crit(group, ctx):
        return value(group)
    return crit


@pytest.mark.parametrize("result, match", [
    (lambda g: [1.0] * g.size, r"returned a list of length \d+; expected a 1-D tensor"),
    (lambda g: None, r"returned None; expected"),
    (lambda g: torch.ones(g.size).numpy(), r"returned a numpy.ndarray"),
    (lambda g: torch.full((g.size,), float("nan")), r"non-finite score\(s\) \(NaN or inf\)"),
    (lambda g: torch.ones(g.size).index_fill(0, torch.tensor([2]), float("inf")),
     r"1 non-finite score\(s\) .* at units \[2\]"),
    (lambda g: torch.ones(g.size + 1), r"returned a tensor of shape \(\d+,\); expected"),
    (lambda g: torch.ones(g.size, 1), r"returned a tensor of shape \(\d+, 1\); expected"),
    (lambda g: torch.ones(g.size, dtype=torch.bool), r"dtype torch.bool"),
    (lambda g: torch.ones(g.size, dtype=torch.complex64), r"dtype torch.complex64"),
], ids=["list", "none", "numpy", "nan", "inf", "too_long", "2d", "bool", "complex"])
def test_bad_criterion_results_name_the_criterion(result, match):
    crit = _scores(result)
    crit.__name__ = "my_scores"
    with pytest.raises(fxprune.InputError, match=f"criterion 'my_scores' .*{match}"):
        fxprune.compress(net(), 0.5, example_inputs=X, criterion=crit)


def test_integer_and_grad_requiring_scores_are_accepted():
    prune_and_check(net(), X, criterion=lambda g, ctx: torch.arange(g.size))
    prune_and_check(net(), X, criterion=lambda g, ctx: torch.rand(g.size, requires_grad=True))
