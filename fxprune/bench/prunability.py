"""Benchmarks: ``prunability`` of timm or torchvision models (optionally against
Torch-Pruning) and fuzzing.

Usage (also ``fxprune bench ...`` and ``python -P -m fxprune.bench ...``)::

    prunability [--set default|ci|torchvision|detection|huggingface] [--models m1,m2]
                [--ratio 0.5] [--timeout 300] [--mem-gb 8] [--against torch-pruning]
                [--out DIR] [--update FILE.json]
    prunability --fuzz N [--seed S] [--out DIR]

The model sets and how a model is built are in :mod:`fxprune.bench.sets`; ``--models`` names
models of the set's source (timm unless ``--set torchvision``). Every model runs in its own
child process (``sys.executable``) with a wall-clock timeout and an address-space cap
(``RLIMIT_AS``), with random weights, fed one random batch. fxprune's record per model:
status (``pass`` = exact oracle, ``approximate``, ``fail``), the oracle's verdict, the failing
stage (create, trace, analyze, select, rewrite, run, shape, oracle, save/load, timeout, oom),
the seconds of ``compress`` (no verify), MACs and params cut (:func:`fxprune.count`), the
oracle's max error and the first line of the error. Torch-Pruning (``--against
torch-pruning``, the ``bench`` extra; imported only in its child processes) prunes the same
models with ``MetaPruner(MagnitudeImportance(p=1), pruning_ratio=ratio,
ignored_layers=[classifier])``; it has no oracle of its own, so fxprune's oracle checks its
model (:mod:`fxprune.bench.oracle`): its ``pass`` means it runs, keeps the output shape, cuts
MACs and the oracle does not reject it (``exact``, ``approximate`` or ``unverified``).

Writes ``prunability.md`` and ``prunability.json`` to ``--out`` (default ``bench_out``);
``--update FILE.json`` also merges this run's rows into FILE.json (rows of the same model
replaced, the file created if missing) and rewrites FILE.md beside it, so a subset can be
rerun (``--set torchvision --models vit_b_16,swin_t --update ...``). ``--fuzz N`` instead runs
N cases of :mod:`fxprune.tools.fuzz` and writes ``fuzz.md``/``fuzz.json``.
"""

from __future__ import annotations

__all__ = ["main", "build_parser", "DEFAULT_SET", "CI_SMALL", "TORCHVISION_SET", "model_set",
           "family_of", "run_model", "write_report", "summarize", "merge_rows"]

import argparse
import contextlib
import difflib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fxprune.bench.child import is_oom
from fxprune.bench.report import cell, merge_rows, pct, sec, summarize, write_report
from fxprune.bench.sets import (
    CI_SMALL,
    DEFAULT_SET,
    SETS,
    TORCHVISION_SET,
    family_of,
    known_models,
    model_set,
    source_of,
)


def run_model(name: str, tool: str, *, ratio: float = 0.5, timeout: float = 300,
              mem_gb: float = 8, workdir: Path, threads: int | None = None,
              source: str = "timm") -> dict[str, Any]:
    """Run one model with one tool in a child process; returns its record."""
    workdir = Path(workdir).resolve()  # the child runs in workdir: absolute paths only
    safe = name.replace("/", "_")
    tag = "tp" if tool == "torch-pruning" else "fx"
    result = workdir / f"{safe}.{tag}.json"
    log = workdir / f"{safe}.{tag}.log"
    result.unlink(missing_ok=True)
    job = {"tool": tool, "model": name, "ratio": ratio, "mem_gb": mem_gb,
           "result": str(result), "threads": threads, "source": source}
    cmd = [sys.executable]
    if sys.version_info >= (3, 11):
        cmd.append("-P")  # the checkout's fxprune/ must not shadow the installed package
    cmd += ["-c", "from fxprune.bench.child import child_main; child_main()",
            json.dumps(job)]
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    timed_out = False
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                cwd=str(workdir), start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own session
            rc = proc.wait()
    wall = time.perf_counter() - t0
    try:
        rec = json.loads(result.read_text())
    except (OSError, ValueError):
        rec = {"tool": tool, "model": name, "status": "fail", "stage": "create", "done": False}
    rec["wall_seconds"] = wall
    if timed_out:
        rec.update(status="fail", error=f"timed out after {timeout:g} s during "
                                        f"{rec.get('stage') or 'teardown'}", stage="timeout")
    elif not rec.get("done"):
        during = rec.get("stage") or "?"
        tail = _log_tail(log)
        if rc is not None and rc < 0 and -rc == signal.SIGKILL:
            rec.update(stage="oom", error=f"killed (SIGKILL, likely out of memory) during "
                                          f"{during}")
        elif is_oom(tail):
            rec.update(stage="oom", error=f"{tail} (during {during})")
        else:
            rec.update(stage="crash" if rc and rc < 0 else during,
                       error=f"child exited with code {rc} during {during}: {tail}")
        rec["status"] = "fail"
    rec.pop("done", None)
    return rec


