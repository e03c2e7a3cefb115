"""FPGM as its authors run it (He et al., CVPR 2019; he-y/filter-pruning-geometric-median).

The selection is made once, at construction (on the random initialization when training
from scratch, on the pretrained weights otherwise), by the FPGM criterion (default ``"fpgm"``:
sum of Euclidean distances to the layer's other filters; ``criterion="fpgm_mix"`` is the
paper's two-stage FPGM-mix, any criterion works). Then:

- gradients of the pruned entries are zeroed before every optimizer step (the authors'
  ``do_grad_mask()`` between ``loss.backward()`` and ``optimizer.step()``), so momentum and
  Adam moments of pruned filters stay zero;
- the masks are re-applied after every step (``hold="step"``), which also covers optimizer
  state accumulated before the pruner was attached and decoupled weight decay.

The authors re-run the selection after every epoch, but with masked gradients it returns the
same filters (confirmed by the author in issues #9, #46, #56 of that repository: deliberate, to
isolate the criterion from SFP's regrowth), so ``epoch_end`` keeps the selection.
BatchNorm affine parameters of pruned channels still train under ``bn="keep"`` (the authors'
setting), which is why ``finalize`` folds their constant.
"""

from __future__ import annotations

__all__ = ["FPGM"]

import dataclasses

from fxprune.train.methods import (
    SFP_LOOP,
    Keep,
    Method,
    PrunerContext,
    register_method,
)


@register_method("fpgm")
class FPGM(Method):
    """Select once by FPGM, then keep the selection fixed (masked gradients and weights)."""

    name = "fpgm"
    default_criterion = "fpgm"
    hold = "step"
    mask_grads = True
    paper = dataclasses.replace(
        SFP_LOOP, source="he-y/filter-pruning-geometric-median scripts (SFP's loop, masked "
        "gradients)")

    def initial(self, pruner: PrunerContext) -> Keep:
        return pruner.select(pruner.scores(pruner.criterion))
