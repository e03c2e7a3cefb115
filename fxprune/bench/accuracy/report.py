"""The accuracy benchmark's markdown table: mean ± std over seeds per (model, method, target)."""

from __future__ import annotations

__all__ = ["summarize", "markdown", "write_markdown"]

import statistics
from pathlib import Path
from typing import Any

from fxprune.bench.accuracy.presets import Preset


def _ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    v = [x * scale for x in values if x is not None]
    if not v:
        return "–"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.{digits}f} ± {sd:.{digits}f}"


def _mean(values: list[Any], fmt: str, missing: str = "–") -> str:
    v = [x for x in values if x is not None]
    return format(statistics.mean(v), fmt) if v else missing


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, tool, method, target, option), in first-seen order."""
    ok = [r for r in rows if "error" not in r]
    dense = {(r["model"], r["seed"]): r["acc"] for r in ok
             if r["method"] == "dense" and r.get("acc") is not None}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault((r["model"], r["tool"], r["method"], r["target"], r.get("alpha")),
                          []).append(r)
    out = []
    for (model, tool, method, target, alpha), rs in groups.items():
        deltas = [r["acc"] - dense[(model, r["seed"])] for r in rs
                  if (model, r["seed"]) in dense and method != "dense"]
        out.append({"model": model, "tool": tool, "method": method, "target": target,
                    "alpha": alpha, "seeds": len(rs),
                    "acc": [r["acc"] for r in rs],
                    "acc_oneshot": [r.get("acc_oneshot") for r in rs],
                    "acc_oneshot_recal": [r.get("acc_oneshot_recal") for r in rs],
                    "delta": deltas,
                    "macs_kept": [r["macs_kept"] for r in rs],
                    "params_kept": [r["params_kept"] for r in rs],
                    "paper_flops_cut": [r.get("paper_flops_cut") for r in rs],
                    "speedup": [r.get("speedup") for r in rs],
                    "seconds": [r.get("seconds") for r in rs]})
    return out


def _target(s: dict[str, Any]) -> str:
    if s["method"] == "dense":
        return "1"
    if s["target"] is None:
        return f"learned (α={s['alpha']:g})" if s["alpha"] is not None else "learned"
    return f"{s['target']:g}"


def markdown(doc: dict[str, Any]) -> str:
    from tabulate import tabulate

    meta = doc.get("meta", {})
    p = meta.get("preset", {})
    rows = doc.get("rows", [])
    summary = summarize(rows)
    order = {"dense": 0, "fxprune": 1, "torch-pruning": 2}
    summary.sort(key=lambda s: (s["model"], -1 if s["method"] == "dense" else 0,
                                s["target"] if s["target"] is not None else 2.0,
                                order.get(s["tool"], 3)))
    table = [[s["model"], s["tool"], s["method"], _target(s), _ms(s["acc_oneshot"]),
              _ms(s["acc_oneshot_recal"]), _ms(s["acc"]), _ms(s["delta"]) if s["delta"] else "–",
              _mean(s["macs_kept"], ".3f"), _mean(s["params_kept"], ".3f"),
              _mean(s["paper_flops_cut"], ".1%", "n/a"), _mean(s["speedup"], ".2f") + "×"
              if any(v is not None for v in s["speedup"]) else "–",
              _mean(s["seconds"], ".0f"), s["seeds"]] for s in summary]
    head = ["model", "tool", "method", "MACs target", "acc one-shot %",
            "one-shot + BN recal %", "acc %", "Δ vs dense",
            "MACs kept", "params kept", "paper FLOPs↓", "CPU speed-up (b{})".format(
                p.get("latency_batch", "?")), "s / run", "seeds"]
    failed = [r for r in rows if "error" in r]
    lines = [f"# Accuracy benchmark, preset `{p.get('name', '?')}`", ""]
    if meta.get("split") == "val":
        lines += ["**Validation split (`--tune`): every accuracy below is measured on the "
                  "validation split carved from the training data, for choosing settings; "
                  "none is a test accuracy.**", ""]
    lines += [f"- command: `{meta.get('command')}`",
              f"- date: {meta.get('date')}; machine: {meta.get('machine')}; "
              f"{meta.get('workers')} workers × {meta.get('threads_per_worker')} thread(s); "
              f"torch {meta.get('torch')}, torch-pruning {meta.get('torch_pruning')}",
              f"- data: {p.get('dataset')}, {p.get('subset') or 'all'} training images; test set "
              "only for the reported accuracy; MFP/FPPMO score masks on "
              f"{p.get('eval_batches')} validation batches carved from train",
              f"- dense: {p.get('dense_epochs')} epochs at lr {p.get('dense_lr')}; every method: "
              f"{p.get('epochs')} epochs at lr {p.get('lr')} (cosine, SGD Nesterov, wd 5e-4, "
              f"batch {p.get('batch')}, autocast {p.get('amp') or 'off'}); soft rows: BatchNorm "
              f"recalibration on {p.get('bn_recalibration')} batches after each mask update, "
              "except the `(paper)` rows: their authors' step schedule, weight decay, no "
              "recalibration, no clip, no settle epoch, residual scatter (docs/accuracy.md says "
              "per row what ran)",
              "- paper FLOPs↓: the papers' convention at the row's uniform keep rate under the "
              "row's own residual policy; n/a without one (SWP, Torch-Pruning)",
              f"- one-shot + BN recal: BatchNorm statistics recomputed on "
              f"{p.get('recal_batches')} training batches after the cut, no training",
              f"- recipes `BASE+PART...`: group = scoring `{p.get('group_scoring')}`, recal = "
              f"BN recalibrated ({p.get('recal_batches')} batches) after each cut, kd = "
              f"distilled from the dense model (alpha {p.get('distill')}, T "
              f"{p.get('temperature')}), gradual = {p.get('gradual_steps')} cuts over the same "
              "epochs",
              f"- {p.get('note', '')}", "",
              tabulate(table, head, tablefmt="github", disable_numparse=True), ""]
    if failed:
        lines += [f"{len(failed)} row(s) failed:", ""]
        lines += [f"- `{r['key']}`: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def write_markdown(out: Path, preset: Preset, doc: dict[str, Any]) -> Path:
    path = out / f"accuracy_{preset.name}.md"
    path.write_text(markdown(doc))
    return path
