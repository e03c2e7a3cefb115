"""Two fxprune source trees side by side: coverage (status, MACs cut) and compress time.

    python -P benchmarks/compare_versions.py --set default \
        --baseline /work/wt/base --current . \
        --out benchmarks/results/compare_versions_timm.json

For every model of a set (``default``: the timm set, ``torchvision``; the names come from the
current tree's :func:`fxprune.bench.sets.model_set`) each tree prunes the model in a fresh child
process (``python -P`` with ``PYTHONPATH=<tree>``, so neither the working directory nor the
editable install of another checkout is imported; ``fxprune.passes`` and ``fxprune.models`` are
mapped to the tree's own ``passes/`` and ``models/``; the child checks where all three came
from). The child works like ``fxprune bench prunability``: a model with random weights (seed
0, all-zero weights drawn at random), eval mode, one random batch (timm's
``pretrained_cfg["input_size"]``, torchvision's 3x224x224), ``torch.set_num_threads(1)``;
it runs the model once and counts it (:func:`fxprune.count`), then times only
``fxprune.compress(model, 0.5, example_inputs=inputs, verify=False)`` (imports, model
construction and the first forward are excluded; ``--repeat`` calls: the first and the fastest,
in wall-clock and CPU time), counts the pruned model, and checks it with ``fxprune.verify``
(untimed): ``exact``, ``approximate`` or ``fail``.

The two trees run one after the other for each model and the order alternates (baseline first,
then current first for the next model; ``--flip``: the other way round), so machine noise falls
on both alike. A row per model is written to ``--out`` as soon as both children have finished; a
rerun skips the models already there (``--redo`` reruns them). A child that runs past
``--timeout`` is killed and recorded as a failure (stage ``timeout``). ``--out``'s ``.md`` (same
name) gets the summary: pass counts per tree, the models whose status or MACs cut differ, and
the compress time ratio current/baseline (total, median and geometric mean of the per-model
ratios, over the models both trees pruned). ``--summary`` only rewrites the summary from the
JSON file; ``--summary --merge A.json B.json --out C.json`` writes C.md from both rounds (per
model and tree, the smallest of each time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TREES = ("baseline", "current")
SET_FILES = {"default": "timm", "torchvision": "torchvision"}


# --- the child: one tree, one model --------------------------------------------------------

def _map_tree(tree: Path) -> None:
    """Import ``fxprune`` from ``tree`` (``PYTHONPATH``), with ``fxprune.passes`` and
    ``fxprune.models`` from the tree's top-level folders, ahead of any editable install."""
    import importlib.abc
    import importlib.util

    roots = {f"fxprune.{n}": tree / n for n in ("passes", "models")
             if (tree / n / "__init__.py").is_file() and not (tree / "fxprune" / n).is_dir()}

    class TreeFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            folder = roots.get(fullname)
            if folder is None:
                return None
            return importlib.util.spec_from_file_location(
                fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])

    sys.meta_path.insert(0, TreeFinder())


def _make_model(name: str, source: str) -> tuple[Any, tuple[Any, ...]]:
    """The model and input of ``fxprune bench prunability`` (``make_model`` + ``unzero``; the
    same code in both trees)."""
    import torch

    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        size: tuple[int, ...] = (3, 224, 224)
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    model.eval()
    x = torch.randn((1, *size), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and p.numel() and not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.02)
    return model, (x,)


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _prune(fxprune: Any, model: Any, inputs: tuple[Any, ...], rec: dict[str, Any],
           job: dict[str, Any]) -> Any:
    """Time ``compress`` (``--repeat`` calls while the first took under ``--repeat-below``
    seconds): wall-clock ``seconds`` (the first call's) and ``seconds_best`` (the fastest), and
    the same in the process's CPU time (``cpu_seconds``, ``cpu_seconds_best``: with one thread,
    less changed than wall time by other processes on a busy machine)."""
    times, cpu = [], []
    while True:
        t0, c0 = time.perf_counter(), time.process_time()
        pruned = fxprune.compress(model, float(job["ratio"]), example_inputs=inputs,
                                  verify=False)
        cpu.append(time.process_time() - c0)
        times.append(time.perf_counter() - t0)
        if len(times) >= int(job["repeat"]) or times[0] >= float(job["repeat_below"]):
            break
    rec.update(seconds=times[0], seconds_best=min(times), seconds_all=times,
               cpu_seconds=cpu[0], cpu_seconds_best=min(cpu), cpu_seconds_all=cpu)
    return pruned


