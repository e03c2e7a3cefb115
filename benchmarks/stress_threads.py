"""Concurrent use under load (issue 24): many rounds of threads pruning mixed timm models.

    python benchmarks/stress_threads.py --rounds 50 --threads 8 \
        --out benchmarks/results/stress_threads.json

Every round starts ``--threads`` jobs at once (a barrier). A job creates a fresh timm model
(``--models``, each in turn) and runs :func:`fxprune.testing.checked_compress` on it: compress with
its oracle, an independent ``fxprune.verify``, the user's model and inputs unchanged, fewer
parameters and MACs by ``fxprune.count``, and a save/load round trip with identical outputs.
Every fourth job instead reads one shared model and its pruned result (trace, analyze, count,
verify, save, load), which the other threads use at the same time. After the last round a
single-threaded compress must still work and ``nn.Module`` must be unpatched.

It also measures the cost of :data:`fxprune.ir.threads.TRACE_LOCK`: the time threads waited for
it and held it during the run, and, without contention (alone: ``--lock-only``), tracing with
the lock and the per-thread patches against torch.fx's plain ``Tracer.trace`` (alternating;
medians and minima).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import timm
import torch
import torch.fx as fx

import fxprune
import fxprune.ir.threads as fxthreads
from fxprune.core.trace import FxPruneTracer
from fxprune.testing import checked_compress, read_only_checks

MODELS = ["resnet18", "mobilenetv3_small_050", "efficientnet_b0", "regnetx_002",
          "convnext_atto", "vit_tiny_patch16_224", "densenet121", "resnet50"]


class TimedLock:
    """An RLock that adds up how long threads waited for it and held it (outermost)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.waited = self.held = 0.0
        self.acquired = 0
        self._local = threading.local()

    def __enter__(self) -> None:
        t = time.perf_counter()
        self.lock.acquire()
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            now = time.perf_counter()
            self.waited += now - t
            self.acquired += 1
            self._local.since = now
        self._local.depth = depth + 1

    def __exit__(self, *exc: Any) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            self.held += time.perf_counter() - self._local.since
        self.lock.release()


def _model(name: str) -> torch.nn.Module:
    kw = {"img_size": 64} if name.startswith("vit_") else {}
    return timm.create_model(name, **kw).eval()


def _job(k: int, models: list[str], size: int, shared: tuple) -> dict[str, Any]:
    # jobs 3, 7, 11... read the shared model; the others take the models in turn
    name = "shared:" + models[0] if k % 4 == 3 else models[(k - k // 4) % len(models)]
    t = time.perf_counter()
    try:
        if k % 4 == 3:
            status = read_only_checks(*shared)
        else:
            x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(k))
            status = checked_compress(_model(name), x, expect="")["status"]
        return {"job": k, "model": name, "ok": True, "status": status.split(":")[0],
                "seconds": round(time.perf_counter() - t, 3)}
    except Exception as e:  # noqa: BLE001 - every failure is recorded
        return {"job": k, "model": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:500],
                "traceback": traceback.format_exc()[-2000:]}


def _lock_cost(models: list[str], size: int, repeat: int) -> dict[str, Any]:
    """Uncontended tracing: fxprune's locked trace against torch.fx's plain one."""
    out = {}
    for name in models:
        m = _model(name)
        timings: dict[str, list[float]] = {"locked": [], "plain": []}
        for i in range(2 * repeat + 2):
            kind = "locked" if i % 2 else "plain"
            t = time.perf_counter()
            if kind == "locked":
                FxPruneTracer().trace(m)
            else:
                fx.Tracer.trace(FxPruneTracer(), m)
            if i >= 2:  # the first of each is a warm-up
                timings[kind].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e3 for k, v in timings.items()}
        low = {k: min(v) * 1e3 for k, v in timings.items()}
        out[name] = {"locked_ms": round(med["locked"], 3), "plain_ms": round(med["plain"], 3),
                     "ratio": round(med["locked"] / med["plain"], 3),
                     "ratio_of_minima": round(low["locked"] / low["plain"], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--size", type=int, default=64, help="input height and width")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--lock-repeat", type=int, default=60,
                    help="alternating traces per kind, without contention")
    ap.add_argument("--lock-only", action="store_true",
                    help="only the uncontended trace timing (no rounds)")
    ap.add_argument("--out", default="benchmarks/results/stress_threads.json")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    warnings.simplefilter("ignore")
    if args.lock_only:
        result = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
                  "uncontended_trace": _lock_cost(args.models[:3], args.size, args.lock_repeat)}
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return
    lock = TimedLock()
    fxthreads.TRACE_LOCK = lock  # type: ignore[assignment]
    x = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    shared_model = _model(args.models[0])
    shared = (shared_model, fxprune.compress(shared_model, 0.5, example_inputs=x), x)
    start = threading.Barrier(args.threads)
    jobs, rounds = [], []
    t0 = time.perf_counter()
    for r in range(args.rounds):
        def run(k: int) -> dict[str, Any]:
            start.wait(timeout=600)
            return _job(k, args.models, args.size, shared)

        t = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            got = list(pool.map(run, range(r * args.threads, (r + 1) * args.threads)))
        jobs += got
        rounds.append(round(time.perf_counter() - t, 3))
        print(f"round {r + 1}/{args.rounds}: {sum(j['ok'] for j in got)}/{len(got)} ok in "
              f"{rounds[-1]:.1f}s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    try:
        single = checked_compress(_model(args.models[0]), x, expect="")["status"]
    except Exception as e:  # noqa: BLE001 - recorded
        single = f"FAILED {type(e).__name__}: {e}"[:300]
    unpatched = (torch.nn.Module.__call__ is fx._symbolic_trace._orig_module_call
                 and torch.nn.Module.__getattr__ is fx._symbolic_trace._orig_module_getattr)
    failures = [j for j in jobs if not j["ok"]]
    result = {
        "command": "python " + " ".join(sys.argv),
        "rounds": args.rounds, "threads": args.threads, "models": args.models,
        "input": [2, 3, args.size, args.size], "torch_threads": args.torch_threads,
        "jobs": len(jobs), "failures": len(failures), "failed_jobs": failures[:20],
        "statuses": {s: sum(j.get("status") == s for j in jobs)
                     for s in sorted({j.get("status") for j in jobs if j["ok"]})},
        "jobs_per_model": {m: sum(j["model"] == m for j in jobs)
                           for m in sorted({j["model"] for j in jobs})},
        "single_threaded_after": single, "nn_module_unpatched_after": unpatched,
        "wall_s": round(wall, 1), "round_s_median": statistics.median(rounds),
        "trace_lock": {"acquired": lock.acquired, "waited_s": round(lock.waited, 2),
                       "held_s": round(lock.held, 2),
                       "waited_per_job_ms": round(1e3 * lock.waited / max(1, len(jobs)), 1),
                       "thread_seconds": round(wall * args.threads, 1)},
        "uncontended_trace": _lock_cost(args.models[:3], args.size, args.lock_repeat),
        "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "failed_jobs"}, indent=1))
    sys.exit(1 if failures or not unpatched or single.startswith("FAILED") else 0)


if __name__ == "__main__":
    main()
