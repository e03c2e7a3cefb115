"""Tools over the compiler: :mod:`.inspect` (what would be pruned), graph views
(:mod:`.graph_nx`, :mod:`.graph_dot`) and the fuzzer (:mod:`.fuzz`).

Layer 10."""

from __future__ import annotations
