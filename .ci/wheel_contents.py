"""Fail when a package folder of the checkout is missing from the wheel (python FILE.whl)."""

import sys
import zipfile
from pathlib import Path

root = Path(__file__).resolve().parents[1]
folders = {"fxprune": root / "fxprune", "fxprune/passes": root / "passes",
           "fxprune/models": root / "models"}
want = set()
for prefix, folder in folders.items():
    for init in folder.rglob("__init__.py"):
        rel = init.parent.relative_to(folder).as_posix()
        want.add(prefix if rel == "." else f"{prefix}/{rel}")
have = {Path(n).parent.as_posix() for n in zipfile.ZipFile(sys.argv[1]).namelist()
        if n.endswith("__init__.py")}
missing = sorted(want - have)
if missing:
    sys.exit(f"the wheel misses these packages: {', '.join(missing)} "
             "(add them to [tool.setuptools] packages in pyproject.toml)")
print(f"wheel carries all {len(want)} packages")
