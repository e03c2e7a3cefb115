"""Forward, parameter-count and torch.fx traceability tests for ``fxprune.models``."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from fxprune.models import create_model, list_models

# Parameter counts for num_classes=10 (He et al. 2016; network slimming / FPGM VGG;
# MobileNetV2 CIFAR variant without projection shortcuts).
EXPECTED_PARAMS: dict[str, int] = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet20_b": 272_474,
    "resnet56_b": 855_770,
    "resnet110_b": 1_730_714,
    "vgg16_bn": 14_987_722,
    "vgg19_bn": 20_298_698,
    "mobilenetv2": 2_236_682,
}

OPTION_A = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
OPTION_B = ["resnet20_b", "resnet56_b", "resnet110_b"]

_CACHE: dict[str, nn.Module] = {}


def _model(name: str) -> nn.Module:
    """Build (once) and return the named model in eval mode."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = create_model(name).eval()
    return _CACHE[name]


def test_registry_matches_expected() -> None:
    assert list_models() == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_forward_and_param_count(name: str) -> None:
    model = _model(name)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == pytest.approx(EXPECTED_PARAMS[name], rel=0.10)
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_fx_traceable(name: str) -> None:
    model = _model(name)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_num_classes_kwarg() -> None:
    model = create_model("resnet20", num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


@pytest.mark.parametrize("name", ["resnet20", "resnet20_b", "vgg16_bn", "mobilenetv2"])
def test_in_chans_and_num_classes(name: str) -> None:
    """Grayscale input (in_chans=1) and 7 classes: the stem and head follow, and it prunes."""
    from fxprune.testing import prune_and_check

    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=7).eval()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    if name in ("resnet20", "resnet20_b"):  # the oracle on the small ones keeps this fast
        prune_and_check(model, x[:1], 0.5)


def _shortcut_convs(model: nn.Module) -> int:
    return sum(
        isinstance(m, nn.Conv2d)
        for name, block in model.named_modules()
        if name.endswith("shortcut")
        for m in block.modules()
    )


@pytest.mark.parametrize("name", OPTION_A)
def test_option_a_has_no_shortcut_convs(name: str) -> None:
    model = _model(name)
    assert _shortcut_convs(model) == 0
    # Parameter-free shortcuts: no 1x1 projection anywhere in the network.
    assert all(m.kernel_size == (3, 3) for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", OPTION_B)
def test_option_b_has_shortcut_convs(name: str) -> None:
    # One 1x1 projection at the entry of stage 2 and stage 3.
    assert _shortcut_convs(_model(name)) == 2


def test_option_a_shortcut_pads_after_real_channels() -> None:
    block = _model("resnet20").layer2[0]
    x = torch.randn(2, 16, 32, 32)
    y = block.shortcut(x)
    assert y.shape == (2, 32, 16, 16)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


def test_register_model_warns_on_overwrite() -> None:
    from fxprune.models import _registry

    def _fxprune_test_dummy(num_classes: int = 10) -> nn.Module:
        return nn.Linear(4, num_classes)

    try:
        _registry.register_model(_fxprune_test_dummy)
        with pytest.warns(UserWarning, match="_fxprune_test_dummy"):
            _registry.register_model(_fxprune_test_dummy)
        assert isinstance(create_model("_fxprune_test_dummy", num_classes=3), nn.Linear)
    finally:
        _registry._MODEL_REGISTRY.pop("_fxprune_test_dummy", None)


def test_unknown_model_raises() -> None:
    with pytest.raises(ValueError, match="not_a_model") as exc:
        create_model("not_a_model")
    assert "resnet56" in str(exc.value)
    assert "list_models" in str(exc.value)
