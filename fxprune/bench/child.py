"""The child-process side of the prunability benchmark: one model, one tool, one process.

:func:`child_main` is what :func:`fxprune.bench.prunability.run_model` starts with
``python -P -c "from fxprune.bench.child import child_main; child_main()" JOB``; it builds the
model, prunes it with fxprune or Torch-Pruning, checks it with the oracle and writes its record
(stage by stage, so a timeout or a crash still says where it happened)."""

from __future__ import annotations

__all__ = ["child_main", "STAGES", "TOOLS", "is_oom"]

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from fxprune.bench.beyond import counted, head_modules, structure
from fxprune.bench.sets import (
    classifiers,
    make_model,
    unzero,
)
from fxprune.ir.meta import record_of

#: Sources whose models fxprune prunes beyond torch.fx (concrete tracer, opaque regions).
BEYOND = ("detection", "huggingface")

STAGES = ("create", "count", "trace", "analyze", "select", "rewrite", "run", "shape", "oracle",
          "save/load", "timeout", "oom", "crash")
TOOLS = ("fxprune", "torch-pruning")
_OOM_TEXT = ("MemoryError", "can't allocate memory", "not enough memory", "std::bad_alloc",
             "failed to map segment", "Cannot allocate memory", "out of memory")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def is_oom(text: str) -> bool:
    return any(t.lower() in text.lower() for t in _OOM_TEXT)


def _first_line(exc: BaseException) -> str:
    from fxprune.errors import short_error

    text = short_error(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


class _Recorder:
    """The child's record, rewritten to disk at every stage (so a killed child leaves one)."""

    def __init__(self, path: Path, tool: str, model: str):
        self.path = path
        self.data: dict[str, Any] = {"tool": tool, "model": model, "status": "fail",
                                     "stage": "create", "done": False}

    def stage(self, name: str) -> None:
        self.data["stage"] = name
        self.save()

    def save(self) -> None:
        _write_json(self.path, self.data)


def _first_tensor(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)) and out:
        return _first_tensor(out[0])
    if isinstance(out, dict) and out:
        return _first_tensor(next(iter(out.values())))
    return out


def _shape(out: Any) -> list[int] | None:
    t = _first_tensor(out)
    return list(t.shape) if hasattr(t, "shape") else None


def _count(d: dict[str, Any], model: Any, inputs: tuple[Any, ...], when: str,
           before: Any = None, source: str = "timm") -> Any:
    """fxprune.count into the record; a counting failure is noted, not fatal (the parameter
    count is then taken directly)."""
    from fxprune.costs.count import count

    d[f"params_{when}"] = sum(p.numel() for p in model.parameters())
    if when == "after" and d.get("params_before"):
        d["params_cut"] = 1 - d["params_after"] / d["params_before"]
    if when == "after" and before is None:
        return None
    try:
        c = count(*counted(model, inputs, source))
    except Exception as e:  # noqa: BLE001 - e.g. FlopCounterMode bugs on some models
        d["count_error"] = _first_line(e)
        return None
    d[f"macs_{when}"] = c.macs
    if when == "after" and before.macs:
        d["macs_cut"] = 1 - c.macs / before.macs
    return c


def _roundtrip(pruned: Any, inputs: tuple[Any, ...], out: Any) -> None:
    """fxprune.save + fxprune.load must give identical outputs."""
    import torch

    from fxprune.files.serialize import load, save

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pruned.pt"
        save(pruned, path)
        again = load(path)
        with torch.no_grad():
            out2 = again(*inputs)
    if not torch.equal(_first_tensor(out2), _first_tensor(out)):
        raise AssertionError("save/load changed the outputs")


