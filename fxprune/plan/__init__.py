"""How much each layer loses: the one allocation plan (:mod:`.allocate`: ``AllocationPlan``),
its policies (:mod:`.policies`), the MACs/params target search (:mod:`.target_search`), the
latency target (:mod:`.latency_target`, :mod:`.latency_greedy`), argument checks
(:mod:`.checks`), the option groups (:mod:`.options`) and the pipeline that runs them all
(:func:`.compress.compress`).

Layer 6: imports costs, the core and below."""

from __future__ import annotations
