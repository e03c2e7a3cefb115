"""Issue 21's table and checks from the committed recipe rows.

Reads ``benchmarks/results/recipes/accuracy_cpu.json`` (seeds used while developing) and
``benchmarks/results/recipes_unseen/accuracy_cpu.json`` (a seed used for nothing else), and the
rows of preset ``cpu-lr0.02`` beside them (``accuracy_cpu-lr0.02.json``: the same, fine-tuned
at lr 0.02; their methods are labelled ``... @ lr 0.02``), and prints, per model, method and MACs target, the test accuracy as mean ± std over the developing
seeds (only rows present for every one of them) and the unseen seed's value; then each claim
of issue 21 evaluated on both:

- like for like: fxprune's best group criterion (``l2+group``) >= ``tp-group`` on resnet20_b
  at 0.5 and 0.25 MACs;
- the recipe (``l2+group+kd+recon @ lr 0.02``; ``l2+group+kd+recon`` at lr 0.01 until
  2026-12-08's second change, ``l2+group+kd`` before) >= Torch-Pruning's best row (any
  ``tp-*`` row, at either rate) + 0.3 pt at 0.25 MACs on resnet20_b;
- the recipe within 0.3 pt of the dense model at 0.5 MACs on resnet20 and resnet20_b.

    python benchmarks/recipes_report.py [--seeds 0 1 2] [--unseen 5]
    # other folders under benchmarks/results, another recommended recipe:
    python benchmarks/recipes_report.py --dev DIR --unseen-dir DIR2 --recipe l2+group+kd
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results"
LR2 = " @ lr 0.02"  # the label of preset cpu-lr0.02's rows
RECIPE, GROUP = "l2+group+kd+recon" + LR2, "l2+group"
# the presets read from each folder, and the label their method rows get (dense rows: the
# first file's; every preset of a folder shares the folder's dense checkpoints)
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
            if r["method"] == "dense" and label:
                continue
            method = r["method"] + ("" if r["method"] == "dense" else label)
            out.setdefault((r["model"], method, r["target"]), {})[r["seed"]] = 100 * r["acc"]
    return out


def mean(accs: dict[int, float], seeds: list[int]) -> float | None:
    v = [accs[s] for s in seeds if s in accs]
    return statistics.mean(v) if len(v) == len(seeds) else None


def checks(get, methods: list[str], recipe: str = RECIPE
           ) -> list[tuple[str, float | None, bool | None]]:
    """(claim, margin in pt, holds) for each claim; ``get(model, method, target)`` -> acc;
    ``methods``: every method of the table (Torch-Pruning's best row is over its ``tp-*``)."""
    out = []

    def claim(text: str, a: float | None, b: float | None, need: float) -> None:
        m = None if a is None or b is None else a - b
        out.append((text, m, None if m is None else m >= need))

    for t in (0.5, 0.25):
        claim(f"resnet20_b {t}: l2+group >= tp-group", get("resnet20_b", GROUP, t),
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
    p.add_argument("--unseen", type=int, default=5)
    p.add_argument("--dev", default="recipes", help="folder under benchmarks/results")
    p.add_argument("--unseen-dir", default="recipes_unseen")
    p.add_argument("--recipe", default=RECIPE, help=f"the recommended recipe (default {RECIPE})")
    args = p.parse_args()
    dev = load(ROOT / args.dev)
    unseen = load(ROOT / args.unseen_dir)
    methods = sorted({k[1] for k in (*dev, *unseen)})
    from tabulate import tabulate

    rows = []
    for key in sorted(set(dev) | set(unseen), key=lambda k: (k[0], -(k[2] or 2), k[1])):
        v = [dev.get(key, {}).get(s) for s in args.seeds]
        have = [a for a in v if a is not None]
        sd = statistics.stdev(have) if len(have) > 1 else 0.0
        rows.append([*key[:2], "dense" if key[2] is None else key[2],
                     (f"{statistics.mean(have):.2f} ± {sd:.2f}" if len(have) > 1
                      else f"{have[0]:.2f}" if have else "–"), len(have),
                     f"{unseen[key][args.unseen]:.2f}" if args.unseen in unseen.get(key, {})
                     else "–"])
    print(tabulate(rows, ["model", "method", "MACs", f"test acc % seeds {args.seeds}",
                          "seeds done", f"seed {args.unseen}"], tablefmt="github"))
    for name, get in ((f"seeds {args.seeds} (mean)",
                       lambda m, meth, t: mean(dev.get((m, meth, t), {}), args.seeds)),
                      (f"unseen seed {args.unseen}",
                       lambda m, meth, t: unseen.get((m, meth, t), {}).get(args.unseen))):
        print(f"\n{name}:")
        for text, margin, ok in checks(get, methods, args.recipe):
            verdict = "not measured yet" if ok is None else ("holds" if ok else "fails")
            print(f"- {text}: {verdict}" + ("" if margin is None else f" ({margin:+.2f} pt)"))


if __name__ == "__main__":
    main()
