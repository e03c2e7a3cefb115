"""What the commands share: the MODEL argument (a name, a factory or a file) and its example
inputs, the parser's common options, a progress bar and number formatting."""

from __future__ import annotations

__all__ = ["FILE_SUFFIXES", "CIFAR_INPUT", "parse_shape", "shape_arg", "load_model",
           "example_inputs", "model_and_inputs", "Progress", "human", "change", "general",
           "model_args", "trust_arg", "round_to", "criterion_names", "prune_args",
           "group_scores_arg"]

import argparse
import difflib
import functools
import importlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fxprune.errors import InputError

logger = logging.getLogger("fxprune.cli")

FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin")
CIFAR_INPUT = (1, 3, 32, 32)


# --- models and inputs ------------------------------------------------------------------------

_SHAPE = re.compile(r"^\d+(?:[,x]\d+)*$")


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``) into a shape tuple.

    Raises:
        InputError: the text is not a list of positive integers.
    """
    compact = text.replace(" ", "") if isinstance(text, str) else ""
    shape = tuple(int(p) for p in re.split("[,x]", compact)) if _SHAPE.match(compact) else ()
    if not shape or any(d < 1 for d in shape):
        raise InputError(f"--input must be a comma-separated shape of positive integers such "
                         f"as 1,3,224,224, got {text!r}")
    return shape


def shape_arg(text: str) -> str:
    """argparse type of --input: a usage error (exit 2) for a malformed shape."""
    try:
        parse_shape(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _load_file(path: Path, trust_pickle: bool = False
               ) -> tuple[nn.Module, tuple[int, ...] | None]:
    from fxprune.files import filecheck
    from fxprune.files.serialize import NotAnFxpruneFile, from_payload, read

    if not path.is_file():
        raise InputError(f"no such model file: {path}")
    try:
        payload = read(path)
    except NotAnFxpruneFile as e:
        if not trust_pickle:
            raise InputError(
                f"{e.reason}. Opening it would mean unpickling it, and unpickling can run any "
                "code the file holds; fxprune does that only with --trust-pickle (use it for "
                "files you trust).") from e
        return _unpickle(path), None
    model = from_payload(payload, path)
    shapes = filecheck.example_shapes(payload)
    return model, (shapes[0][0] if shapes else None)


def _unpickle(path: Path) -> nn.Module:
    logger.info("%s is not an fxprune.save file; unpickling it (--trust-pickle)", path)
    try:
        obj = torch.load(str(path), weights_only=False, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - reported as bad input
        raise InputError(f"cannot load {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, nn.Module):
        raise InputError(
            f"{path} holds a {type(obj).__name__}, not a model. Hint: save whole modules "
            "(torch.save(model, path)) or pruned models with fxprune.save(pruned, path); a "
            "state_dict alone cannot be pruned.")
    return obj


def _factory(spec: str) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # `fxprune ... mymodels:build` from the project folder
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"cannot import module '{mod_name}' for MODEL '{spec}': {e}. Hint: "
                         "set PYTHONPATH to the folder that holds it.") from e
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        raise InputError(f"module '{mod_name}' has no callable '{fn_name}' (MODEL '{spec}')")
    model = fn()
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec}() returned a {type(model).__name__}, not an nn.Module")
    return model


def _torchvision(name: str) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        close = difflib.get_close_matches(name, torchvision.models.list_models(), n=3)
        raise InputError(f"unknown torchvision model '{name}'"
                         + (f"; did you mean {', '.join(close)}?" if close else ""))
    return torchvision.models.get_model(name, weights=None)


def _cifar(name: str) -> nn.Module:
    from fxprune import models

    if name not in models.list_models():
        raise InputError(f"unknown fxprune.models model '{name}'. Available: "
                         f"{', '.join(models.list_models())}")
    return models.create_model(name)


def load_model(spec: str, trust_pickle: bool = False
               ) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Build the model a MODEL argument names; returns ``(model, default input shape)``.

    The default input shape is None when the model's own default applies (timm's input size,
    else 1x3x224x224). A file is opened with :func:`fxprune.files.serialize.read` (plain data, no
    code runs); any other file is unpickled only with ``trust_pickle=True`` (``--trust-pickle``).

    Raises:
        InputError: the name or file cannot be resolved.
    """
    path = Path(spec)
    if spec.lower().endswith(FILE_SUFFIXES) or path.is_file():
        return _load_file(path, trust_pickle)
    if spec.startswith("tv:"):
        return _torchvision(spec[3:]), None
    if spec.startswith("cifar:"):
        return _cifar(spec[6:]), CIFAR_INPUT
    if spec.startswith("timm:"):
        spec = spec[5:]
    elif ":" in spec:
        return _factory(spec), None
    import timm

    if timm.is_model(spec):
        return timm.create_model(spec, pretrained=False), None
    import torchvision

    if spec in torchvision.models.list_models():
        return _torchvision(spec), None
    from fxprune import models

    if spec in models.list_models():
        return _cifar(spec), CIFAR_INPUT
    close = difflib.get_close_matches(spec, timm.list_models() + models.list_models(), n=3)
    raise InputError(
        f"unknown model '{spec}'" + (f"; did you mean {', '.join(close)}?" if close else "")
        + ". MODEL is a timm name, tv:NAME, cifar:NAME, package.module:factory or a .pt file.")


