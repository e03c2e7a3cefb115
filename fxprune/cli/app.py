"""The ``fxprune`` command line (also ``python -m fxprune``).

Subcommands: ``inspect``, ``compress``, ``train``, ``verify``, ``graph``, ``plot``,
``list-criteria``, ``list-rules`` and ``bench``. A MODEL is a timm model name (``resnet50``),
``tv:NAME`` or a torchvision model name, ``cifar:NAME`` or a name from :mod:`fxprune.models`,
``package.module:factory`` (called without arguments), or a path to a file saved with
:func:`fxprune.save` (opened as plain data: no code from the file runs). Any other ``.pt``
file (a whole pickled module) is unpickled only with ``--trust-pickle``: unpickling can run
any code the file holds. Models are created with
random weights from a fixed seed (``--seed``), so the same MODEL gives the same weights in
``compress`` and ``verify``.

Exit codes: 0 success, 1 failure, 2 usage error or bad input, 3 unsupported model (strict mode).
"""

from __future__ import annotations

__all__ = ["main", "build_parser", "load_model", "parse_shape"]

import argparse
import difflib
import importlib
import json
import logging
import os
import re
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fxprune.errors import InputError, UnsupportedOpError
from fxprune.ir import meta

logger = logging.getLogger("fxprune.cli")

_FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin")
_CIFAR_INPUT = (1, 3, 32, 32)


# --- models and inputs ------------------------------------------------------------------------

_SHAPE = re.compile(r"^\d+(?:[,x]\d+)*$")


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``) into a shape tuple.

    Raises:
        InputError: the text is not a list of positive integers.
    """
    compact = text.replace(" ", "") if isinstance(text, str) else ""
    shape = tuple(int(p) for p in re.split("[,x]", compact)) if _SHAPE.match(compact) else ()
    if not shape or any(d < 1 for d in shape):
        raise InputError(f"--input must be a comma-separated shape of positive integers such "
                         f"as 1,3,224,224, got {text!r}")
    return shape


def _shape_arg(text: str) -> str:
    """argparse type of --input: a usage error (exit 2) for a malformed shape."""
    try:
        parse_shape(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _load_file(path: Path, trust_pickle: bool = False
               ) -> tuple[nn.Module, tuple[int, ...] | None]:
    from fxprune.files import filecheck
    from fxprune.files.serialize import NotAnFxpruneFile, from_payload, read

    if not path.is_file():
        raise InputError(f"no such model file: {path}")
    try:
        payload = read(path)
    except NotAnFxpruneFile as e:
        if not trust_pickle:
            raise InputError(
                f"{e.reason}. Opening it would mean unpickling it, and unpickling can run any "
                "code the file holds; fxprune does that only with --trust-pickle (use it for "
                "files you trust).") from e
        return _unpickle(path), None
    model = from_payload(payload, path)
    shapes = filecheck.example_shapes(payload)
    return model, (shapes[0][0] if shapes else None)


def _unpickle(path: Path) -> nn.Module:
    logger.info("%s is not an fxprune.save file; unpickling it (--trust-pickle)", path)
    try:
        obj = torch.load(str(path), weights_only=False, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - reported as bad input
        raise InputError(f"cannot load {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, nn.Module):
        raise InputError(
            f"{path} holds a {type(obj).__name__}, not a model. Hint: save whole modules "
            "(torch.save(model, path)) or pruned models with fxprune.save(pruned, path); a "
            "state_dict alone cannot be pruned.")
    return obj


def _factory(spec: str) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # `fxprune ... mymodels:build` from the project folder
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"cannot import module '{mod_name}' for MODEL '{spec}': {e}. Hint: "
                         "set PYTHONPATH to the folder that holds it.") from e
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        raise InputError(f"module '{mod_name}' has no callable '{fn_name}' (MODEL '{spec}')")
    model = fn()
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec}() returned a {type(model).__name__}, not an nn.Module")
    return model


def _torchvision(name: str) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        close = difflib.get_close_matches(name, torchvision.models.list_models(), n=3)
        raise InputError(f"unknown torchvision model '{name}'"
                         + (f"; did you mean {', '.join(close)}?" if close else ""))
    return torchvision.models.get_model(name, weights=None)


def _cifar(name: str) -> nn.Module:
    from fxprune import models

    if name not in models.list_models():
        raise InputError(f"unknown fxprune.models model '{name}'. Available: "
                         f"{', '.join(models.list_models())}")
    return models.create_model(name)


def load_model(spec: str, trust_pickle: bool = False
               ) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Build the model a MODEL argument names; returns ``(model, default input shape)``.

    The default input shape is None when the model's own default applies (timm's input size,
    else 1x3x224x224). A file is opened with :func:`fxprune.files.serialize.read` (plain data, no
    code runs); any other file is unpickled only with ``trust_pickle=True`` (``--trust-pickle``).

    Raises:
        InputError: the name or file cannot be resolved.
    """
    path = Path(spec)
    if spec.lower().endswith(_FILE_SUFFIXES) or path.is_file():
        return _load_file(path, trust_pickle)
    if spec.startswith("tv:"):
        return _torchvision(spec[3:]), None
    if spec.startswith("cifar:"):
        return _cifar(spec[6:]), _CIFAR_INPUT
    if spec.startswith("timm:"):
        spec = spec[5:]
    elif ":" in spec:
        return _factory(spec), None
    import timm

    if timm.is_model(spec):
        return timm.create_model(spec, pretrained=False), None
    import torchvision

    if spec in torchvision.models.list_models():
        return _torchvision(spec), None
    from fxprune import models

    if spec in models.list_models():
        return _cifar(spec), _CIFAR_INPUT
    close = difflib.get_close_matches(spec, timm.list_models() + models.list_models(), n=3)
    raise InputError(
        f"unknown model '{spec}'" + (f"; did you mean {', '.join(close)}?" if close else "")
        + ". MODEL is a timm name, tv:NAME, cifar:NAME, package.module:factory or a .pt file.")


