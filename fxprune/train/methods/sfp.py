"""SFP: Soft Filter Pruning (He et al., IJCAI 2018), and ``"soft"``: its schedule with any
criterion.

Before the first epoch and then every ``interval`` epochs, every group re-selects the units
with the lowest scores of the *current* weights (SFP: the L2 norm of each filter,
``torch.norm(w.view(N, -1), 2, 1)`` in the authors' code) and zeroes them. Gradients are not
masked and, with the default ``hold="epoch"`` (the authors apply the mask once per epoch, after
it), zeroed filters keep training during the next epoch and can come back. Momentum buffers are
left as they are, as in the authors' code.

``method="soft", criterion="fpgm"`` (or any registered criterion, or a function) runs the same
schedule with another criterion; ``method="sfp"`` takes ``criterion=`` too.
"""

from __future__ import annotations

__all__ = ["SFP"]

from fxprune.train.methods import SFP_LOOP, Keep, Method, PrunerContext, register_method


@register_method("sfp", "soft")
class SFP(Method):
    """Re-select by the criterion (default L2) every ``interval`` epochs; no gradient mask."""

    name = "sfp"
    default_criterion = "l2"
    hold = "epoch"
    paper = SFP_LOOP

    def initial(self, pruner: PrunerContext) -> Keep:
        return pruner.select(pruner.scores(pruner.criterion))

    def update(self, pruner: PrunerContext) -> Keep:
        return pruner.select(pruner.scores(pruner.criterion))