def example_inputs(model: nn.Module, args: argparse.Namespace,
                   default: tuple[int, ...] | None) -> tuple[torch.Tensor, ...]:
    """The example inputs: ``--input`` (random, seeded by ``--seed``), else ``default``, else
    the model's own default (timm's input size, else 1x3x224x224)."""
    from fxprune.core.trace import default_example_inputs

    shape = parse_shape(args.input) if getattr(args, "input", None) else default
    if shape is None:
        return tuple(default_example_inputs(model))
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(shape, generator=gen)
    p = next((t for t in model.parameters() if t.is_floating_point()), None)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    return (x,)


def model_and_inputs(args: argparse.Namespace, spec: str
                     ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The model ``spec`` names (random weights seeded by ``--seed``) and its example inputs."""
    torch.manual_seed(args.seed)
    model, default = load_model(spec, getattr(args, "trust_pickle", False))
    return model, example_inputs(model, args, default)


# --- progress and numbers ---------------------------------------------------------------------

class Progress:
    """A tqdm bar per pipeline stage on stderr (no-op when quiet or tqdm is missing)."""

    def __init__(self, enabled: bool):
        self.bar: Any = None
        self.stage: str | None = None
        self.tqdm: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            self.tqdm = tqdm

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.tqdm is None:
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = self.tqdm(total=max(total, 1), desc=f"fxprune {stage}", file=sys.stderr,
                                 leave=False, dynamic_ncols=True)
        self.bar.total = max(total, 1)
        self.bar.n = min(done, self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.close()
            self.bar = None
        self.stage = None


def human(n: float | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:g}"


def change(before: float, after: float) -> str:
    return f"{100.0 * (after - before) / before:+.1f}%" if before else "-"


# --- parser pieces ----------------------------------------------------------------------------

@functools.cache
def general() -> argparse.ArgumentParser:
    """The options every command takes (``-v``, ``-q``, ``--seed``): a parent parser."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log progress (INFO) and show tracebacks")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars, warnings or logging")
    g.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                   help="seed for random weights and inputs (default 0)")
    return p


def model_args(p: argparse.ArgumentParser) -> None:
    """MODEL, ``--input SHAPE`` and ``--trust-pickle``."""
    p.add_argument("model", metavar="MODEL",
                   help="timm name, tv:NAME, cifar:NAME, package.module:factory or a .pt file")
    p.add_argument("--input", metavar="SHAPE", type=shape_arg,
                   help="example input shape, e.g. 1,3,224,224")
    trust_arg(p)


def trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-pickle", action="store_true",
                   help="a .pt file that is not an fxprune.save file is unpickled (this runs "
                        "any code the file holds: only for files you trust)")


def round_to(text: str) -> int | str:
    """argparse type of ``--round-to``: an int or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'auto', got {text!r}") from None


def criterion_names() -> list[str]:
    """The choices of ``--criterion``: the criterion registry's names."""
    from fxprune.criteria import list_criteria

    return [c.name for c in list_criteria()]


def prune_args(p: argparse.ArgumentParser) -> None:
    """``--criterion``, ``--round-to`` and ``--ignore``."""
    p.add_argument("--criterion", default="l1", choices=criterion_names(), metavar="CRITERION",
                   help="channel criterion: %(choices)s (see list-criteria)")
    p.add_argument("--round-to", type=round_to, default=None, metavar="N|auto",
                   help="kept widths become multiples of N; auto: what the device runs fastest "
                        "(16 on AVX-512 CPUs, else 8)")
    p.add_argument("--ignore", nargs="+", default=None, metavar="NAME",
                   help="modules (qualified names or globs) whose output channels are kept")


def _group_scores(spec: str) -> str:
    from fxprune.criteria.scoring import GroupScoring
    from fxprune.errors import InputError

    try:
        GroupScoring.parse(spec)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return spec


def group_scores_arg(p: Any) -> None:
    """``--group-scores SPEC``: which slices magnitude criteria score (``GroupScoring``)."""
    p.add_argument("--group-scores", type=_group_scores, default=None, metavar="SPEC",
                   help="score a channel from members[/normalize[/reduction]] of its group: "
                        "members producers|all, normalize mean|max|none, reduction "
                        "mean|sum|max|first (e.g. all = all/mean/mean: filters, consumers' "
                        "input columns and norm scales; default: the producers' filters)")