def _inputs(model: nn.Module, args: argparse.Namespace, default: tuple[int, ...] | None
            ) -> tuple[torch.Tensor, ...]:
    from fxprune.core.trace import default_example_inputs

    shape = parse_shape(args.input) if getattr(args, "input", None) else default
    if shape is None:
        return tuple(default_example_inputs(model))
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(shape, generator=gen)
    p = next((t for t in model.parameters() if t.is_floating_point()), None)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    return (x,)


def _model_and_inputs(args: argparse.Namespace, spec: str
                      ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(args.seed)
    model, default = load_model(spec, getattr(args, "trust_pickle", False))
    return model, _inputs(model, args, default)


# --- progress ---------------------------------------------------------------------------------

class _Progress:
    """A tqdm bar per pipeline stage on stderr (no-op when quiet or tqdm is missing)."""

    def __init__(self, enabled: bool):
        self.bar: Any = None
        self.stage: str | None = None
        self.tqdm: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            self.tqdm = tqdm

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.tqdm is None:
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = self.tqdm(total=max(total, 1), desc=f"fxprune {stage}", file=sys.stderr,
                                 leave=False, dynamic_ncols=True)
        self.bar.total = max(total, 1)
        self.bar.n = min(done, self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.close()
            self.bar = None
        self.stage = None


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:g}"


def _change(before: float, after: float) -> str:
    return f"{100.0 * (after - before) / before:+.1f}%" if before else "-"


# --- subcommands ------------------------------------------------------------------------------

def _cmd_inspect(args: argparse.Namespace) -> int:
    from fxprune.tools.inspect import inspect

    model, x = _model_and_inputs(args, args.model)
    paper = _paper_flops(args, model, x) if args.paper_flops else None
    report = inspect(model, x, ratio=args.ratio, criterion=args.criterion,
                     ignore=args.ignore or None, round_to=args.round_to, latency=args.latency,
                     batch=args.batch, threads=args.threads)
    if args.format == "json":
        out = report.to_json()
        if paper is not None:
            out["paper_flops"] = {"keep": paper.keep, "conv_macs": paper.base,
                                  "conv_macs_pruned": paper.pruned, "cut": paper.cut}
        print(json.dumps(out, indent=2))
    elif args.format == "md":
        print(report.to_markdown(), end="")
        if paper is not None:
            print(f"\n{_paper_line(paper)}")
    else:
        print(report.to_text(), end="")
        if paper is not None:
            print(f"\n{_paper_line(paper)}")
    return 0


def _paper_flops(args: argparse.Namespace, model: Any, x: Any) -> Any:
    """The SFP/FPGM FLOPs convention at the uniform keep rate 1 - ratio (--paper-flops)."""
    from fxprune.costs.paper_flops import paper_flops

    if args.ratio is None or getattr(args, "allocation", "uniform") != "uniform":
        raise InputError("--paper-flops needs --ratio with the uniform allocation: the papers' "
                         "FLOPs convention is defined for one rate applied to every layer")
    return paper_flops(model, 1.0 - args.ratio, example_inputs=x, ignore=args.ignore or None)


def _paper_line(paper: Any) -> str:
    return (f"papers' FLOPs convention (SFP/FPGM: conv MACs only, every conv at keep "
            f"{paper.keep:g}, residual-output convs scattered): {_human(paper.base)} -> "
            f"{_human(paper.pruned)} conv MACs, {paper.cut:.2%} cut; measured MACs count "
            "N - floor(N x ratio) kept filters and every layer")


def _count_rows(before: Any, after: Any, paper: Any) -> list[list[Any]]:
    rows: list[list[Any]] = [
        ["params", _human(before.params), _human(after.params),
         _change(before.params, after.params)],
        ["MACs", _human(before.macs), _human(after.macs), _change(before.macs, after.macs)],
    ]
    if paper is not None:
        rows += [["conv MACs (measured)", _human(before.conv_macs), _human(after.conv_macs),
                  _change(before.conv_macs, after.conv_macs)],
                 [f"conv MACs, papers' convention (keep {paper.keep:g})", _human(paper.base),
                  _human(paper.pruned), _change(paper.base, paper.pruned)]]
    return rows


def _compress_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"allocation": args.allocation, "residual": args.residual,
                              "clr_lambda": args.clr_lambda, "clr_cost": args.clr_cost,
                              "attention": args.attention}
    if args.target_flops is not None:
        kwargs["target_flops"] = args.target_flops
    if args.target_params is not None:
        kwargs["target_params"] = args.target_params
    if args.target_latency is not None:
        kwargs.update(target_latency=args.target_latency, batch=args.batch,
                      threads=args.threads)
        for k in ("allocation", "clr_lambda", "clr_cost"):
            kwargs.pop(k)
    return kwargs


