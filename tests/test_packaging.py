"""Packaging cannot forget a part: every package folder of the checkout is listed in
pyproject.toml (CI also builds the wheel and checks its contents: .ci/wheel_contents.py, then
installs it non-editable and runs the CLI from a fresh venv: .ci/wheel_smoke.sh)."""

from __future__ import annotations

import tomllib
from pathlib import Path

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
