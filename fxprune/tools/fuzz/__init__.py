"""Random CNN generator and fuzz driver: every random model must prune *exactly*.

A seed gives a JSON-able *spec* (:func:`random_spec`): a stem, a body of nested blocks and a
head. :func:`build` turns a spec into an ``nn.Module`` and an example input; it derives every
input width itself and repairs what a spec cannot know (group divisibility, strides on tiny
maps, a residual body's output width), so any sub-spec builds too. That is what makes
:func:`shrink` (greedy test-case reduction) possible.

Blocks: conv(+BN+act, strides, bias), depthwise (channel multiplier) and grouped convs,
functional convs on own parameters, transposed convs, residuals (identity, projection or
zero-padded "option A" shortcuts; ``+``/``torch.add``/``.add``/``+=``), concats of branches of
different widths (optionally with the input, DenseNet style), channel splits
(``torch.split``/``chunk``/``x[:, a:b]``) re-merged by cat (in any order) or add, SE gates,
ECA gates, CBAM-style and 1-channel spatial gates, selective-kernel attention
(stack/softmax/sum), star and max of branches, layer scale, channels-last MLPs and token
MLPs (flatten → transpose → Linear), channel shuffle, space-to-depth, pooling, upsampling,
hourglass (pool → body → upsample → add), ops without a channel rule (roll/flip over
channels: their channels must be frozen), standalone BatchNorm and activations, and nested
sequences. Heads: global pool → linear, pool → flatten → MLP, a 1x1-conv map, optionally a
second (feature) output. No LayerNorm/GroupNorm: every case must verify ``exact``.

Example::

    >>> from fxprune.tools.fuzz import random_model, run_case
    >>> model, x = random_model(7)
    >>> run_case(7).ok
    True
"""

from __future__ import annotations

__all__ = [
    "random_spec",
    "build",
    "random_model",
    "case_config",
    "check_spec",
    "run_case",
    "run_spec",
    "shrink",
    "campaign",
    "CaseResult",
    "CRITERIA",
]

from fxprune.tools.fuzz.blocks import CRITERIA
from fxprune.tools.fuzz.build import build, random_model
from fxprune.tools.fuzz.cases import CaseResult, case_config, check_spec, run_case, run_spec
from fxprune.tools.fuzz.shrink import campaign, shrink
from fxprune.tools.fuzz.specs import random_spec
