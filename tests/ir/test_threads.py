"""Concurrent use (issue 24): threads and processes compressing, verifying, counting, saving
and loading at once, every result checked by the oracle, and the process still working after.

torch.fx patches ``nn.Module`` while it traces; before fxprune.ir.threads, a second thread's
modules ran through the first thread's tracer and the process stayed broken afterwards.
"""

from __future__ import annotations

import multiprocessing
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.fx as fx
from thread_jobs import case, job, process_job, single_threaded_compress_works

import fxprune


def test_threads_compress_verify_count_save_load():
    shared_model, x, _ = case(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shared = (shared_model, fxprune.compress(shared_model, 0.5, example_inputs=x), x)
    before = {k: v.clone() for k, v in shared_model.state_dict().items()}
    start = threading.Barrier(8)

    def run(k: int) -> str:
        start.wait(timeout=60)  # all eight at once
        return job(k, shared)

    for r in range(3):
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(run, range(8 * r, 8 * r + 8)))
        assert all(s.startswith(("exact", "approximate")) for s in results), results
    after = shared_model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(not m.training for m in shared_model.modules())
    assert torch.nn.Module.__call__ is fx._symbolic_trace._orig_module_call
    assert torch.nn.Module.__getattr__ is fx._symbolic_trace._orig_module_getattr
    single_threaded_compress_works()


def test_processes_spawned_compress_at_once():
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(process_job, range(2))
    flat = [s for r in results for s in r]
    assert len(flat) == 8 and all(s.startswith(("exact", "approximate")) for s in flat), flat
    single_threaded_compress_works()
