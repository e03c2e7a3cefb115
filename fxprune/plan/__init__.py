"""How much each layer loses: the one allocation plan (:mod:`.allocate`), the latency target
search (:mod:`.latency_target`), argument checks (:mod:`.checks`) and the pipeline that runs
them all (:func:`.compress.compress`).

Layer 6: imports costs, the core and below."""

from __future__ import annotations
