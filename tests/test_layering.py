"""The package's layers: a module imports only from its own subpackage or from a lower layer,
never a private name (or private module) of another subpackage, and no two modules import each
other in a circle. Module-level, function-local and TYPE_CHECKING imports all count: the test
reads the source (ast), it does not import it. The layers are documented in
docs/architecture.md; change both together."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"fxprune": ROOT / "fxprune", "fxprune.passes": ROOT / "passes",
           "fxprune.models": ROOT / "models"}

# Bottom first. Units in one row may not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("fxprune.errors", "fxprune.version", "fxprune.checkout"),
    ("fxprune.ir",),
    ("fxprune.rules", "fxprune.criteria"),
    ("fxprune.passes", "fxprune.models"),
    ("fxprune.core",),
    ("fxprune.costs",),
    ("fxprune.plan",),
    ("fxprune.files",),
    ("fxprune.stripes",),
    ("fxprune.train",),
    ("fxprune.tools",),
    ("fxprune.bench",),
    ("fxprune.cli",),
    ("fxprune",),  # the facade: __init__, __main__, testing, data
]
LEVEL = {unit: i for i, row in enumerate(LAYERS) for unit in row}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            name = ".".join((pkg, *rel))
            if pkg == "fxprune" and rel and rel[0] in ("passes", "models"):
                continue
            mods[name] = path
    return mods


MODULES = _modules()


def unit_of(module: str) -> str:
    for unit in sorted(LEVEL, key=len, reverse=True):
        if module == unit or module.startswith(unit + "."):
            return unit
    raise AssertionError(f"{module} is in no layer: add its subpackage to LAYERS")


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every fxprune import in the file."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names
                    if a.name.split(".")[0] == "fxprune"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fxprune":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES
                           else (target, a.name, node.lineno))
    return out


def _edges() -> list[tuple[str, str, str | None, int]]:
    return [(name, target, what, line) for name, path in MODULES.items()
            for target, what, line in _imports(name, path)]


def test_every_module_is_in_a_layer() -> None:
    for name in MODULES:
        unit_of(name)


def test_imports_go_down_the_layers() -> None:
    bad = []
    for src, target, _what, line in _edges():
        a, b = unit_of(src), unit_of(target)
        if a != b and LEVEL[b] >= LEVEL[a]:
            bad.append(f"{MODULES[src].relative_to(ROOT)}:{line}: {src} ({a}, layer {LEVEL[a]}) "
                       f"imports {target} ({b}, layer {LEVEL[b]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_subpackage() -> None:
    bad = []
    for src, target, what, line in _edges():
        if unit_of(src) == unit_of(target):
            continue
        parts = target.split(".")[1:] + ([what] if what else [])
        if any(p.startswith("_") and not p.startswith("__") for p in parts):
            bad.append(f"{MODULES[src].relative_to(ROOT)}:{line}: {target}"
                       f"{'.' + what if what else ''}")
    assert not bad, "private names imported from another subpackage:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    g = nx.DiGraph()
    for src, target, _what, _line in _edges():
        if target in MODULES and target != src and not target.startswith(src + "."):
            g.add_edge(src, target)
    cycles = list(nx.simple_cycles(g, length_bound=6))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles[:20])


@pytest.mark.parametrize("unit", sorted(LEVEL))
def test_layer_exists(unit: str) -> None:
    assert any(unit_of(m) == unit for m in MODULES), f"{unit} has no module"
