"""Source-checkout layout: ``passes/`` and ``models/`` beside ``fxprune/``.

Importing this module (``fxprune/__init__`` does, first) maps them as ``fxprune.passes`` and
``fxprune.models`` when Python imports fxprune straight from a clone. Nothing here runs where
fxprune is installed (the wheel puts both folders inside the package).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


class CheckoutFinder:
    """Finds ``fxprune.passes`` and ``fxprune.models`` in a source checkout.

    The wheel installs the top-level ``passes/`` and ``models/`` folders as ``fxprune.passes``
    and ``fxprune.models``. Where Python imports ``fxprune`` straight from a clone (``python -m
    fxprune`` run in the clone's root puts it first on ``sys.path``), those two folders sit
    beside ``fxprune/``, not in it; this finder maps them. It sits last on ``sys.meta_path``, so
    an installed or editable layout wins, and it maps only folders of this package's own clone.
    """

    def __init__(self, roots: dict[str, Path]) -> None:
        self.roots = roots

    def find_spec(self, fullname, path=None, target=None):
        folder = self.roots.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


def map_checkout_folders() -> None:
    here = Path(__file__).resolve().parent
    clone = here.parent
    if not (clone / "pyproject.toml").is_file():
        return  # an installed package: passes/ and models/ are inside it
    roots = {f"fxprune.{name}": clone / name for name in ("passes", "models")
             if not (here / name).is_dir() and (clone / name / "__init__.py").is_file()}
    if roots and not any(isinstance(f, CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(CheckoutFinder(roots))


map_checkout_folders()
