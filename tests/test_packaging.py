"""Packaging cannot forget a part: every package folder of the checkout is listed in
pyproject.toml (CI also builds the wheel and checks its contents: .ci/wheel_contents.py, then
installs it non-editable and runs the CLI from a fresh venv: .ci/wheel_smoke.sh)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_in_the_wheel_list() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    dirs = conf["package-dir"]
    want = set()
    for pkg, folder in (("fxprune", "fxprune"), ("fxprune.passes", "passes"),
                        ("fxprune.models", "models")):
        assert dirs.get(pkg, pkg.replace(".", "/")) == folder
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            want.add(".".join((pkg, *rel)))
    assert not want - listed, f"add to [tool.setuptools] packages: {sorted(want - listed)}"
    assert not listed - want, f"listed but not a package folder: {sorted(listed - want)}"


def test_version_has_one_source() -> None:
    import fxprune
    from fxprune.version import __version__

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in conf["project"]["dynamic"]
    assert conf["tool"]["setuptools"]["dynamic"]["version"] == \
        {"attr": "fxprune.version.__version__"}
    assert fxprune.__version__ == __version__


def test_a_clone_imports_passes_and_models_without_an_install() -> None:
    """``python -m fxprune`` run in a clone's root imports the clone's fxprune (the working
    directory comes first on sys.path), where passes/ and models/ sit beside fxprune/: they
    still import as fxprune.passes and fxprune.models, and the CLI builds. The editable
    install's finder is removed first, as on a machine that installed the wheel."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if 'editable' not in getattr(f, '__module__', '')]\n"
        "sys.path_hooks[:] = [h for h in sys.path_hooks\n"
        "                     if 'editable' not in getattr(h, '__module__', '')]\n"
        "sys.path_importer_cache.clear()\n"
        "import fxprune, fxprune.passes, fxprune.models, fxprune.passes.l1\n"
        "from fxprune.cli.app import build_parser\n"
        "build_parser()\n"
        "print(fxprune.__file__, fxprune.passes.__file__, fxprune.models.__file__,\n"
        "      len(fxprune.list_criteria()))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    init, passes, models, n = r.stdout.split()
    assert Path(init) == ROOT / "fxprune" / "__init__.py"
    assert Path(passes) == ROOT / "passes" / "__init__.py"
    assert Path(models) == ROOT / "models" / "__init__.py"
    assert int(n) >= 5
