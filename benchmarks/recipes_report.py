"""Issue 21's table and checks from the committed recipe rows.

Reads ``benchmarks/results/recipes/`` (seeds used while developing),
``benchmarks/results/recipes_unseen/`` (seed 5: unseen until the lr 0.01 recipe's report) and
``benchmarks/results/recipes_unseen6/`` (seed 6: run once, after every choice of 2026-12-08
was made). In each folder it reads preset ``cpu``'s rows (``accuracy_cpu.json``) and preset
``cpu-lr0.02``'s beside them (``accuracy_cpu-lr0.02.json``: the same, fine-tuned at lr 0.02;
their methods are labelled ``... @ lr 0.02``). It prints, per model, method and MACs target,
the test accuracy as mean ± std over the developing seeds (only rows present for every one of
them) and each unseen seed's value; then each claim of issue 21 evaluated on each:

- like for like: fxprune's best group criterion (``l2+group``) >= ``tp-group`` on resnet20_b
  at 0.5 and 0.25 MACs;
- the recipe (``l2+group+kd+recon @ lr 0.02``; ``l2+group+kd+recon`` at lr 0.01 until
  2026-12-08's second change, ``l2+group+kd`` before) >= Torch-Pruning's best row (any
  ``tp-*`` row, at either rate) + 0.3 pt at 0.25 MACs on resnet20_b;
- the recipe within 0.3 pt of the dense model at 0.5 MACs on resnet20 and resnet20_b.

    python benchmarks/recipes_report.py [--seeds 0 1 2] \
        [--unseen recipes_unseen:5 recipes_unseen6:6]
    # other folders under benchmarks/results, another recommended recipe:
    python benchmarks/recipes_report.py --dev DIR --unseen DIR2:SEED --recipe l2+group+kd
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results"
LR2 = " @ lr 0.02"  # the label of preset cpu-lr0.02's rows
RECIPE, GROUP = "l2+group+kd+recon" + LR2, "l2+group"
# the presets read from each folder, and the label their method rows get (the dense rows of
# a folder are one checkpoint per model and seed, whichever preset evaluated it)
SOURCES = (("accuracy_cpu.json", ""), ("accuracy_cpu-lr0.02.json", LR2))


def load(folder: Path) -> dict[tuple, dict[int, float]]:
    """(model, method, target) -> {seed: test accuracy %} of the finished rows of SOURCES."""
    out: dict[tuple, dict[int, float]] = {}
    for name, label in SOURCES:
        path = folder / name
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["rows"]:
            if r.get("acc") is None or "error" in r or r.get("split", "test") != "test":
                continue
            method = r["method"] + ("" if r["method"] == "dense" else label)
            seen = out.setdefault((r["model"], method, r["target"]), {})
            if method == "dense" and r["seed"] in seen:  # the same checkpoint, evaluated again
                assert abs(seen[r["seed"]] - 100 * r["acc"]) < 1e-6, (path, r["key"])
                continue
            seen[r["seed"]] = 100 * r["acc"]
    return out


def mean(accs: dict[int, float], seeds: list[int]) -> float | None:
    v = [accs[s] for s in seeds if s in accs]
    return statistics.mean(v) if len(v) == len(seeds) else None


def checks(get, methods: list[str], recipe: str = RECIPE, group: str = GROUP
           ) -> list[tuple[str, float | None, bool | None]]:
    """(claim, margin in pt, holds) for each claim; ``get(model, method, target)`` -> acc;
    ``methods``: every method of the table (Torch-Pruning's best row is over its ``tp-*``)."""
    out = []

    def claim(text: str, a: float | None, b: float | None, need: float) -> None:
        m = None if a is None or b is None else a - b
        out.append((text, m, None if m is None else m >= need))

    for t in (0.5, 0.25):
        claim(f"resnet20_b {t}: {group} >= tp-group", get("resnet20_b", group, t),
              get("resnet20_b", "tp-group", t), 0.0)
    tp = [get("resnet20_b", m, 0.25) for m in methods if m.startswith("tp-")]
    best = max((a for a in tp if a is not None), default=None)
    claim("resnet20_b 0.25: recipe >= best Torch-Pruning row + 0.3",
          get("resnet20_b", recipe, 0.25), best, 0.3)
    for model in ("resnet20", "resnet20_b"):
        claim(f"{model} 0.5: recipe within 0.3 of dense", get(model, recipe, 0.5),
              get(model, "dense", None), -0.3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dev", default="recipes", help="folder under benchmarks/results")
    p.add_argument("--unseen", nargs="+", default=["recipes_unseen:5", "recipes_unseen6:6"],
                   metavar="FOLDER:SEED", help="folders of unseen seeds, each with its seed")
    p.add_argument("--recipe", default=RECIPE, help=f"the recommended recipe (default {RECIPE})")
    p.add_argument("--group", default=GROUP,
                   help=f"fxprune's group criterion row (default {GROUP})")
    args = p.parse_args()
    dev = load(ROOT / args.dev)
    unseen = [(int(seed), load(ROOT / folder))
              for folder, _, seed in (u.rpartition(":") for u in args.unseen)]
    keys = set(dev).union(*(set(u) for _, u in unseen))
    methods = sorted({k[1] for k in keys})
    from tabulate import tabulate

    rows = []
    for key in sorted(keys, key=lambda k: (k[0], -(k[2] or 2), k[1])):
        v = [dev.get(key, {}).get(s) for s in args.seeds]
        have = [a for a in v if a is not None]
        sd = statistics.stdev(have) if len(have) > 1 else 0.0
        rows.append([*key[:2], "dense" if key[2] is None else key[2],
                     (f"{statistics.mean(have):.2f} ± {sd:.2f}" if len(have) > 1
                      else f"{have[0]:.2f}" if have else "–"), len(have),
                     *(f"{u[key][seed]:.2f}" if seed in u.get(key, {}) else "–"
                       for seed, u in unseen)])
    print(tabulate(rows, ["model", "method", "MACs", f"test acc % seeds {args.seeds}",
                          "seeds done", *(f"seed {seed}" for seed, _ in unseen)],
                   tablefmt="github"))
    gets = [(f"seeds {args.seeds} (mean)",
             lambda m, meth, t: mean(dev.get((m, meth, t), {}), args.seeds))]
    gets += [(f"unseen seed {seed}",
              lambda m, meth, t, seed=seed, u=u: u.get((m, meth, t), {}).get(seed))
             for seed, u in unseen]
    for name, get in gets:
        print(f"\n{name}:")
        for text, margin, ok in checks(get, methods, args.recipe, args.group):
            verdict = "not measured yet" if ok is None else ("holds" if ok else "fails")
            print(f"- {text}: {verdict}" + ("" if margin is None else f" ({margin:+.2f} pt)"))


if __name__ == "__main__":
    main()