def _log_tail(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


# --- the commands --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fxprune bench", description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    q = sub.add_parser("prunability", help="prune timm or torchvision models (each in a "
                       "child process)", description="Prune timm or torchvision models with "
                       "random weights, each in its own child process; write "
                       "prunability.md/.json.")
    q.add_argument("--set", choices=tuple(SETS), help="a predefined model list (default: "
                   "default); torchvision: torchvision models; detection: torchvision "
                   "detectors and ultralytics YOLO where installed; huggingface: transformers "
                   "vision models from their configs")
    q.add_argument("--models", help="comma-separated model names of the set's source (timm "
                   "unless --set torchvision), instead of the whole set")
    q.add_argument("--fuzz", type=int, metavar="N",
                   help="run N random-model fuzz cases (fxprune.fuzz) instead")
    q.add_argument("--seed", type=int, default=0, help="first fuzz seed (with --fuzz)")
    q.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default 0.5)")
    q.add_argument("--timeout", type=float, default=300, help="seconds per model and tool")
    q.add_argument("--mem-gb", type=float, default=8,
                   help="address-space cap per child in GiB (0: none; torch alone maps ~4)")
    q.add_argument("--against", choices=("torch-pruning",),
                   help="also run Torch-Pruning (pip install torch-pruning)")
    q.add_argument("--out", default="bench_out", help="output folder (default bench_out)")
    q.add_argument("--update", metavar="FILE.json",
                   help="also merge the rows into this report (same models replaced; created "
                   "if missing) and rewrite the .md beside it")
    q.add_argument("--threads", type=int, default=None, help="torch threads per child")
    q.add_argument("--strict", action="store_true",
                   help="exit 1 if any model fails with fxprune")
    sub.add_parser("accuracy", add_help=False,
                   help="accuracy at the same MACs on real data (fxprune bench accuracy -h)")
    return p


def _resolve_models(args: argparse.Namespace) -> list[str]:
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        source = source_of(args.set)
        known = known_models(source)
        bad = [m for m in names if m not in known]
        if bad:
            hints = {m: difflib.get_close_matches(m, known, n=3) for m in bad}
            raise SystemExit(f"fxprune bench: error: unknown {source} model(s): " + "; ".join(
                f"{m}" + (f" (did you mean {', '.join(h)}?)" if h else "")
                for m, h in hints.items()))
        return names
    return model_set(args.set or "default")


def _versions(against: bool, source: str) -> dict[str, str]:
    import timm
    import torch

    v = {"torch": torch.__version__, "timm": timm.__version__}
    if source in ("torchvision", "detection"):
        import torchvision

        v["torchvision"] = torchvision.__version__
    from importlib.metadata import PackageNotFoundError, version

    for pkg in {"detection": ("ultralytics",), "huggingface": ("transformers",)}.get(source, ()):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            v[pkg] = "not installed"
    if against:
        try:
            from importlib.metadata import version

            v["torch_pruning"] = version("torch-pruning")
        except Exception:  # noqa: BLE001 - reported by the children
            v["torch_pruning"] = "not installed"
    return v