def _check(fxprune: Any, model: Any, pruned: Any, inputs: tuple[Any, ...],
           rec: dict[str, Any]) -> None:
    """MACs and params cut, and the oracle's verdict (untimed)."""
    after = fxprune.count(pruned, inputs)
    rec["macs_after"] = after.macs
    rec["macs_cut"] = 1 - after.macs / rec["macs_before"] if rec["macs_before"] else None
    rec["params_cut"] = 1 - (sum(p.numel() for p in pruned.parameters())
                             / sum(p.numel() for p in model.parameters()))
    rec["stage"] = "verify"
    t0 = time.perf_counter()
    report = fxprune.verify(model, pruned, inputs)
    rec["verify_seconds"] = time.perf_counter() - t0
    rec.update(verdict=report.kind, max_abs_err=report.max_abs_err)
    if report.ok:
        rec["status"] = "exact" if report.status == "exact" else "approximate"
        rec["stage"] = None
    else:
        rec["error"] = f"oracle: {str(report)[:300]}"


def _import_tree(tree: Path, threads: int) -> Any:
    """``fxprune`` of ``tree`` (checked: the package, its passes and its models)."""
    _map_tree(tree)
    import torch

    torch.set_num_threads(threads)
    import fxprune
    import fxprune.models
    import fxprune.passes

    for mod in (fxprune, fxprune.passes, fxprune.models):
        if not Path(mod.__file__).resolve().is_relative_to(tree):
            raise RuntimeError(f"{mod.__name__} imported from {mod.__file__}, not {tree}")
    return fxprune


def child(job: dict[str, Any]) -> None:
    """Prune one model with one tree; the record is rewritten at every stage."""
    out = Path(job["result"])
    rec: dict[str, Any] = {"status": "fail", "stage": "import", "done": False}

    def stage(name: str) -> None:
        rec["stage"] = name
        _write(out, rec)

    _write(out, rec)
    try:
        fxprune = _import_tree(Path(job["tree"]).resolve(), int(job["threads"]))
        import torch

        stage("create")
        model, inputs = _make_model(job["model"], job["source"])
        rec["input_sum"] = float(inputs[0].double().sum())
        rec["param_sum"] = float(sum(p.double().sum() for p in model.parameters()))
        with torch.no_grad():
            model(*inputs)  # warm-up, as the prunability benchmark's reference run
        stage("count")
        rec["macs_before"] = fxprune.count(model, inputs).macs
        stage("compress")
        pruned = _prune(fxprune, model, inputs, rec, job)
        stage("count after")
        _check(fxprune, model, pruned, inputs, rec)
    except BaseException as e:  # noqa: BLE001 - every failure is a row
        lines = str(e).strip().splitlines()
        rec["error"] = f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
    rec["done"] = True
    _write(out, rec)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown


# --- the parent ----------------------------------------------------------------------------

