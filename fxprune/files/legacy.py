"""Names that files saved before the stage subpackages (fxprune 0.1, flat modules) refer to.

A saved graph names functions and module classes by their dotted path (for example
``fxprune.rewrite.scatter_channels`` or ``fxprune.stripes.forms.StripeConv2d``). When the package
moved into subpackages those paths changed; :func:`current_name` maps an old path to where the
same object lives now, so every file saved by an earlier release still loads. The mapping only
renames within fxprune: the result is checked by :mod:`fxprune.files.trust` like any other name.
"""

from __future__ import annotations

__all__ = ["MOVED_MODULES", "current_name"]

MOVED_MODULES: dict[str, str] = {
    "fxprune._perf": "fxprune.ir.perf",
    "fxprune._state": "fxprune.ir.state",
    "fxprune._unused": "fxprune.ir.unused",
    "fxprune.allocate": "fxprune.plan.allocate",
    "fxprune.analyze": "fxprune.core.analyze",
    "fxprune.api": "fxprune.plan.compress",
    "fxprune.channels": "fxprune.ir.channels",
    "fxprune.clr": "fxprune.core.clr",
    "fxprune.compat": "fxprune.core.shapes",
    "fxprune.count": "fxprune.costs.count",
    "fxprune.counts": "fxprune.core.size_reads",
    "fxprune.decompose": "fxprune.core.decompose",
    "fxprune.export": "fxprune.files.export",
    "fxprune.filecheck": "fxprune.files.filecheck",
    "fxprune.fuzz": "fxprune.tools.fuzz",
    "fxprune.graph_dot": "fxprune.tools.graph_dot",
    "fxprune.graph_nx": "fxprune.tools.graph_nx",
    "fxprune.groups": "fxprune.core.groups",
    "fxprune.hooks": "fxprune.ir.hooks",
    "fxprune.inputs": "fxprune.ir.inputs",
    "fxprune.inspect": "fxprune.tools.inspect",
    "fxprune.latency": "fxprune.costs.latency",
    "fxprune.latency.layers": "fxprune.costs.latency.layers",
    "fxprune.latency.measure": "fxprune.costs.latency.measure",
    "fxprune.latency.profile": "fxprune.costs.latency.profile",
    "fxprune.latency.table": "fxprune.costs.latency.table",
    "fxprune.latency.target": "fxprune.plan.latency_target",
    "fxprune.meta": "fxprune.ir.meta",
    "fxprune.paper_flops": "fxprune.costs.paper_flops",
    "fxprune.propctx": "fxprune.ir.propctx",
    "fxprune.rebuild": "fxprune.files.rebuild",
    "fxprune.rewrite": "fxprune.core.rewrite",
    "fxprune.select": "fxprune.core.select",
    "fxprune.serialize": "fxprune.files.serialize",
    "fxprune.trace": "fxprune.core.trace",
    "fxprune.trust": "fxprune.files.trust",
    "fxprune.verify": "fxprune.core.verify",
}


def current_name(path: str) -> str:
    """``path`` with its module part renamed if that module moved (longest match wins)."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        new = MOVED_MODULES.get(".".join(parts[:i]))
        if new is not None:
            return ".".join([new, *parts[i:]])
    return path