def _prunability(args: argparse.Namespace, argv: list[str],
                 echo: Callable[[str], None]) -> int:
    if not 0.0 <= args.ratio < 1.0:
        echo("fxprune bench: error: --ratio must be in [0, 1)")
        return 2
    against = args.against == "torch-pruning"
    if against:
        import importlib.util

        if importlib.util.find_spec("torch_pruning") is None:
            echo("fxprune bench: error: --against torch-pruning needs Torch-Pruning: "
                 "pip install torch-pruning (or pip install -e '.[bench]')")
            return 2
    try:
        names = _resolve_models(args)
    except SystemExit as e:
        echo(str(e))
        return 2
    if args.update and not args.update.endswith(".json"):
        echo(f"fxprune bench: error: --update needs a .json report path, got '{args.update}'")
        return 2
    source = source_of(args.set)
    out = Path(args.out)
    work = out / "logs"
    work.mkdir(parents=True, exist_ok=True)
    tools = ["fxprune", "torch-pruning"] if against else ["fxprune"]
    t_start = time.perf_counter()
    meta: dict[str, Any] = {
        "command": "fxprune bench " + " ".join(shlex.quote(a) for a in argv),
        "ratio": args.ratio, "timeout": args.timeout, "mem_gb": args.mem_gb,
        "against": args.against, "cpus": os.cpu_count(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "source": source,
        **_versions(against, source)}
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names, 1):
        row: dict[str, Any] = {"model": name, "family": family_of(name, source)}
        for tool in tools:
            rec = run_model(name, tool, ratio=args.ratio, timeout=args.timeout,
                            mem_gb=args.mem_gb, workdir=work, threads=args.threads,
                            source=source)
            row["fxprune" if tool == "fxprune" else "torch_pruning"] = rec
        rows.append(row)
        echo(_progress_line(i, len(names), row))
        meta["wall_seconds"] = time.perf_counter() - t_start
        write_report(out, meta, rows)  # partial results survive an interrupted run
    meta["wall_seconds"] = time.perf_counter() - t_start
    summary = write_report(out, meta, rows)
    wrote = out / "prunability.md"
    if args.update:
        merge_rows(Path(args.update), meta, rows)
        wrote = Path(args.update).with_suffix(".md")
    s = summary["fxprune"]
    echo(f"fxprune: {s['pass']} pass, {s['approximate']} approximate, {s['fail']} fail of "
         f"{len(rows)}" + (f"; Torch-Pruning: {summary['torch_pruning']['pass']} pass"
                           if against else "")
         + f"; {meta['wall_seconds']:.0f} s; wrote {wrote}")
    return 1 if args.strict and s["fail"] else 0


def _cut(v: Any) -> str:
    return f"-{pct(v)}" if isinstance(v, (int, float)) else "n/a"


def _progress_line(i: int, n: int, row: dict[str, Any]) -> str:
    f = row["fxprune"]
    text = (f"[{i}/{n}] {row['model']:<28} fxprune {f.get('status')}"
            + (f" ({f.get('stage')}: {cell(f.get('error'), 80)})" if f.get("status") == "fail"
               else f" {sec(f.get('seconds'))} s, MACs {_cut(f.get('macs_cut'))}"))
    t = row.get("torch_pruning")
    if t is not None:
        text += (f" | TP {t.get('status')}"
                 + (f" ({t.get('stage')})" if t.get("status") == "fail"
                    else f" {sec(t.get('seconds'))} s, MACs {_cut(t.get('macs_cut'))}, "
                         f"{t.get('verdict')}"))
    return text


def _fuzz(args: argparse.Namespace, echo: Callable[[str], None]) -> int:
    from fxprune.tools.fuzz import run_case

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for seed in range(args.seed, args.seed + args.fuzz):
        r = run_case(seed)
        results.append(r)
        if not r.ok:
            echo(f"seed {seed}: FAIL at {r.stage} (ratio {r.ratio}, {r.criterion}): {r.error}")
    failed = [r for r in results if not r.ok]
    skipped = sum(1 for r in results if r.skipped)
    wall = time.perf_counter() - t0
    data = {"seeds": [args.seed, args.seed + args.fuzz], "cases": len(results),
            "failed": len(failed), "skipped_nothing_to_prune": skipped, "seconds": wall,
            "failures": [r.to_dict() for r in failed]}
    (out / "fuzz.json").write_text(json.dumps(data, indent=1))
    lines = [f"# fxprune fuzz: seeds {args.seed}..{args.seed + args.fuzz - 1}", "",
             f"{len(results)} cases, {len(failed)} failed, {skipped} with nothing to prune; "
             f"{wall:.0f} s.", "", "| seed | ratio | criterion | stage | error |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.seed} | {r.ratio} | {r.criterion} | {r.stage} | {cell(r.error, 160)} |"
              for r in failed]
    lines.append("\nReproduce one: `python -P -c \"from fxprune.fuzz import run_case; "
                 "print(run_case(SEED).traceback)\"`; shrink it with `fxprune.tools.fuzz.shrink`.")
    (out / "fuzz.md").write_text("\n".join(lines) + "\n")
    echo(f"fuzz: {len(results)} cases, {len(failed)} failed, {skipped} skipped; {wall:.0f} s; "
         f"wrote {out / 'fuzz.md'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``fxprune bench ...``; returns the exit code (0 ok, 1 failures with --strict/--fuzz,
    2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.bench == "accuracy":  # listed in the help; the command line runs it (fxprune.cli)
        print("fxprune bench: error: run the accuracy benchmark as `fxprune bench accuracy ...`",
              file=sys.stderr)
        return 2

    def echo(msg: str) -> None:
        print(msg, flush=True)

    if args.fuzz is not None:
        if args.models or args.set:
            echo("fxprune bench: error: --fuzz generates its models; drop --models/--set")
            return 2
        return _fuzz(args, echo)
    return _prunability(args, argv, echo)


if __name__ == "__main__":
    sys.exit(main())
