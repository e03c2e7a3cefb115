"""MFP: meta-attribute-based filter pruning (He, Liu, Zhu, Yang; arXiv 1904.03961, TNNLS 2022
"Filter Pruning by Switching to Neighboring CNNs with Good Attributes").

[INF] No code and no full text of the paper were reachable (algorithms.md §5); this is the
spec's implementable reading, built from the abstract and the authors' shared SFP/FPGM code:

- a pool of criteria (default: ``l1``, ``l2`` and FPGM with L2, L1 and cosine distances);
- SFP's schedule (§3): before the first epoch and every ``interval`` epochs, each criterion
  yields a mask at the allocated ratios (a "neighbouring CNN", the current weights times that
  mask); the **meta-attribute** of every neighbour is evaluated and the best mask is applied;
  gradients are not masked (``hold="epoch"``), so filters can come back;
- ``attribute``: pluggable; default ``"loss"``: the loss of the masked network on the held-out
  batches of ``data=`` (lower is better). ``"accuracy"`` or a callable ``model -> float``
  (lower is better) replace it. ``data`` must be a validation split of the training data,
  never the test set;
- ``switch="global"`` (default): one criterion for all layers, ``len(pool)`` evaluations per
  step. ``switch="layer"``: starting from the global choice, each group in graph order tries
  every other criterion's keep-set for that group alone and takes it when the attribute
  improves (greedy coordinate descent, at most ``len(pool) + groups * (len(pool) - 1)``
  evaluations per step; identical candidates are not re-evaluated).
"""

from __future__ import annotations

__all__ = ["MFP", "DEFAULT_POOL"]

from typing import Any

from fxprune.criteria import get_criterion
from fxprune.errors import InputError
from fxprune.train.methods import (
    SFP_LOOP,
    Keep,
    Method,
    PrunerContext,
    register_method,
)
from fxprune.train.methods._attribute import check_data, make_attribute

DEFAULT_POOL = ("l1", "l2", "fpgm", "fpgm_l1", "fpgm_cosine")


def _name(c: Any) -> str:
    return c if isinstance(c, str) else getattr(c, "__name__", repr(c))


@register_method("mfp")
class MFP(Method):
    """Switch to the criterion whose mask has the best meta-attribute, every pruning step."""

    name = "mfp"
    # [INF] no code was reachable: the SFP loop the method is built on (algorithms.md)
    paper = SFP_LOOP
    default_criterion = None
    hold = "epoch"
    needs_data = True
    options = {"pool": DEFAULT_POOL, "switch": "global", "attribute": "loss",
               "eval_batches": None, "loss_fn": None}

    def prepare(self, pruner: PrunerContext) -> None:
        o = self.opts
        if pruner.criterion is not None:
            raise InputError("method 'mfp' chooses among pool=[...] criteria; criterion= is not "
                             "used. Hint: SoftPruner(..., method='mfp', pool=['l2', 'fpgm']).")
        pool = o["pool"]
        if isinstance(pool, str) or not isinstance(pool, (list, tuple)) or len(pool) < 2:
            raise InputError(f"mfp pool must be a list of at least two criteria, got {pool!r}")
        self.pool = [get_criterion(c) for c in pool]
        if o["switch"] not in ("global", "layer"):
            raise InputError(f"mfp switch must be 'global' or 'layer', got {o['switch']!r}")
        if not callable(o["attribute"]):
            check_data(self.name, pruner.data)
        self.attribute = make_attribute(o["attribute"], pruner.data, loss_fn=o["loss_fn"],
                                        eval_batches=o["eval_batches"])
        self.choice: dict[int, int] = {}  # group id -> index into pool
        self.history: list[dict[str, Any]] = []

    def initial(self, pruner: PrunerContext) -> Keep:
        return self._switch(pruner)

    def update(self, pruner: PrunerContext) -> Keep:
        return self._switch(pruner)

    def _switch(self, pruner: PrunerContext) -> Keep:
        keeps = [pruner.select(pruner.scores(c)) for c in self.pool]
        values: list[float] = []
        for i, k in enumerate(keeps):
            same = next((j for j in range(i) if keeps[j] == k), None)
            values.append(values[same] if same is not None else pruner.evaluate(k, self.attribute))
        best = min(range(len(values)), key=lambda i: (values[i], i))
        current, value = dict(keeps[best]), values[best]
        choice = {g: best for g in current}
        if self.opts["switch"] == "layer":
            for g in sorted(current):
                for i, k in enumerate(keeps):
                    if k[g] == current[g]:
                        continue
                    v = pruner.evaluate({**current, g: k[g]}, self.attribute)
                    if v < value:
                        current[g], value, choice[g] = k[g], v, i
        self.choice = choice
        self.history.append({"epoch": pruner.epoch, "values": values, "best": best,
                             "value": value})
        return current

    @property
    def chosen(self) -> str | dict[int, str]:
        """The criterion applied last: one name (global switch) or one per group (layer)."""
        names = {g: _name(self.pool[i].name) for g, i in self.choice.items()}
        if self.opts["switch"] == "global":
            return next(iter(names.values()), "")
        return names

    def state_dict(self) -> dict[str, Any]:
        return {"choice": dict(self.choice), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.choice = {int(g): int(i) for g, i in state["choice"].items()}
        self.history = list(state["history"])
