"""fxprune: a torch.fx graph-transformation compiler for structured pruning of CNNs.

Pipeline: :func:`trace` → :func:`analyze` (channel groups) → :func:`score` (criteria in
``fxprune.passes``) → :func:`select` (keep-sets) → :func:`rewrite` (a new, smaller
GraphModule). :func:`compress` runs all of them; :func:`verify` checks the result against the
zero-channel oracle.
"""

from __future__ import annotations

__all__ = [
    "compress",
    "SoftPruner",
    "inspect",
    "measure_latency",
    "auto_round_to",
    "allocate",
    "trace",
    "analyze",
    "score",
    "select",
    "rewrite",
    "verify",
    "count",
    "paper_flops",
    "paper_flops_cut",
    "save",
    "load",
    "apply_manifest",
    "register_rule",
    "register_criterion",
    "list_rules",
    "list_criteria",
    "Rule",
    "Group",
    "ParamSlice",
    "KeepSet",
    "Analysis",
    "VerifyReport",
    "FxPruneError",
    "TraceFailure",
    "UnsupportedOpError",
    "RewriteError",
    "VerificationError",
    "InputError",
    "__version__",
]

__version__ = "0.1.0"

from .allocate import allocate
from .analyze import Analysis, analyze
from .api import compress, score
from .count import count
from .criteria import list_criteria, register_criterion
from .errors import (
    FxPruneError,
    InputError,
    RewriteError,
    TraceFailure,
    UnsupportedOpError,
    VerificationError,
)
from .inspect import inspect
from .latency import auto_round_to, measure_latency
from .meta import Group, KeepSet, ParamSlice
from .paper_flops import paper_flops, paper_flops_cut
from .rewrite import rewrite
from .rules import Rule, list_rules, register_rule
from .select import select
from .serialize import apply_manifest, load, save
from .trace import trace
from .train import SoftPruner
from .verify import VerifyReport, verify