def _setup(rec: _Recorder, name: str, source: str) -> tuple[Any, tuple[Any, ...], Any, Any]:
    """Create the model and its input, run it once and count it: (model, inputs, out, count)."""
    import torch

    rec.stage("create")
    model, inputs = make_model(name, source)
    rec.data["unzeroed"] = unzero(model)  # else a zero head makes the oracle vacuous
    first = inputs[0][0] if isinstance(inputs[0], (list, tuple)) else inputs[0]
    rec.data["input_shape"] = list(first.shape)
    with torch.no_grad():
        ref = model(*inputs)
    rec.stage("count")
    return model, inputs, ref, _count(rec.data, model, inputs, "before", source=source)


def _run_and_count(rec: _Recorder, pruned: Any, inputs: tuple[Any, ...], ref: Any, before: Any,
                   source: str = "timm") -> tuple[Any, Any]:
    """Run the pruned model, count it, and require the original's output shape (a detector's:
    the same structure, boxes/labels/scores per image)."""
    import torch

    rec.stage("run")
    with torch.no_grad():
        out = pruned(*inputs)
    after = _count(rec.data, pruned, inputs, "after", before, source)
    rec.stage("shape")
    if source in BEYOND and structure(out) != structure(ref):
        raise AssertionError(f"output structure changed {structure(ref)} -> {structure(out)}")
    if source != "detection" and _shape(out) != _shape(ref):
        raise AssertionError(f"output shape changed {_shape(ref)} -> {_shape(out)}")
    return out, after


def _child_fxprune(rec: _Recorder, name: str, ratio: float, source: str) -> None:
    import warnings

    from fxprune.core.verify import verify
    from fxprune.plan.compress import compress
    from fxprune.tools.fuzz.cases import stage_of

    d = rec.data
    model, inputs, ref, before = _setup(rec, name, source)
    rec.stage("trace")

    def progress(stage: str, done: int, total: int) -> None:  # where a timeout hits
        if d.get("stage") != stage:
            rec.stage(stage)

    beyond = source in BEYOND  # oracle inside compress (per region where the root is opaque)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # pruning time without the oracle (Torch-Pruning has none); it runs below
            pruned = compress(model, ratio, example_inputs=inputs, progress=progress,
                              verify=beyond)
    except Exception as e:
        d["stage"] = stage_of(e) if not isinstance(e, MemoryError) else "oom"
        raise
    d["seconds"] = time.perf_counter() - t0
    notes = [str(w.message).splitlines()[0] for w in caught
             if "unsupported" in str(w.message).lower() or "no channel rule" in
             str(w.message).lower()]
    d["warning"] = notes[0][:300] if notes else ""
    meta = record_of(pruned)
    d["leaf_fallbacks"] = len(meta.get("fxprune.leaf_fallbacks", ()) or ())
    out, _ = _run_and_count(rec, pruned, inputs, ref, before, source)
    rec.stage("oracle")
    if beyond:
        _beyond_verdict(d, meta)
        return
    report = verify(model, pruned, inputs)
    d.update(oracle=report.status, verdict=report.kind, max_abs_err=report.max_abs_err,
             max_rel_err=report.max_rel_err, vacuous=report.vacuous)
    if not report.ok:
        raise AssertionError(f"oracle: {report}")
    rec.stage("save/load")
    _roundtrip(pruned, inputs, out)
    d["status"] = "pass" if report.status == "exact" else "approximate"
    d["stage"] = None




def _beyond_verdict(d: dict[str, Any], meta: dict[str, Any]) -> None:
    """The oracle's verdict of a model pruned by ``compress(verify=True)``: its report, or
    where the root stayed opaque, the worst of its pruned regions' (``exact`` when all are)."""
    d["opaque"] = {k or "<root>": str(v)[:200] for k, v in
                   (meta.get("fxprune.opaque") or {}).items()}
    d["regions"] = {k: str(v)[:160] for k, v in (meta.get("fxprune.regions") or {}).items()}
    report = meta.get("fxprune.verify")
    if report is not None:
        d.update(oracle=report.status, verdict=report.kind, max_abs_err=report.max_abs_err,
                 max_rel_err=report.max_rel_err, vacuous=report.vacuous)
        if not report.ok:
            raise AssertionError(f"oracle: {report}")
    else:
        pruned = [v for v in d["regions"].values() if v.startswith("pruned (")
                  and "as regions" not in v]
        if not pruned:
            raise AssertionError("no region was pruned")
        status = "exact" if all(v.startswith("pruned (exact") for v in pruned) else \
            "approximate"
        d.update(oracle=status, verdict=f"{status} (per region)")
    d["save_load"] = "not checked (opaque regions / wrapper class)"
    d["status"] = "pass" if d["oracle"] == "exact" else "approximate"
    d["stage"] = None


