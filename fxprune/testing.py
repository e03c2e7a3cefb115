"""Test helpers: the one harness every rule and model test uses (also for your own rules).

:func:`prune_and_check` prunes a model, then checks the invariants that define a correct
compression: the zero-channel oracle holds (and its check is not vacuous), the output shape is
unchanged, parameters went down (when something was prunable), the user's model is untouched,
and a save/load round trip gives identical outputs. :func:`checked_compress` checks the same
invariants without touching process-wide state (no warnings filters, no training flags set on
the user's model), so threads may run it at once (``tests/ir/test_threads.py``).
"""

from __future__ import annotations

__all__ = ["prune_and_check", "checked_compress", "read_only_checks", "n_params"]

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxprune.core.verify import verify
from fxprune.costs.count import count
from fxprune.files.serialize import load, save
from fxprune.ir.inputs import copied, positional_inputs
from fxprune.ir.state import untouched
from fxprune.plan.compress import compress


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _outputs(m: nn.Module, inputs: tuple) -> Any:
    with untouched(m, eval_mode=True), torch.no_grad():
        return m(*copied(inputs))


def prune_and_check(
    model: nn.Module,
    example_inputs: Any,
    ratio: float = 0.5,
    *,
    expect: str = "exact",
    smaller: bool = True,
    roundtrip: bool = True,
    rtol: float = 1e-4,
    vacuous_ok: bool = False,
    **kwargs: Any,
) -> fx.GraphModule:
    """Prune ``model`` and assert every invariant; return the pruned module.

    Args:
        expect: ``"exact"`` or ``"approximate"`` (the oracle's status prefix).
        smaller: require fewer parameters than the original.
        roundtrip: check ``fxprune.save``/``fxprune.load`` gives identical outputs.
        vacuous_ok: accept an oracle check that proves little (``report.vacuous``: constant
            or all-zero outputs); by default that fails, since such a test cannot fail.
        kwargs: passed to :func:`fxprune.compress` (criterion, ignore, round_to...); the
            rewrite checks every node's shape (``check="nodes"``) unless ``check`` is given.
    """
    example_inputs = positional_inputs(model, example_inputs)
    kwargs.setdefault("check", "nodes")
    kwargs.setdefault("verify", False)  # verified below, independently (a fresh trace)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = compress(model, ratio, example_inputs=example_inputs, **kwargs)
    after = model.state_dict()
    assert [m.training for m in model.modules()] == flags, "compress() changed training flags"
    assert before.keys() == after.keys(), "compress() changed the model's state_dict keys"
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"compress() modified the user's model: {k}"

    report = verify(model, pruned, example_inputs, rtol=rtol)
    assert report.status.startswith(expect), f"oracle: {report} (expected {expect})"
    assert vacuous_ok or report.vacuous is None, f"oracle check is vacuous: {report.vacuous}"
    if expect == "approximate":
        assert "structure verified exactly" in report.status, f"oracle: {report}"

    ref, out = _outputs(model, example_inputs), _outputs(pruned, example_inputs)
    ref_t = ref if isinstance(ref, torch.Tensor) else ref[0]
    out_t = out if isinstance(out, torch.Tensor) else out[0]
    assert ref_t.shape == out_t.shape, f"output shape changed {ref_t.shape} -> {out_t.shape}"
    if smaller:
        assert n_params(pruned) < n_params(model), "nothing was pruned"
    if roundtrip:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "pruned.pt"
            save(pruned, path)
            again = load(path)
            torch.testing.assert_close(_outputs(again, example_inputs), out, rtol=0, atol=0)
    return pruned


def checked_compress(model: nn.Module, example_inputs: Any, ratio: float = 0.5, *,
                     expect: str = "exact", **kwargs: Any) -> dict[str, Any]:
    """:func:`prune_and_check`'s invariants, safe to run in several threads at once.

    compress (with its oracle), an independent :func:`fxprune.verify`, the user's model and
    example inputs unchanged (values and training flags), fewer parameters and MACs
    (:func:`fxprune.count`), and a save/load round trip with identical outputs. Returns
    ``{"status", "params": (before, after), "macs": (before, after)}``; raises
    ``AssertionError`` naming the broken invariant.
    """
    inputs = positional_inputs(model, example_inputs)
    given = [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    pruned = compress(model, ratio, example_inputs=inputs, **kwargs)
    report = verify(model, pruned, inputs)
    assert report.status.startswith(expect), f"oracle: {report} (expected {expect})"
    assert [m.training for m in model.modules()] == flags, "compress() changed training flags"
    after = model.state_dict()
    assert before.keys() == after.keys(), "compress() changed the model's state_dict keys"
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"compress() modified the user's model: {k}"
    for i, (x, g) in enumerate(zip(inputs, given)):
        assert not isinstance(x, torch.Tensor) or torch.equal(x, g), f"example input {i} changed"
    c0, c1 = count(model, inputs), count(pruned, inputs)
    assert c1.params < c0.params and c1.macs <= c0.macs, f"not smaller: {c0} -> {c1}"
    out = _outputs(pruned, inputs)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pruned.pt"
        save(pruned, path)
        again = load(path)
    torch.testing.assert_close(_outputs(again, inputs), out, rtol=0, atol=0)
    return {"status": report.status, "params": (c0.params, c1.params),
            "macs": (c0.macs, c1.macs)}


def read_only_checks(model: nn.Module, pruned: fx.GraphModule, x: Any) -> str:
    """Read-only calls on a model and its pruned result (trace, analyze, count, verify, a
    save/load round trip): what other threads may do to shared models while they prune.
    Returns the oracle's status; raises AssertionError when a check fails."""
    from fxprune.core.analyze import analyze
    from fxprune.core.trace import trace

    assert analyze(trace(model, x), warn=False).groups
    assert count(model, x).params > count(pruned, x).params
    report = verify(model, pruned, x)
    assert report.ok, report
    with tempfile.TemporaryDirectory() as d:
        save(pruned, Path(d) / "p.pt")
        again = load(Path(d) / "p.pt")
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), rtol=0, atol=0)
    return report.status
