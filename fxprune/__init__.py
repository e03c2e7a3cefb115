"""fxprune: a torch.fx graph-transformation compiler for structured pruning of CNNs.

Pipeline: :func:`trace` → :func:`analyze` (channel groups) → :func:`score` (criteria in
``fxprune.passes``) → :func:`select` (keep-sets) → :func:`rewrite` (a new, smaller
GraphModule). :func:`compress` runs all of them; :func:`verify` checks the result against the
zero-channel oracle.
"""

from __future__ import annotations

__all__ = [
    "compress",
    "graft",
    "SoftPruner",
    "inspect",
    "measure_latency",
    "auto_round_to",
    "allocate",
    "search_allocation",
    "AllocationSearch",
    "AllocationPlan",
    "AnalysisOptions",
    "LatencyOptions",
    "VerifyOptions",
    "Optim",
    "Schedule",
    "Checkpointing",
    "recalibrate_bn",
    "reconstruct",
    "prune_iteratively",
    "GroupScoring",
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

from fxprune import checkout as _checkout  # noqa: F401  (maps passes/, models/ in a clone)
from fxprune.core.analyze import Analysis, analyze
from fxprune.core.recalibrate import recalibrate_bn
from fxprune.core.reconstruct import reconstruct
from fxprune.core.rewrite import rewrite
from fxprune.core.select import select
from fxprune.core.trace import trace
from fxprune.core.verify import VerifyReport, verify
from fxprune.costs.count import count
from fxprune.costs.latency import auto_round_to, measure_latency
from fxprune.costs.paper_flops import paper_flops, paper_flops_cut
from fxprune.criteria import GroupScoring, list_criteria, register_criterion
from fxprune.errors import (
    FxPruneError,
    InputError,
    RewriteError,
    TraceFailure,
    UnsupportedOpError,
    VerificationError,
)
from fxprune.files.serialize import apply_manifest, load, save
from fxprune.ir.meta import Group, KeepSet, ParamSlice
from fxprune.plan.allocate import AllocationPlan, allocate
from fxprune.plan.compress import compress, score
from fxprune.plan.graft import graft
from fxprune.plan.options import AnalysisOptions, LatencyOptions, VerifyOptions
from fxprune.plan.search import AllocationSearch, search_allocation
from fxprune.rules import Rule, list_rules, register_rule
from fxprune.tools.inspect import inspect
from fxprune.train import Checkpointing, Optim, Schedule, SoftPruner
from fxprune.train.gradual import prune_iteratively
from fxprune.version import __version__
