"""Running cases: prune a built spec and check it with the oracle; the stage a failure comes
from."""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fxprune.tools.fuzz.blocks import CRITERIA, Spec
from fxprune.tools.fuzz.build import build
from fxprune.tools.fuzz.specs import random_spec

# --- running cases ------------------------------------------------------------------------

@dataclass
class CaseResult:
    """The outcome of one fuzz case. ``stage`` names where it failed (None when ok)."""

    seed: int
    ratio: float
    criterion: str
    ok: bool
    stage: str | None = None
    error: str = ""
    seconds: float = 0.0
    params: tuple[int, int] = (0, 0)
    #: ok, but nothing was prunable (every channel frozen, e.g. all reach an output)
    skipped: bool = False
    traceback: str = field(default="", repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def case_config(seed: int) -> tuple[float, str]:
    """The (ratio in [0.1, 0.8], criterion) a seed prunes with."""
    rng = random.Random(f"fxprune-fuzz-{seed}")
    return round(rng.uniform(0.1, 0.8), 3), rng.choice(CRITERIA)


# The pipeline stage of each module of the compiler, by dotted-name prefix (longest wins).
# tests/tools/test_fuzz.py checks that every module under these subpackages has a stage.
STAGE_OF_MODULE = {
    "fxprune.ir": "analyze", "fxprune.rules": "analyze", "fxprune.core.analyze": "analyze",
    "fxprune.core.groups": "analyze", "fxprune.core.size_reads": "analyze",
    "fxprune.core.attrs": "analyze", "fxprune.core.values": "analyze",
    "fxprune.core.recalibrate": "rewrite", "fxprune.core.reconstruct": "rewrite",
    "fxprune.core.trace": "trace", "fxprune.core.decompose": "trace",
    "fxprune.core.concrete": "trace", "fxprune.core.boundary": "trace",
    "fxprune.core.tracer": "trace",
    "fxprune.core.concrete_values": "trace", "fxprune.core.concrete_meta": "trace",
    "fxprune.criteria": "select", "fxprune.passes": "select", "fxprune.core.select": "select",
    "fxprune.core.clr": "select", "fxprune.plan": "select",
    "fxprune.rules.rewritectx": "rewrite", "fxprune.core.rewrite": "rewrite",
    "fxprune.core.verify": "oracle", "fxprune.core.shapes": "oracle",
    "fxprune.files": "save/load",
}


def stage_of_module(module: str) -> str | None:
    """The pipeline stage that ``module`` (a dotted name) belongs to, or None."""
    best = max((k for k in STAGE_OF_MODULE if module == k or module.startswith(k + ".")),
               key=len, default=None)
    return STAGE_OF_MODULE[best] if best else None


def stage_of(exc: BaseException) -> str:
    """The pipeline stage an exception from :func:`fxprune.compress` comes from."""
    from fxprune.errors import RewriteError, TraceFailure, UnsupportedOpError, VerificationError

    by_type = [(TraceFailure, "trace"), (UnsupportedOpError, "analyze"),
               (RewriteError, "rewrite"), (VerificationError, "oracle")]
    for t, name in by_type:
        if isinstance(exc, t):
            return name
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    for module in reversed(frames):
        stage = stage_of_module(module)
        if stage:
            return stage
    return "prune"


def _first_line(exc: BaseException) -> str:
    from fxprune.errors import short_error

    text = short_error(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _check_pruned(model: nn.Module, pruned: nn.Module, x: torch.Tensor,
                  set_stage: Callable[[str], None]) -> None:
    from fxprune.core.verify import verify
    from fxprune.files.serialize import load, save

    set_stage("run")
    with torch.no_grad():
        ref, out = model(x), pruned(x)
    set_stage("shape")
    ref_t = ref if isinstance(ref, torch.Tensor) else ref[0]
    out_t = out if isinstance(out, torch.Tensor) else out[0]
    assert ref_t.shape == out_t.shape, f"output shape changed {ref_t.shape} -> {out_t.shape}"
    assert _n_params(pruned) <= _n_params(model), "the pruned model has more parameters"
    set_stage("oracle")
    report = verify(model, pruned, (x,))
    assert report.status == "exact", f"oracle: {report} (expected exact)"
    set_stage("save/load")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pruned.pt"
        save(pruned, path)
        again = load(path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), out, rtol=0, atol=0)


def check_spec(spec: Spec, ratio: float, criterion: str, **compress_kwargs: Any
               ) -> tuple[int, int]:
    """Prune a spec's model and assert every invariant (``prune_and_check`` semantics: exact
    oracle, same output shape, untouched original, no more parameters, save/load identical).

    Returns (params before, params after). Raises on any violation; the exception's
    ``fuzz_stage`` attribute names the failing stage.
    """
    from fxprune.plan.compress import compress

    stage = ["create"]

    def set_stage(name: str) -> None:
        stage[0] = name

    try:
        model, x = build(spec)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        set_stage("prune")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # verify=False: _check_pruned runs the oracle itself, on a fresh trace
            pruned = compress(model, ratio, example_inputs=(x,), criterion=criterion,
                              seed=int(spec.get("seed", 0)),
                              **{"verify": False, **compress_kwargs})
        set_stage("untouched")
        after = model.state_dict()
        assert before.keys() == after.keys(), "compress() changed the model's state_dict keys"
        for k, v in before.items():
            assert torch.equal(v, after[k]), f"compress() modified the user's model: {k}"
        _check_pruned(model, pruned, x, set_stage)
        return _n_params(model), _n_params(pruned)
    except BaseException as e:
        if stage[0] == "prune":
            stage[0] = stage_of(e)
        if not hasattr(e, "fuzz_stage"):
            with contextlib.suppress(Exception):  # built-in exceptions without __dict__
                e.fuzz_stage = stage[0]  # type: ignore[attr-defined]
        raise


def _nothing_to_prune(e: BaseException) -> bool:
    from fxprune.errors import InputError

    return isinstance(e, InputError) and str(e).startswith("nothing to prune")


def run_spec(spec: Spec, ratio: float, criterion: str, **compress_kwargs: Any) -> CaseResult:
    """Run one spec and return a :class:`CaseResult` (never raises for a failing case)."""
    seed = int(spec.get("seed", 0))
    t0 = time.perf_counter()
    try:
        params = check_spec(spec, ratio, criterion, **compress_kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - every failure is a result
        if _nothing_to_prune(e):
            return CaseResult(seed, ratio, criterion, True, error=_first_line(e),
                              seconds=time.perf_counter() - t0, skipped=True)
        return CaseResult(seed, ratio, criterion, False, stage=getattr(e, "fuzz_stage", "prune"),
                          error=_first_line(e), seconds=time.perf_counter() - t0,
                          traceback=traceback.format_exc())
    return CaseResult(seed, ratio, criterion, True, seconds=time.perf_counter() - t0,
                      params=params)


def run_case(seed: int, ratio: float | None = None, criterion: str | None = None,
             **compress_kwargs: Any) -> CaseResult:
    """Generate the model of ``seed``, prune it (ratio in [0.1, 0.8] and criterion among
    l1/l2/random derived from the seed unless given) and check it: exact oracle, same output
    shape, untouched original, save/load. Never raises for a failing case."""
    r, crit = case_config(seed)
    return run_spec(random_spec(seed), r if ratio is None else ratio, criterion or crit,
                    **compress_kwargs)
