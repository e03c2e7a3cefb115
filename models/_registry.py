"""Name-based registry of model factories.

Factories are registered under their function name with :func:`register_model`
and instantiated with :func:`create_model`.
"""

from __future__ import annotations

__all__ = ["register_model", "list_models", "create_model"]

import warnings
from collections.abc import Callable
from typing import TypeVar

from torch import nn

_F = TypeVar("_F", bound=Callable[..., nn.Module])

_MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: _F) -> _F:
    """Register a model factory under its function name.

    Args:
        fn: A callable returning an ``nn.Module``; its ``__name__`` is the key.

    Returns:
        The factory, unchanged, so this can be used as a decorator.

    Warns:
        UserWarning: If a factory with the same name was already registered
            (the new one replaces it).
    """
    name = fn.__name__
    if name in _MODEL_REGISTRY:
        warnings.warn(
            f"Model '{name}' is already registered; overwriting the previous factory.",
            UserWarning,
            stacklevel=2,
        )
    _MODEL_REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Return the names of all registered models.

    Returns:
        The registered model names, sorted alphabetically.
    """
    return sorted(_MODEL_REGISTRY)


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Instantiate a registered model by name.

    Args:
        name: The registered factory name, e.g. ``"resnet56"``.
        **kwargs: Forwarded to the factory (e.g. ``num_classes=100``).

    Returns:
        A freshly constructed model.

    Raises:
        ValueError: If ``name`` is not a registered model.
    """
    try:
        factory = _MODEL_REGISTRY[name]
    except KeyError:
        available = ", ".join(list_models()) or "<none>"
        raise ValueError(
            f"Unknown model '{name}'. Available models: {available}. "
            "Hint: call fxprune.models.list_models()."
        ) from None
    return factory(**kwargs)