def _cmd_compress(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from fxprune.costs.count import count
    from fxprune.costs.latency import PAGE_FAULT_WARN, measure_latency
    from fxprune.files.serialize import save, writable
    from fxprune.plan.compress import compress

    kwargs = _compress_kwargs(args)
    if args.output:
        writable(args.output)  # before pruning: a missing folder is reported at once
    if args.batch < 1:
        raise InputError(f"--batch must be >= 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    model, x = _model_and_inputs(args, args.model)
    paper = _paper_flops(args, model, x) if args.paper_flops else None
    bar = _Progress(not args.quiet)
    t0 = time.perf_counter()
    try:
        pruned = compress(model, args.ratio, criterion=args.criterion, example_inputs=x,
                          ignore=args.ignore or None, round_to=args.round_to, strict=args.strict,
                          verify=args.verify, progress=bar, **kwargs)
    finally:
        bar.close()
    t_prune = time.perf_counter() - t0
    rows = _count_rows(count(model, x), count(pruned, x), paper)
    if not args.no_latency:
        xb = torch.randn((args.batch, *x[0].shape[1:]), generator=torch.Generator().manual_seed(
            args.seed)).to(x[0])
        lat = measure_latency(model, pruned, (xb, *x[1:]), warmup=args.warmup,
                              repeat=args.repeat, threads=args.threads)
        thr = f"{lat.threads} thread{'s' if lat.threads > 1 else ''}"
        rows.append([f"latency (batch {lat.batch}, {thr}, {lat.device})",
                     f"{lat.median_a_ms:.2f} ms ±{lat.iqr_a_ms:.2f}",
                     f"{lat.median_b_ms:.2f} ms ±{lat.iqr_b_ms:.2f}",
                     f"{lat.speedup:.2f}x faster"])
    alloc = pruned.meta.get(meta.ALLOCATION) or {}
    achieved = f"(achieved {alloc.get('achieved', float('nan')):.3f})"
    how = (f"ratio {args.ratio:g}" if args.ratio is not None else
           f"target latency {args.target_latency:g} (measured {alloc.get('achieved', 0):.3f} "
           f"±{alloc.get('achieved_spread', 0):.3f} over {len(alloc.get('achieved_rounds', []))} "
           "rounds, "
           f"predicted {alloc.get('predicted', 0):.3f}, round_to {alloc.get('round_to')}, "
           f"{alloc.get('steps', 0)} timed step(s), table {alloc.get('table_s', 0):.1f} s)"
           if args.target_latency is not None else
           f"target FLOPs {args.target_flops:g} {achieved}" if args.target_flops is not None
           else f"target params {args.target_params:g} {achieved}")
    done = "pruned and verified" if args.verify else "pruned"
    print(f"{args.model}: {how}, criterion {args.criterion}, {done} in {t_prune:.1f} s")
    print(tabulate(rows, ["", "original", "pruned", "change"], tablefmt="simple",
                   disable_numparse=True))
    if not args.no_latency:
        print(f"latency: median ± IQR of {args.repeat} interleaved runs each, after "
              f"{args.warmup} warm-up runs")
        faults = max(lat.page_faults_a or 0.0, lat.page_faults_b or 0.0)
        if faults >= PAGE_FAULT_WARN:
            print(f"note: {faults:.0f} page faults per run: the allocator returns activation "
                  "memory to the OS after every run; that cost follows activation bytes, not "
                  "MACs, and the allocator's state, so these timings are noisy and can favour "
                  "either model. MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_="
                  "17179869184 (or jemalloc/tcmalloc) avoids it")
    if paper is not None:
        print("papers' convention: SFP/FPGM FLOPs↓ (conv MACs only, every conv at the keep "
              "rate, residual-output convs scattered; fxprune.paper_flops); the measured rows "
              "count this model")
    if args.verify:
        print(f"oracle: {pruned.meta.get('fxprune.verify', '-')}")
    if args.output:
        save(pruned, args.output)
        print(f"saved {args.output}")
    else:
        print("not saved (give -o PATH to save the pruned model)")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from fxprune.core.verify import verify

    torch.manual_seed(args.seed)
    original, default = load_model(args.original, args.trust_pickle)
    torch.manual_seed(args.seed)
    pruned, saved_shape = load_model(args.pruned, args.trust_pickle)
    x = _inputs(original, args, saved_shape or default)
    report = verify(original, pruned, x)
    print(f"oracle: {report}")
    if not report.ok:  # only exact and approximate (structure verified exactly) pass
        print(f"fxprune: error: the pruned model does not pass the oracle ({report.kind})",
              file=sys.stderr)
        return 1
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from fxprune.core.analyze import analyze
    from fxprune.core.trace import trace
    from fxprune.tools.graph_dot import render_svg, to_dot

    out = args.output
    if out and Path(out).suffix.lower() not in (".svg", ".dot", ".gv", ".graphml"):
        raise InputError(f"-o must end in .svg, .dot, .gv or .graphml, got {out!r}")
    model, x = _model_and_inputs(args, args.model)
    gm = trace(model, x)
    analyze(gm, ignore=args.ignore or None)
    if out and out.lower().endswith(".graphml"):
        from fxprune.tools.graph_nx import to_networkx, write_graphml

        write_graphml(to_networkx(gm), out)
        print(f"wrote {out}")
        return 0
    dot = to_dot(gm)
    if not out:
        print(dot, end="")
    elif out.lower().endswith(".svg"):
        render_svg(dot, out)
        print(f"wrote {out}")
    else:
        Path(out).write_text(dot)
        print(f"wrote {out}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        print("fxprune: error: plotting needs matplotlib: pip install fxprune[plot]",
              file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fxprune.tools.inspect import inspect

    model, x = _model_and_inputs(args, args.model)
    report = inspect(model, x, ratio=args.ratio, criterion=args.criterion)
    layers = [r for r in report.layers if "Conv" in r.type or "Linear" in r.type]
    if not layers:
        raise InputError("the model has no conv or linear layers to plot")
    n = len(layers)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.22 * n + 2), 40.0), 4.5), dpi=100)
    pos = list(range(n))
    ax.bar(pos, [r.out_before or 0 for r in layers], color="#c8c8c8", label="before")
    ax.bar(pos, [r.out_after if r.out_after is not None else 0 for r in layers],
           color="#1f77b4", width=0.6, label=f"after (ratio {args.ratio:g})")
    ax.set_ylabel("output channels")
    ax.set_title(f"{report.model}: output channels per layer")
    ax.set_xlim(-0.6, n - 0.4)
    if n <= 120:
        ax.set_xticks(pos)
        ax.set_xticklabels([r.name for r in layers], rotation=90, fontsize=6)
    else:
        ax.set_xlabel("layer (graph order)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output)
    plt.close(fig)
    print(f"wrote {args.output}")
    return 0


def _cmd_list_criteria(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from fxprune.criteria import list_criteria

    rows = [[c.name, "yes" if c.needs_data else "", c.summary] for c in list_criteria()]
    print(tabulate(rows, ["criterion", "needs data", "summary"], tablefmt="simple"))
    return 0


def _cmd_list_rules(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from fxprune.rules import list_rules

    print(tabulate(list_rules(), ["op", "rule"], tablefmt="simple"))
    return 0


def _cmd_bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("fxprune.bench.prunability")
    except ModuleNotFoundError as e:
        if e.name not in ("fxprune.bench", "fxprune.bench.prunability"):
            raise
        print("fxprune: error: 'fxprune bench' is not available in this installation "
              "(the module fxprune.bench is missing).", file=sys.stderr)
        return 2
    return int(bench.main(list(argv)) or 0)


# --- parser -----------------------------------------------------------------------------------

def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log progress (INFO) and show tracebacks")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars, warnings or logging")
    g.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                   help="seed for random weights and inputs (default 0)")
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="timm name, tv:NAME, cifar:NAME, package.module:factory or a .pt file")
    p.add_argument("--input", metavar="SHAPE", type=_shape_arg,
                   help="example input shape, e.g. 1,3,224,224")
    _trust_arg(p)


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-pickle", action="store_true",
                   help="a .pt file that is not an fxprune.save file is unpickled (this runs "
                        "any code the file holds: only for files you trust)")


