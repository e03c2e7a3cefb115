"""Run a preset: dense baselines first, then every method row, in worker processes.

Results go to ``OUT/accuracy_<preset>.json`` after every finished row (written atomically), so
a run that stops can be resumed: finished rows are skipped, rows that failed are retried.
"""

from __future__ import annotations

__all__ = ["run", "load_results", "recheck"]

import concurrent.futures as cf
import dataclasses
import datetime as _dt
import json
import multiprocessing as mp
import os
import platform
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fxprune.bench.accuracy.presets import Job, Preset, jobs
from fxprune.errors import InputError


def results_path(out: Path, preset: Preset) -> Path:
    return out / f"accuracy_{preset.name}.json"


def load_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"rows": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not a results file ({e}); move it away or pick another "
                         "--out") from e


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    os.replace(tmp, path)


_DENSE_FIELDS = ("dataset", "subset", "dense_epochs", "dense_lr", "batch", "amp")


# fields that only choose which rows exist (each row's key names its model, method, target and
# seed): running more or fewer of them keeps the finished rows
_SELECTION_FIELDS = ("models", "methods", "seeds", "targets", "note")


def _field_defaults() -> dict[str, Any]:
    """Every Preset field that has a default, as ``Preset.to_dict`` records it."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Preset):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _row_config(preset: dict[str, Any]) -> dict[str, Any]:
    """The settings every method row depends on. A field the record lacks was added to
    Preset after the record was written, with the behaviour of the code that wrote it as its
    default: it reads as that default (a new setting does not discard finished rows)."""
    full = {**_field_defaults(), **preset}
    return {k: v for k, v in full.items() if k not in _SELECTION_FIELDS}


def _dense_config(preset: dict[str, Any]) -> tuple:
    """The settings a dense baseline depends on."""
    return tuple(preset.get(f) for f in _DENSE_FIELDS)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int, poll_s: float = 2.0) -> None:
    """A worker stops when the run that started it is gone (killed, Ctrl-C): a row trains
    for minutes and would otherwise go on, orphaned, holding a core."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def _work(preset: Preset, job: Job, out: str, split: str = "test") -> dict[str, Any]:
    from fxprune.bench.accuracy.rows import run_job

    try:
        return run_job(preset, job, Path(out), split=split)
    except Exception as e:  # a failed row is recorded (and retried on resume), not fatal
        return {"key": job.key, "model": job.model, "tool": job.tool, "method": job.method,
                "target": job.target, "seed": job.seed,
                "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}


def _meta(preset: Preset, workers: int, threads: int, command: str | None) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tpv: str | None = version("torch-pruning")
    except PackageNotFoundError:
        tpv = None
    return {"preset": preset.to_dict(), "torch": torch.__version__, "torch_pruning": tpv,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "workers": workers, "threads_per_worker": threads, "command": command,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")}


def _redo_lost_dense(out: Path, rows: list[Job], done: dict[str, Any]) -> None:
    """A dense row whose checkpoint is gone (another clone, a deleted folder) is trained again
    when a row still needs it (from the same seed)."""
    from fxprune.bench.accuracy.rows import dense_path

    need = {(j.model, j.seed) for j in rows if j.key not in done}
    for key, r in list(done.items()):
        if (r["method"] == "dense" and (r["model"], r["seed"]) in need
                and not dense_path(out, r["model"], r["seed"]).exists()):
            del done[key]


def _reuse_dense(out: Path, dense: list[Job], done: dict[str, Any]) -> None:
    """``--tune``: dense baselines whose checkpoints exist in ``out`` are not retrained (their
    rows carry no accuracy: a tune run reads no test split)."""
    from fxprune.bench.accuracy.rows import dense_path

    for j in dense:
        if done.get(j.key, {}).get("reused"):  # written by an earlier release without these
            done[j.key] = {"acc_oneshot": None, "macs_kept": 1.0, "params_kept": 1.0,
                           **done[j.key]}
        elif j.key not in done and dense_path(out, j.model, j.seed).exists():
            done[j.key] = {"key": j.key, "model": j.model, "tool": "dense", "method": "dense",
                           "target": None, "seed": j.seed, "acc": None, "acc_oneshot": None,
                           "macs_kept": 1.0, "params_kept": 1.0, "reused": True}


def run(preset: Preset, out: Path, *, workers: int = 2, threads: int = 1,
        command: str | None = None, limit: int | None = None,
        on_row: Callable[[dict[str, Any], int, int], None] | None = None,
        split: str = "test") -> dict[str, Any]:
    """Run (or resume) ``preset``; returns the results document.

    Args:
        out: output folder (results JSON, markdown table, dense checkpoints).
        workers: worker processes (each with ``threads`` torch threads).
        limit: stop after this many new rows (for a quick look).
        on_row: called with (row, done, total) after every row (the CLI's progress bar).
        split: ``"test"`` (the reported numbers) or ``"val"`` (``--tune``: every accuracy on
            the validation split, the test split never read; dense checkpoints already in
            ``out`` are reused).
    """
    if preset.dataset == "fashion-mnist":
        from fxprune.train.data import find_fashion_mnist

        find_fashion_mnist()  # a clear error now rather than in every worker
    if any(j.tool == "torch-pruning" for j in jobs(preset)[1]):
        try:
            import torch_pruning  # noqa: F401
        except ImportError as e:
            raise InputError("this preset compares against Torch-Pruning: pip install -c "
                             "constraints.txt -e '.[bench]' (or pick methods without tp-*)"
                             ) from e
    out.mkdir(parents=True, exist_ok=True)
    path = results_path(out, preset)
    doc = load_results(path)
    done = {r["key"]: r for r in doc.get("rows", []) if "error" not in r}
    old_preset = doc.get("meta", {}).get("preset")
    if old_preset is not None and _row_config(old_preset) != _row_config(preset.to_dict()):
        if _dense_config(old_preset) != _dense_config(preset.to_dict()):
            raise InputError(f"{path} holds rows of another configuration of preset "
                             f"'{preset.name}': use another --out, or delete it to start over")
        # only the methods' settings changed: the dense baselines stay, the rows are redone
        done = {k: r for k, r in done.items() if r["method"] == "dense"}
    doc["meta"] = {**_meta(preset, workers, threads, command), "split": split}
    dense, rows = jobs(preset)
    if split == "val":
        _reuse_dense(out, dense, done)
    _redo_lost_dense(out, rows, done)
    todo = [j for j in dense + rows if j.key not in done]
    if limit is not None:
        todo = todo[:limit]
    total, n = len(todo), 0
    order = {j.key: i for i, j in enumerate(dense + rows)}
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(threads,)) as pool:
        for phase in ([j for j in todo if j.method == "dense"],
                      [j for j in todo if j.method != "dense"]):
            ready = {(r["model"], r["seed"]) for r in done.values() if r["method"] == "dense"}
            phase = [j for j in phase if j.method == "dense" or (j.model, j.seed) in ready]
            futures = [pool.submit(_work, preset, j, str(out), split) for j in phase]
            for f in cf.as_completed(futures):
                row = f.result()
                done[row["key"]] = row
                doc["rows"] = sorted(done.values(), key=lambda r: order.get(r["key"], 1 << 30))
                _write(path, doc)
                n += 1
                if on_row is not None:
                    on_row(row, n, total)
    from fxprune.bench.accuracy.report import write_markdown

    doc["rows"] = sorted(done.values(), key=lambda r: order.get(r["key"], 1 << 30))
    write_markdown(out, preset, doc)
    return doc


def recheck(preset: Preset, out: Path, key: str, threads: int = 1) -> tuple[dict, dict]:
    """Recompute the finished row ``key`` of ``OUT/accuracy_<preset>.json`` (from the same dense
    checkpoint, in a fresh process) and return ``(stored, new)`` rows: the reproducibility
    check."""
    doc = load_results(results_path(out, preset))
    stored = next((r for r in doc.get("rows", []) if r.get("key") == key and "error" not in r),
                  None)
    if stored is None:
        raise InputError(f"no finished row '{key}' in {results_path(out, preset)}")
    job = next((j for j in sum(jobs(preset), []) if j.key == key), None)
    if job is None or job.method == "dense":
        raise InputError(f"'{key}' is not a method row of preset '{preset.name}'")
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker,
                                initargs=(threads,)) as pool:
        new = pool.submit(_work, preset, job, str(out)).result()
    if "error" in new:
        raise InputError(f"rerunning '{key}' failed: {new['error']}")
    return stored, new