#: Verdicts of fxprune's oracle that fail a Torch-Pruning model.
_TP_REJECTED = ("mismatch", "structural_mismatch", "shape_mismatch", "incompatible")


def _child_torch_pruning(rec: _Recorder, name: str, ratio: float, source: str) -> None:
    import copy

    import torch_pruning as tp

    from fxprune.bench.oracle import verify_sliced

    d = rec.data
    d["version"] = getattr(tp, "__version__", "?")
    model, inputs, ref, before = _setup(rec, name, source)
    original = copy.deepcopy(model)  # Torch-Pruning edits in place; the oracle needs both
    rec.stage("trace")  # building Torch-Pruning's dependency graph
    t0 = time.perf_counter()
    beyond = source in BEYOND
    ignored = head_modules(model, source) if beyond else classifiers(model)
    example = inputs if source == "detection" else inputs[0]  # TP calls model(*tuple)
    pruner = tp.pruner.MetaPruner(model, example,
                                  importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    rec.stage("rewrite")  # pruner.step(): the in-place surgery
    pruner.step()
    d["seconds"] = time.perf_counter() - t0
    _, after = _run_and_count(rec, model, inputs, ref, before, source)
    macs_fell = after is not None and before is not None and after.macs < before.macs
    if not macs_fell and d.get("params_after", 0) >= d.get("params_before", 0):
        d["stage"] = "macs"
        raise AssertionError("neither MACs nor params fell")
    rec.stage("oracle")
    try:
        d.update(verify_sliced(original, model, inputs))
    except Exception as e:  # noqa: BLE001 - fxprune cannot analyze it: no verdict
        d.update(verdict="unverified", verdict_note=f"fxprune's oracle: {_first_line(e)}")
    if d["verdict"] in _TP_REJECTED:
        raise AssertionError(f"fxprune's oracle: {d['verdict_note'] or d['verdict']}")
    d["status"] = "pass"
    d["stage"] = None


def child_main(argv: list[str] | None = None) -> None:
    """Entry point of a child process: ``argv[0]`` is a JSON job description."""
    job = json.loads((argv or sys.argv[1:])[0])
    mem_gb = float(job.get("mem_gb") or 0)
    if mem_gb > 0:
        try:
            import resource

            limit = int(mem_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):  # not POSIX, or a lower hard limit
            pass
    rec = _Recorder(Path(job["result"]), job["tool"], job["model"])
    rec.save()
    try:
        import torch

        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        run = _child_fxprune if job["tool"] == "fxprune" else _child_torch_pruning
        run(rec, job["model"], float(job["ratio"]), job.get("source") or "timm")
    except BaseException as e:  # noqa: BLE001 - every failure is recorded
        text = f"{type(e).__name__}: {e}"
        rec.data["error"] = _first_line(e) if isinstance(e, Exception) else text[:400]
        if isinstance(e, MemoryError) or is_oom(text):
            msg = str(rec.data["error"]).rstrip(": ")
            rec.data["error"] = f"{msg} (during {rec.data.get('stage')})"
            rec.data["stage"] = "oom"
        rec.data["status"] = "fail"
        rec.data["traceback"] = traceback.format_exc()[-4000:]
    rec.data["done"] = True
    rec.save()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (large models: seconds)