def _round_to(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'auto', got {text!r}") from None


def _prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--criterion", default="l1", help="channel criterion (see list-criteria)")
    p.add_argument("--round-to", type=_round_to, default=None, metavar="N|auto",
                   help="kept widths become multiples of N; auto: what the device runs fastest "
                        "(16 on AVX-512 CPUs, else 8)")
    p.add_argument("--ignore", nargs="+", default=None, metavar="NAME",
                   help="modules (qualified names or globs) whose output channels are kept")


def _compress_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compress", parents=[common], help="prune a model and save it")
    _model_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of channels to remove, in [0, 1)")
    how.add_argument("--target-flops", type=float, metavar="F",
                     help="fraction of the original MACs to keep, in (0, 1]")
    how.add_argument("--target-params", type=float, metavar="P",
                     help="fraction of the original parameters to keep, in (0, 1]")
    how.add_argument("--target-latency", type=float, metavar="T",
                     help="fraction of the measured latency to keep, in (0, 1], at --batch "
                          "with --threads (per-layer latency table, cached)")
    _prune_args(p)
    p.add_argument("--allocation", choices=("uniform", "global", "clr"), default="uniform",
                   help="how the amount is spread over layers (default uniform)")
    p.add_argument("--residual", choices=("coupled", "scatter"), default="coupled",
                   help="residual policy (default coupled; scatter = SFP/FPGM index_add)")
    p.add_argument("--attention", choices=("dims", "heads"), default="dims",
                   help="attention: prune the same dims of every head (default) or whole heads")
    p.add_argument("--clr-lambda", type=float, default=1.0, metavar="L",
                   help="CLR exponent on the layer cost (authors: VGG-16 0.5, ResNet-56 10)")
    p.add_argument("--clr-cost", choices=("authors", "macs"), default="authors",
                   help="CLR cost convention (default authors: CLR-RNF's code)")
    p.add_argument("--paper-flops", action="store_true",
                   help="also show the SFP/FPGM papers' FLOPs convention (needs --ratio)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 3) on ops without a channel rule")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="check against the oracle (default; exit 1 unless exact or "
                        "approximate with its structure verified exactly)")
    p.add_argument("--batch", type=int, default=8, help="batch size for latency (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for latency")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs per model (default 3)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("-o", "--output", metavar="PATH", help="save the pruned model (fxprune.save)")
    p.set_defaults(func=_cmd_compress)


