"""The prunability benchmark's report: summary, markdown and JSON, and merging a rerun.

One row per model: ``{"model", "family", "fxprune": record, "torch_pruning": record}``, a
record being what a child process of :mod:`fxprune.bench.prunability` wrote (status, verdict, stage,
seconds, MACs/params before and after, errors).
"""

from __future__ import annotations

__all__ = ["summarize", "markdown", "write_report", "merge_rows", "pct", "sec", "cell"]

import json
import statistics
import time
from pathlib import Path
from typing import Any


def pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "-"


def sec(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def _err(v: Any) -> str:
    return f"{v:.1e}" if isinstance(v, (int, float)) else "-"


def cell(text: Any, n: int = 110) -> str:
    s = str(text or "").replace("|", "\\|").replace("\n", " ").strip()
    return s if len(s) <= n else s[: n - 1] + "…"


def _ok(rec: dict[str, Any] | None) -> bool:
    return bool(rec) and rec.get("status") in ("pass", "approximate")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _counts(recs: list[dict[str, Any]], key: str, kinds: tuple[str, ...]) -> dict[str, int]:
    out = {k: sum(1 for r in recs if r.get(key) == k) for k in kinds}
    for r in recs:  # kinds not named above (a new verdict) are counted too
        k = r.get(key)
        if k is not None and k not in out:
            out[k] = out.get(k, 0) + 1
    return out


def summarize(rows: list[dict[str, Any]], against: bool) -> dict[str, Any]:
    """Pass counts per tool, per-family counts and median MACs cut, the median time ratio."""
    fx = [r["fxprune"] for r in rows]
    out: dict[str, Any] = {
        "models": len(rows),
        "fxprune": {s: sum(1 for r in fx if r.get("status") == s)
                    for s in ("pass", "approximate", "fail")},
        "fxprune_fail_stages": {},
    }
    for r in fx:
        if r.get("status") == "fail":
            st = r.get("stage") or "?"
            out["fxprune_fail_stages"][st] = out["fxprune_fail_stages"].get(st, 0) + 1
    fams: dict[str, dict[str, Any]] = {}
    cuts: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        f = fams.setdefault(r["family"], {"models": 0, "pass": 0, "approximate": 0, "fail": 0,
                                          "tp_pass": 0})
        fx_cut, tp_cut = cuts.setdefault(r["family"], ([], []))
        f["models"] += 1
        f[r["fxprune"].get("status", "fail")] += 1
        if _ok(r["fxprune"]) and r["fxprune"].get("macs_cut") is not None:
            fx_cut.append(r["fxprune"]["macs_cut"])
        tp = r.get("torch_pruning") or {}
        if tp.get("status") == "pass":
            f["tp_pass"] += 1
            if tp.get("macs_cut") is not None:
                tp_cut.append(tp["macs_cut"])
    for fam, (fx_cut, tp_cut) in cuts.items():
        fams[fam]["macs_cut"] = _median(fx_cut)
        if against:
            fams[fam]["tp_macs_cut"] = _median(tp_cut)
    out["families"] = dict(sorted(fams.items()))
    if against:
        tp = [r.get("torch_pruning") or {} for r in rows]
        out["torch_pruning"] = {s: sum(1 for r in tp if r.get("status") == s)
                                for s in ("pass", "fail")}
        out["torch_pruning_verdicts"] = _counts(
            [t for t in tp if t.get("status") == "pass"], "verdict",
            ("exact", "approximate", "unverified"))
        ratios = [t["seconds"] / f["seconds"] for f, t in zip(fx, tp)
                  if _ok(f) and t.get("status") == "pass" and f.get("seconds")
                  and t.get("seconds") is not None]
        out["both_pass"] = len(ratios)
        out["median_time_ratio_tp_over_fxprune"] = _median(ratios)
        both = [(f, t) for f, t in zip(fx, tp) if _ok(f) and t.get("status") == "pass"]
        out["median_seconds"] = {"fxprune": _median([f["seconds"] for f, _ in both]),
                                 "torch_pruning": _median([t["seconds"] for _, t in both])}
    return out


def _versions_line(meta: dict[str, Any], against: bool) -> str:
    libs = [f"torch {meta['torch']}"]
    libs += [f"{k} {meta[k]}" for k in ("timm", "torchvision", "transformers", "ultralytics")
             if meta.get(k)]
    if against:
        libs.append(f"torch-pruning {meta.get('torch_pruning')}")
    return ", ".join(libs)


def _header(meta: dict[str, Any], summary: dict[str, Any], against: bool) -> list[str]:
    lines = [f"# fxprune prunability (ratio {meta['ratio']})", "", f"`{meta['command']}`", ""]
    for rerun in meta.get("reruns", ()):
        lines += [f"Rows of {', '.join(rerun['models'])} rerun by `{rerun['command']}` "
                  f"({rerun['date']}).", ""]
    lines += [f"{_versions_line(meta, against)}; {meta['cpus']} CPUs; timeout "
              f"{meta['timeout']:g} s, memory cap {meta['mem_gb']:g} GiB; random weights, one "
              f"batch of the model's input size; wall time {meta['wall_seconds'] / 60:.1f} min.",
              ""]
    s, n = summary["fxprune"], summary["models"]
    lines.append(f"**fxprune: {s['pass']} pass (exact oracle), {s['approximate']} approximate, "
                 f"{s['fail']} fail of {n} models.**")
    if summary["fxprune_fail_stages"]:
        stages = ", ".join(f"{k} {v}" for k, v in sorted(summary["fxprune_fail_stages"].items()))
        lines.append(f"fxprune failures by stage: {stages}.")
    if against:
        t = summary["torch_pruning"]
        verdicts = ", ".join(f"{v} {k}" for k, v in summary["torch_pruning_verdicts"].items())
        lines.append(f"**Torch-Pruning: {t['pass']} pass, {t['fail']} fail of {n} models** "
                     f"(pass = runs, same output shape, MACs fell, not rejected by fxprune's "
                     f"oracle; verdicts of the passes: {verdicts}).")
        ratio = summary["median_time_ratio_tp_over_fxprune"]
        if ratio is not None:
            med = summary["median_seconds"]
            lines.append(f"Median pruning time ratio Torch-Pruning / fxprune over the "
                         f"{summary['both_pass']} models both prune: **{ratio:.2f}x** "
                         f"(medians {med['fxprune']:.2f} s vs {med['torch_pruning']:.2f} s).")
    return lines + [""]


def _tp_cells(t: dict[str, Any]) -> tuple[list[str], str]:
    status = t.get("status", "-")
    if status == "fail" and t.get("stage"):
        status = f"fail ({t['stage']})"
    note = ""
    if t.get("status") == "fail" and t.get("error"):
        note = "TP: " + str(t["error"])
    elif t.get("verdict_note"):
        note = f"TP {t.get('verdict')}: {t['verdict_note']}"
    return [status, pct(t.get("macs_cut")), _verdict(t), sec(t.get("seconds"))], note


def _verdict(rec: dict[str, Any]) -> str:
    v = rec.get("verdict") or "-"
    return f"{v} (vacuous)" if rec.get("vacuous") else v


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The report as markdown: header, one row per model, one row per family."""
    against = "torch_pruning" in summary
    lines = _header(meta, summary, against)
    head = ["model", "family", "fxprune", "MACs cut", "verdict", "stage", "prune s",
            "params cut", "oracle max err"]
    if against:
        head += ["TP", "TP MACs cut", "TP verdict", "TP s"]
    head.append("error / note (first line)")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        f = r["fxprune"]
        cells = [r["model"], r["family"], f.get("status", "fail"), pct(f.get("macs_cut")),
                 _verdict(f), f.get("stage") or "", sec(f.get("seconds")),
                 pct(f.get("params_cut")), _err(f.get("max_abs_err"))]
        err = f.get("error") or (f"(MACs not counted: {f['count_error']})"
                                 if f.get("count_error") else "")
        if f.get("vacuous"):
            err = (err + " / " if err else "") + f"vacuous: {f['vacuous']}"
        if against:
            tp_cells, note = _tp_cells(r.get("torch_pruning") or {})
            cells += tp_cells
            err = (err + " / " if err and note else err) + note
        cells.append(cell(err))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "## Per family", ""]
    fh = ["family", "models", "fxprune pass", "approximate", "fail", "MACs cut (median)"]
    fh += ["TP pass", "TP MACs cut (median)"] if against else []
    lines += ["| " + " | ".join(fh) + " |", "|" + "---|" * len(fh)]
    for fam, c in summary["families"].items():
        cells = [fam, c["models"], c["pass"], c["approximate"], c["fail"], pct(c["macs_cut"])]
        if against:
            cells += [c["tp_pass"], pct(c.get("tp_macs_cut"))]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    tp_note = ("Torch-Pruning's model is checked by the same oracle, its kept channels "
               "located by value in the original's weights (`unverified`: it cut channels the "
               "oracle cannot follow, see the note). " if against else "")
    lines += ["", "Status: `pass` = the zero-channel oracle is exact; `approximate` = exact up "
              "to channel statistics (LayerNorm/GroupNorm over channels, weight "
              "standardization), structure verified; `fail` = the stage named failed. "
              f"{tp_note}`(vacuous)`: the outputs compared are (near) constant, so the check "
              "proves little. MACs and params by `fxprune.count` (batch 1); medians over the "
              "models that pass.", ""]
    unzeroed = [f"{r['model']} ({', '.join(r['fxprune']['unzeroed'])})" for r in rows
                if r["fxprune"].get("unzeroed")]
    if unzeroed:
        lines += ["All-zero initial weights drawn from N(0, 0.02²) instead (else the outputs "
                  f"are constant and the oracle vacuous): {'; '.join(unzeroed)}.", ""]
    return "\n".join(lines)


def write_report(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]],
                 stem: str = "prunability") -> dict[str, Any]:
    """Write ``<stem>.json`` and ``<stem>.md`` to ``out``; returns the summary."""
    against = bool(meta.get("against"))
    summary = summarize(rows, against)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "models": rows}, indent=1, default=str))
    (out / f"{stem}.md").write_text(markdown(meta, rows, summary))
    return summary


def merge_rows(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]
               ) -> dict[str, Any]:
    """Merge ``rows`` into the report ``path`` (a ``.json`` written by :func:`write_report`;
    created if missing): rows of the same model are replaced in place (a row rerun without
    Torch-Pruning keeps its old Torch-Pruning record), new ones appended, and the rerun is
    noted in the meta. Rewrites the ``.json`` and the ``.md`` beside it; returns
    the summary."""
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"--update needs a .json report path, got '{path}'")
    if not path.exists():
        return write_report(path.parent, meta, rows, stem=path.stem)
    old = json.loads(path.read_text())
    merged = list(old["models"])
    where = {r["model"]: i for i, r in enumerate(merged)}
    for r in rows:
        if r["model"] not in where:
            merged.append(r)
            continue
        old_row = merged[where[r["model"]]]
        if "torch_pruning" in old_row and "torch_pruning" not in r:
            r = {**r, "torch_pruning": old_row["torch_pruning"]}  # a rerun without --against
        merged[where[r["model"]]] = r
    new_meta = dict(old["meta"])
    if meta.get("against") and not new_meta.get("against"):
        new_meta["against"] = meta["against"]
    new_meta["reruns"] = [*new_meta.get("reruns", ()), {
        "command": meta["command"], "date": meta.get("date") or time.strftime("%Y-%m-%d"),
        "models": [r["model"] for r in rows], "wall_seconds": meta.get("wall_seconds")}]
    return write_report(path.parent, new_meta, merged, stem=path.stem)
