"""Files: save/load without pickling (:mod:`.serialize`), what a file may name
(:mod:`.trust`), a file checked against itself (:mod:`.filecheck`), rebuilding modules
(:mod:`.rebuild`) and ONNX export (:mod:`.export`).

Layer 7."""

from __future__ import annotations