def build_parser() -> argparse.ArgumentParser:
    """The ``fxprune`` argument parser."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="fxprune", parents=[common],
        description="Structured channel pruning of CNNs with torch.fx.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad usage or input, 3 unsupported model.")
    from fxprune.version import __version__

    parser.add_argument("--version", action="version", version=f"fxprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inspect", parents=[common], help="show channel groups and layer widths")
    _model_args(p)
    p.add_argument("--ratio", type=float, default=None, help="also prune at this ratio")
    _prune_args(p)
    p.add_argument("--paper-flops", action="store_true",
                   help="also show the SFP/FPGM papers' FLOPs convention (needs --ratio)")
    p.add_argument("--format", choices=("text", "md", "json"), default="text")
    p.add_argument("--latency", action="store_true",
                   help="per-layer time: latency table's prediction vs the block timed alone")
    p.add_argument("--batch", type=int, default=8, help="batch size for --latency (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for --latency")
    p.set_defaults(func=_cmd_inspect)

    _compress_parser(sub, common)
    from fxprune.cli.train import add_train_parser

    add_train_parser(sub, common)  # `fxprune train`: fxprune/train/cli_train.py

    p = sub.add_parser("verify", parents=[common], help="check a pruned model against the oracle")
    p.add_argument("original", metavar="ORIGINAL", help="the original MODEL")
    p.add_argument("pruned", metavar="PRUNED", help="the pruned model file")
    p.add_argument("--input", metavar="SHAPE", type=_shape_arg,
                   help="input shape (default: the saved one)")
    _trust_arg(p)
    p.set_defaults(func=_cmd_verify)

    from fxprune.cli.export import add_parser as add_export

    add_export(sub, common)

    p = sub.add_parser("graph", parents=[common], help="draw the channel-dependency graph")
    _model_args(p)
    p.add_argument("--ignore", nargs="+", default=None, metavar="NAME")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="graph.svg (needs Graphviz), graph.dot or graph.graphml (networkx); "
                        "default: DOT on stdout")
    p.set_defaults(func=_cmd_graph)

    p = sub.add_parser("plot", parents=[common], help="bar chart of widths before/after")
    _model_args(p)
    p.add_argument("--ratio", type=float, default=0.5, help="prune ratio (default 0.5)")
    p.add_argument("--criterion", default="l1")
    p.add_argument("-o", "--output", metavar="PATH", required=True, help="e.g. widths.png")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("list-criteria", parents=[common], help="list channel criteria")
    p.set_defaults(func=_cmd_list_criteria)
    p = sub.add_parser("list-rules", parents=[common], help="list ops with a channel rule")
    p.set_defaults(func=_cmd_list_rules)
    sub.add_parser("bench", add_help=False, help="run benchmarks (fxprune bench -h)")
    return parser


# --- entry point ------------------------------------------------------------------------------

def _setup(args: argparse.Namespace) -> None:
    level = logging.INFO if args.verbose else (logging.ERROR if args.quiet else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if args.quiet:
        warnings.simplefilter("ignore")
    else:
        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                 line: Any = None) -> None:
            print(f"fxprune: warning: {message}", file=sys.stderr)

        warnings.showwarning = show


def _bench_argv(argv: list[str]) -> list[str]:
    """The arguments after the ``bench`` subcommand, untouched by argparse."""
    i = 0
    while i < len(argv) and argv[i] != "bench":
        i += 2 if argv[i] == "--seed" else 1
    return argv[i + 1:]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    for k, v in (("verbose", False), ("quiet", False), ("seed", 0)):
        if not hasattr(args, k):
            setattr(args, k, v)
    if args.command != "bench" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup(args)
    try:
        if args.command == "bench":
            return _cmd_bench(_bench_argv(argv))
        return int(args.func(args))
    except UnsupportedOpError as e:
        print(f"fxprune: unsupported model: {e}", file=sys.stderr)
        print("unsupported ops: " + ", ".join(e.ops), file=sys.stderr)
        return 3
    except InputError as e:
        _fail(args, e)
        return 2
    except FileNotFoundError as e:
        _fail(args, e)
        return 2
    except KeyboardInterrupt:
        print("fxprune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI reports every failure in one line
        _fail(args, e, one_line=True)
        return 1


def _fail(args: argparse.Namespace, e: BaseException, one_line: bool = False) -> None:
    """Print an error: bad input in full (it carries a hint), failures in one line."""
    if args.verbose:
        traceback.print_exc()
    msg = str(e).strip() or type(e).__name__
    if one_line:
        kind = type(e).__name__
        msg = f"{kind}: {msg.splitlines()[0]}"
        if not args.verbose:
            msg += " (run with -v for details)"
    print(f"fxprune: error: {msg}", file=sys.stderr)
