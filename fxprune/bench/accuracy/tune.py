"""``--tune``: choose the recipes' settings on the validation split.

A grid of :class:`~fxprune.bench.accuracy.presets.Preset` fields (``distill``,
``temperature``, ``gradual_steps``, ``group_scoring``, ``recal_batches``, ...) is run as one
preset per candidate with ``split="val"``: every accuracy is measured on the validation split
carved from the training data (its batches after the ones that score masks), the test split is
never read, and the dense checkpoints of ``out`` are reused. The best candidate per (model,
method, target) is the one with the highest mean validation accuracy over the seeds; set it
as the preset's default (presets.py) before the reported run.
"""

from __future__ import annotations

__all__ = ["parse_grid", "candidates", "tune", "best"]

import dataclasses
import itertools
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fxprune.bench.accuracy.presets import Preset
from fxprune.errors import InputError

_TUNABLE = ("distill", "temperature", "gradual_steps", "group_scoring", "recal_batches", "lr",
             "recipe_allocation", "search_candidates", "search_spread", "soft_clip",
             "soft_settle", "fppmo_tau", "recon_batches", "feature_distill")


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["distill=0.3,0.5", "temperature=2,4"]`` -> ``{"distill": [0.3, 0.5], ...}``, each
    value of its field's type."""
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in _TUNABLE or not values.strip():
            raise InputError(f"--tune {spec!r}: expected FIELD=V1,V2,... with FIELD one of "
                             f"{', '.join(_TUNABLE)}")
        kind = type(fields[name].default)
        try:
            grid[name] = [_value(kind, v.strip()) for v in values.split(",") if v.strip()]
        except ValueError as e:
            raise InputError(f"--tune {spec!r}: {e}") from None
    return grid


def _value(kind: type, text: str) -> Any:
    """``text`` as the field's type; an int field also takes a float (``soft_settle=0.75``:
    a share of the epochs)."""
    if kind is int and not text.lstrip("-").isdigit():
        return float(text)
    return kind(text)


def candidates(preset: Preset, grid: dict[str, list[Any]]) -> list[Preset]:
    """One preset per point of the grid, named ``<preset>-tune-<field><value>...``."""
    names = list(grid)
    out = []
    for values in itertools.product(*(grid[n] for n in names)):
        slug = "-".join(f"{n}{v:g}" if isinstance(v, float) else f"{n}{v}".replace("/", "_")
                        for n, v in zip(names, values))
        out.append(dataclasses.replace(preset, name=f"{preset.name}-tune-{slug}",
                                       **dict(zip(names, values))))
    return out


def tune(preset: Preset, out: Path, grid: dict[str, list[Any]], *, workers: int = 1,
         threads: int = 1, command: str | None = None,
         on_row: Callable[[dict[str, Any], int, int], None] | None = None
         ) -> list[tuple[Preset, dict[str, Any]]]:
    """Run every candidate of ``grid`` on the validation split; returns (candidate, document)
    pairs (the documents are also in ``out/accuracy_<candidate>.json``)."""
    from fxprune.bench.accuracy.runner import run

    return [(c, run(c, out, workers=workers, threads=threads, command=command, on_row=on_row,
                    split="val")) for c in candidates(preset, grid)]


def best(results: list[tuple[Preset, dict[str, Any]]], fields: Sequence[str]
         ) -> list[dict[str, Any]]:
    """Per (model, method, target): the mean validation accuracy of every candidate, best
    first."""
    table: dict[tuple, list[tuple[float, dict[str, Any]]]] = {}
    for cand, doc in results:
        accs: dict[tuple, list[float]] = {}
        for r in doc.get("rows", []):
            if r.get("method") != "dense" and "error" not in r and r.get("acc") is not None:
                accs.setdefault((r["model"], r["method"], r["target"]), []).append(r["acc"])
        for key, v in accs.items():
            table.setdefault(key, []).append(
                (statistics.mean(v), {f: getattr(cand, f) for f in fields}))
    return [{"model": m, "method": meth, "target": t,
             "candidates": sorted(c, key=lambda e: -e[0])}
            for (m, meth, t), c in table.items()]
