"""Fuzzing: a few hundred random CNNs (``fxprune.fuzz``) must all prune exactly.

Seeds 0..N-1 (N = 300, or ``FXPRUNE_FUZZ_CASES``) run in chunks so that a failure names its
seeds. Each case: random ratio in [0.1, 0.8] and criterion among l1/l2/random (derived from the
seed), exact oracle, same output shape, untouched original, save/load round trip. A failure is
reproduced with ``fxprune.tools.fuzz.run_case(seed)`` and minimized with
``fxprune.tools.fuzz.shrink``;
every bug found gets a named, hand-minimized test in ``tests/core/test_regressions.py``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.fx as fx

from fxprune.tools import fuzz
from fxprune.tools.fuzz.shrink import _walk as walk_spec

N_CASES = int(os.environ.get("FXPRUNE_FUZZ_CASES", "300"))
CHUNK = 25

#: Seeds (of the current generator) that hit a known, not yet fixed bug -> its regression test.
KNOWN_FAILURES: dict[int, str] = {}


def _describe(r: fuzz.CaseResult) -> str:
    return (f"seed {r.seed} (ratio {r.ratio}, {r.criterion}) failed at {r.stage}: {r.error}\n"
            f"  reproduce: python -P -c \"from fxprune.fuzz import run_case; "
            f"print(run_case({r.seed}).traceback)\"")


@pytest.mark.parametrize("start", range(0, N_CASES, CHUNK),
                         ids=lambda s: f"seeds{s}-{min(s + CHUNK, N_CASES) - 1}")
def test_fuzz_chunk(start):
    results = [fuzz.run_case(s) for s in range(start, min(start + CHUNK, N_CASES))]
    new = [r for r in results if not r.ok and r.seed not in KNOWN_FAILURES]
    assert not new, "\n".join(_describe(r) for r in new)


def test_known_failures_are_still_known():
    """A fixed bug's seeds must leave KNOWN_FAILURES (its regression test flips to XPASS)."""
    for seed, test in KNOWN_FAILURES.items():
        assert not fuzz.run_case(seed).ok, f"seed {seed} passes now: drop it ({test})"


def test_random_models_are_small_traceable_and_varied():
    kinds: set[str] = set()
    for seed in range(40):
        spec = fuzz.random_spec(seed)
        assert spec == fuzz.random_spec(seed)  # deterministic
        model, x = fuzz.random_model(seed)
        assert x.shape[0] == 2 and 1 <= x.shape[1] <= 4
        assert 16 <= x.shape[2] <= 32 and 16 <= x.shape[3] <= 32
        gm = fx.symbolic_trace(model)  # plain torch.fx: no data-dependent control flow
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x))
        kinds |= {n["op"] for _, n in walk_spec(spec) if isinstance(n, dict) and "op" in n}
    assert {"res", "cat", "split", "dw", "se", "sgate"} <= kinds, kinds


def test_case_config_ranges():
    configs = [fuzz.case_config(s) for s in range(200)]
    assert all(0.1 <= r <= 0.8 for r, _ in configs)
    assert {c for _, c in configs} == set(fuzz.CRITERIA)


def test_nothing_to_prune_is_rare():
    results = [fuzz.run_case(s) for s in range(1000, 1040)]
    assert all(r.ok for r in results), [_describe(r) for r in results if not r.ok]
    assert sum(r.skipped for r in results) <= 8


def test_shrink_keeps_the_failure():
    """shrink() on a spec hitting the single-channel-producer bug (see test_regressions)."""
    spec = {"seed": 99, "input": [4, 16, 16],
            "stem": {"op": "conv", "c": 4, "k": 3, "stride": 1, "bn": False, "act": "none",
                     "bias": False},
            "body": [{"op": "split", "how": "split", "fracs": [4, 2, 4],
                      "branches": [[], [{"op": "dw", "mult": 1, "k": 3, "bn": True,
                                         "act": "relu", "bias": False}], []],
                      "merge": "cat"},
                     {"op": "bn"},
                     {"op": "se", "rd": 0.25, "pool": "adaptive", "gate": "hardsigmoid"}],
            "head": {"kind": "gap", "n": 5, "flatten": "torch"}}
    first = fuzz.run_spec(spec, 0.578, "l2")
    if first.ok:
        pytest.skip("the single-channel-producer bug is fixed")
    small = fuzz.shrink(spec, 0.578, "l2", max_steps=60)
    again = fuzz.run_spec(small, 0.578, "l2")
    assert not again.ok and again.stage == first.stage
    assert len(repr(small)) < len(repr(spec))


def test_every_compiler_module_has_a_stage() -> None:
    """The stage table is keyed by the layout, so a new module cannot go unclassified."""
    import pkgutil

    import fxprune
    from fxprune.tools.fuzz.cases import stage_of_module

    for sub in ("ir", "rules", "criteria", "core", "plan", "files"):
        pkg = __import__(f"fxprune.{sub}", fromlist=["_"])
        names = [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"fxprune.{sub}.")
                 if not m.ispkg]
        for name in names:
            assert stage_of_module(name), f"{name} has no pipeline stage in STAGE_OF_MODULE"
    assert stage_of_module("fxprune.passes.l1") == "select"
    assert stage_of_module("fxprune.tools.inspect") is None
    assert fxprune.compress  # the facade itself is no stage