def _env(tree: Path, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    n = str(threads)
    env.update(PYTHONPATH=str(tree), PYTHONSAFEPATH="1", PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    return env


def run_one(tree: Path, model: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One child process: ``tree`` prunes ``model``; its record (a failure row on timeout or
    crash)."""
    result = workdir / f"{model}.{tree.name}.json"
    result.unlink(missing_ok=True)
    job = {"tree": str(tree), "model": model, "source": SET_FILES[args.set], "ratio": args.ratio,
           "threads": args.threads, "result": str(result), "repeat": args.repeat,
           "repeat_below": args.repeat_below}
    cmd = [sys.executable, "-P", str(HERE), "--child", json.dumps(job)]
    t0 = time.perf_counter()
    timed_out = False
    with open(workdir / f"{model}.{tree.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, env=_env(tree, args.threads), cwd=str(workdir),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    try:
        rec = json.loads(result.read_text())
    except (OSError, ValueError):
        rec = {"status": "fail", "stage": "start", "done": False}
    rec["wall_seconds"] = time.perf_counter() - t0
    if timed_out:
        rec.update(status="fail", error=f"timed out after {args.timeout:g} s during "
                                        f"{rec.get('stage')}", stage="timeout")
    elif not rec.get("done"):
        rec.update(status="fail", error=f"child exited with code {rc} during {rec.get('stage')}")
    rec.pop("done", None)
    return rec


def _git_head(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def models_of(set_name: str, current: Path, baseline: Path) -> tuple[list[str], list[str]]:
    """The set's models by the current tree's ``fxprune.bench.sets``, and by the baseline's
    ``fxprune.bench_sets`` (old layout) or ``fxprune.bench.sets`` (for the record)."""
    code = ("import json, sys\ntry:\n from fxprune.bench.sets import model_set\n"
            "except ImportError:\n from fxprune.bench_sets import model_set\n"
            "print(json.dumps(model_set(sys.argv[1])))")
    lists = []
    for tree in (current, baseline):
        out = subprocess.run([sys.executable, "-P", "-c", code, set_name], env=_env(tree, 1),
                             capture_output=True, text=True, check=True).stdout
        lists.append(json.loads(out.strip().splitlines()[-1]))
    return lists[0], lists[1]


def load(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"meta": {}, "rows": []}


def _median_ratio(rows: list[dict[str, Any]]) -> float:
    return statistics.median(r["ratio"] for r in rows)


def timing(rows: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    """Compress time (``key``: ``seconds``, the first call, or ``seconds_best``)
    current/baseline over the models both trees pruned."""
    both = [{"model": r["model"], "baseline": r["baseline"][key], "current": r["current"][key],
             "ratio": r["current"][key] / r["baseline"][key]}
            for r in rows if r["baseline"].get(key) and r["current"].get(key)]
    if not both:
        return {"n": 0}
    base = sum(r["baseline"] for r in both)
    cur = sum(r["current"] for r in both)
    return {"n": len(both), "baseline_total": base, "current_total": cur,
            "total_ratio": cur / base, "median_ratio": _median_ratio(both),
            "geomean_ratio": math.exp(statistics.fmean(math.log(r["ratio"]) for r in both)),
            "median_seconds_ratio": (statistics.median(r["current"] for r in both)
                                     / statistics.median(r["baseline"] for r in both)),
            "per_model": sorted(both, key=lambda r: -r["ratio"])}


def _cut(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


#: The time measures of the summary: (label, record key).
MEASURES = (("wall, first call", "seconds"), ("wall, fastest", "seconds_best"),
            ("CPU, first call", "cpu_seconds"), ("CPU, fastest", "cpu_seconds_best"))


def _timing_lines(rows: list[dict[str, Any]]) -> list[str]:
    t = {key: timing(rows, key) for _, key in MEASURES}
    n = t["seconds"]["n"]
    if not n:
        return ["No model was pruned by both trees."]
    lines = [f"Over the {n} models both trees pruned. Wall: `time.perf_counter`; CPU: "
             "`time.process_time` (one thread; less changed than wall time by other processes "
             "on a busy machine, though a whole process is sometimes slower). First call: the "
             "first `compress`; fastest: of the repeats.", "",
             "| measure | " + " | ".join(label for label, _ in MEASURES) + " |",
             "|---|" + "---|" * len(MEASURES)]
    for label, k, fmt in (("baseline total (s)", "baseline_total", ".1f"),
                          ("current total (s)", "current_total", ".1f"),
                          ("total ratio", "total_ratio", ".3f"),
                          ("median of per-model ratios", "median_ratio", ".3f"),
                          ("geometric mean of per-model ratios", "geomean_ratio", ".3f"),
                          ("ratio of median seconds", "median_seconds_ratio", ".3f")):
        cells = [f"{t[key][k]:{fmt}}" if t[key]["n"] else "-" for _, key in MEASURES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    per = {key: {r["model"]: r for r in t[key].get("per_model", [])} for _, key in MEASURES}
    lines += ["", "Per model, slowest current/baseline first (by CPU, fastest):", "",
              "| model | wall first: baseline s | current s | ratio | CPU fastest: baseline s | "
              "current s | ratio |", "|---|---|---|---|---|---|---|"]
    order = t["cpu_seconds_best"].get("per_model") or t["seconds"]["per_model"]
    for r in order:
        cells = []
        for key in ("seconds", "cpu_seconds_best"):
            x = per[key].get(r["model"])
            cells.append(f"{x['baseline']:.2f} | {x['current']:.2f} | {x['ratio']:.3f}" if x
                         else "- | - | -")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return lines


def summarize(data: dict[str, Any], title: str, tol: float = 1e-6) -> str:
    """The markdown summary of a comparison file."""
    rows = data["rows"]
    meta = data.get("meta", {})
    lines = [f"# {title}", "", f"Command: `{meta.get('command', '?')}`", ""]
    for t in TREES:
        lines.append(f"- {t}: `{meta.get(t, '?')}` ({meta.get(t + '_commit', '?')})")
    lines += [f"- models: {len(rows)}; ratio {meta.get('ratio')}; threads {meta.get('threads')};"
              f" host: {meta.get('host', '?')}", "", "## Pass counts", "",
              "| tree | exact | approximate | fail |", "|---|---|---|---|"]
    for t in TREES:
        c = {s: sum(1 for r in rows if r[t]["status"] == s)
             for s in ("exact", "approximate", "fail")}
        lines.append(f"| {t} | {c['exact']} | {c['approximate']} | {c['fail']} |")
    status = [r for r in rows if r["baseline"]["status"] != r["current"]["status"]]
    macs = [r for r in rows if r["baseline"].get("macs_cut") is not None
            and r["current"].get("macs_cut") is not None
            and abs(r["baseline"]["macs_cut"] - r["current"]["macs_cut"]) > tol]
    inputs = [r["model"] for r in rows if any(
        r["baseline"].get(k) is not None and r["current"].get(k) is not None
        and r["baseline"][k] != r["current"][k] for k in ("input_sum", "param_sum"))]
    lines += ["", "## Status differences", ""]
    if not status:
        lines.append("None.")
    else:
        lines += ["| model | baseline | current | error (current / baseline) |",
                  "|---|---|---|---|"]
        for r in status:
            err = r["current"].get("error") or r["baseline"].get("error") or ""
            lines.append(f"| {r['model']} | {r['baseline']['status']} | "
                         f"{r['current']['status']} | {err[:160].replace('|', '/')} |")
    lines += ["", "## MACs-cut differences", ""]
    if not macs:
        lines.append(f"None (all models pruned by both trees agree within {tol:g}).")
    else:
        lines += ["| model | baseline | current | change |", "|---|---|---|---|"]
        for r in macs:
            b, c = r["baseline"]["macs_cut"], r["current"]["macs_cut"]
            lines.append(f"| {r['model']} | {_cut(b)} | {_cut(c)} | {100 * (c - b):+.2f} pt |")
    if inputs:
        lines += ["", f"Models whose weights or inputs differed between the trees: "
                      f"{', '.join(inputs)}"]
    lines += ["", "## Compress time (current / baseline)", "", *_timing_lines(rows)]
    differ = {r["model"] for r in status + macs}
    same = timing([r for r in rows if r["model"] not in differ], "cpu_seconds_best")
    wall = timing([r for r in rows if r["model"] not in differ])
    if differ and same["n"]:
        lines += ["", "Without the models whose status or MACs cut differ "
                  f"({', '.join(sorted(differ))}: the trees do different work there), over "
                  f"{same['n']} models: total ratio "
                  f"{same['total_ratio']:.3f} (CPU, fastest) / {wall['total_ratio']:.3f} (wall, "
                  f"first call); median {same['median_ratio']:.3f} / {wall['median_ratio']:.3f}; "
                  f"geometric mean {same['geomean_ratio']:.3f} / {wall['geomean_ratio']:.3f}."]
    return "\n".join(lines) + "\n"


#: Record keys merged across rounds (the smallest value of each).
TIME_KEYS = ("seconds", "seconds_best", "cpu_seconds", "cpu_seconds_best")


def merge_rounds(files: list[Path]) -> dict[str, Any]:
    """Rounds of the same set (``--flip`` and not) as one comparison: per model and tree the
    smallest of each time over the rounds (a process is sometimes slow as a whole: the minimum
    over processes is the robust estimate); status and MACs cut from the first round, a
    ``rounds_disagree`` note where another round's differ."""
    datas = [load(f) for f in files]
    by_model = [{r["model"]: r for r in d["rows"]} for d in datas]
    rows = []
    for r in datas[0]["rows"]:
        others = [b[r["model"]] for b in by_model[1:] if r["model"] in b]
        row = {"model": r["model"], "order": r["order"], "rounds": 1 + len(others)}
        for t in TREES:
            rec = dict(r[t])
            for o in others:
                if (o[t]["status"], o[t].get("macs_cut")) != (rec["status"], rec.get("macs_cut")):
                    rec["rounds_disagree"] = True
                for k in TIME_KEYS:
                    if o[t].get(k) and (not rec.get(k) or o[t][k] < rec[k]):
                        rec[k] = o[t][k]
            row[t] = rec
        rows.append(row)
    meta = dict(datas[0]["meta"])
    meta["command"] = " + ".join(d["meta"].get("command", "?") for d in datas)
    return {"meta": meta, "rows": rows}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--set", choices=tuple(SET_FILES), default="default",
                   help="default: the timm set; torchvision (as fxprune bench prunability)")
    p.add_argument("--models", help="comma-separated subset of the set (default: all)")
    p.add_argument("--baseline", default="/work/wt/base", help="the older tree")
    p.add_argument("--current", default=str(HERE.parent.parent), help="the newer tree")
    p.add_argument("--out", help="the JSON file (default benchmarks/results/"
                   "compare_versions_<timm|torchvision>.json); the .md beside it")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per child")
    p.add_argument("--timeout", type=float, default=600, help="seconds per model and tree")
    p.add_argument("--repeat", type=int, default=3,
                   help="compress calls per model and tree (the first is reported; the fastest "
                   "too)")
    p.add_argument("--repeat-below", type=float, default=10,
                   help="repeat only when the first call took under this many seconds")
    p.add_argument("--flip", action="store_true",
                   help="the current tree first on the first model (a second round to another "
                   "--out, to cancel any order effect)")
    p.add_argument("--redo", action="store_true", help="rerun models already in --out")
    p.add_argument("--summary", action="store_true", help="only rewrite the .md from --out")
    p.add_argument("--merge", nargs="+", metavar="FILE.json",
                   help="with --summary: merge these rounds into --out's summary (per model "
                   "and tree the smallest time of each kind); writes --out's .md only")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    out = Path(args.out or HERE.parent / "results" /
               f"compare_versions_{SET_FILES[args.set]}.json")
    md = out.with_suffix(".md")
    title = f"fxprune: current against baseline, --set {args.set}"
    data = load(out)
    if args.summary:
        if args.merge:
            data = merge_rounds([Path(f) for f in args.merge])
            title += f" (best of {len(args.merge)} rounds)"
        md.write_text(summarize(data, title))
        return 0
    trees = {"baseline": Path(args.baseline).resolve(), "current": Path(args.current).resolve()}
    models, base_models = models_of(args.set, trees["current"], trees["baseline"])
    if models != base_models:
        print(f"note: the baseline's set differs: {sorted(set(models) ^ set(base_models))}; "
              "using the current tree's", flush=True)
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    data["meta"].update(
        command="python -P benchmarks/compare_versions.py " + " ".join(argv or sys.argv[1:]),
        set=args.set, ratio=args.ratio, threads=args.threads, timeout=args.timeout,
        host=f"{platform.node()} ({os.cpu_count()} CPUs), Python {platform.python_version()}",
        **{t: str(p) for t, p in trees.items()},
        **{f"{t}_commit": _git_head(p) for t, p in trees.items()})
    done = {r["model"] for r in data["rows"]}
    if args.redo:
        data["rows"] = [r for r in data["rows"] if r["model"] not in models]
        done = set()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compare_versions_") as tmp:
        for i, model in enumerate(models):
            if model in done:
                continue
            order = TREES if (len(data["rows"]) + args.flip) % 2 == 0 else TREES[::-1]
            row: dict[str, Any] = {"model": model, "order": list(order)}
            for t in order:
                row[t] = run_one(trees[t], model, args, Path(tmp))
            data["rows"].append(row)
            _write(out, data)
            md.write_text(summarize(data, title))
            b, c = row["baseline"], row["current"]
            ratio = (f"{c['seconds'] / b['seconds']:.3f}" if b.get("seconds")
                     and c.get("seconds") else "-")
            cpu = (f"{c['cpu_seconds_best'] / b['cpu_seconds_best']:.3f}"
                   if b.get("cpu_seconds_best") and c.get("cpu_seconds_best") else "-")
            print(f"[{i + 1}/{len(models)}] {model}: baseline {b['status']} "
                  f"{_cut(b.get('macs_cut'))} {b.get('seconds', 0):.2f}s | current "
                  f"{c['status']} {_cut(c.get('macs_cut'))} {c.get('seconds', 0):.2f}s | "
                  f"ratio {ratio} | CPU fastest {cpu}", flush=True)
    md.write_text(summarize(data, title))
    print(md.read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
