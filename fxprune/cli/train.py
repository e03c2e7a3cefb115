"""``fxprune train``: prune while training (or compress, then fine-tune) and save the result.

``fxprune train MODEL --data digits|fashion-mnist|DIR --method sfp --ratio 0.4 --epochs N
--batch B --lr LR -o small.pt`` trains MODEL (random weights from ``--seed``, or
``--pretrained``) with :func:`fxprune.train.fit` and a :class:`fxprune.SoftPruner`, finalizes
the compact model, saves it with :func:`fxprune.save` and prints test accuracy, MACs, params
and measured latency before and after. ``--method oneshot --criterion l1|fpgm|rnf`` is
:func:`fxprune.compress` followed by fine-tuning. Under ``torchrun --nproc_per_node N`` the
same command trains with DDP; only rank 0 prints and writes files.

The methods are the training-method registry's (:mod:`fxprune.train.methods`): ``--method``
offers every registered name (and ``oneshot``), a method whose ``needs_data`` is set (or whose
criterion needs data) gets the validation split as ``data=``, a method that is not a channel
selection (``channel_selection = False``, as SWP) takes no ``--ratio``, and ``--option
NAME=VALUE`` sets any of a method's own ``options``.
"""

from __future__ import annotations

__all__ = ["add_parser", "run", "build_model", "load_pretrained", "method_choices",
           "method_options"]

import argparse
import ast
import copy
import dataclasses
import os
from typing import Any

import torch
import torch.nn as nn

from fxprune.cli.common import change, criterion_names, general, group_scores_arg, human
from fxprune.cli.common import round_to as round_to_arg
from fxprune.cli.train_model import build_model, load_pretrained
from fxprune.errors import InputError
from fxprune.train.methods import Method, get_method, list_methods, needs_data

ONESHOT = "oneshot"  # not a training method: compress, then fine-tune
# flag (its dest) -> the method option it sets, for methods that have that option (SWP's)
_OPTION_FLAGS = {"alpha": "alpha", "delta": "delta", "stripe_kernel": "kernel"}


def method_choices() -> list[str]:
    """The values of ``--method``: ``oneshot`` and every registered training method."""
    return [ONESHOT, *list_methods()]


def _default_device() -> str:
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def add_parser(sub: Any) -> None:
    """Register ``fxprune train`` on the CLI's subparsers."""
    p = sub.add_parser(
        "train", parents=[general()], help="prune while training; save the result",
        description="Train MODEL on --data with a soft-pruning --method (or --method oneshot: "
                    "compress, then fine-tune), finalize the compact model, print test "
                    "accuracy, MACs, params and latency before/after and save it (-o). Under "
                    "torchrun --nproc_per_node N it trains with DDP; rank 0 prints and writes.")
    p.add_argument("model", metavar="MODEL",
                   help="cifar:NAME, timm name, tv:NAME, package.module:factory or a .pt file")
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="digits|fashion-mnist|DIR")
    g.add_argument("--data-dir", metavar="DIR", help="where the Fashion-MNIST IDX files are")
    g.add_argument("--image-size", type=int, default=None, help="resize images to N x N")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of train held out for validation (default 0.1)")
    g.add_argument("--no-augment", action="store_true", help="no random crops/flips")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    _pruning_args(p.add_argument_group("pruning"))
    _training_args(p.add_argument_group("training"))
    g = p.add_argument_group("report")
    g.add_argument("--latency-batch", type=int, default=8, help="batch for latency (default 8)")
    g.add_argument("--threads", type=int, default=None, help="torch threads for latency")
    g.add_argument("--repeat", type=int, default=20, help="timed latency runs (default 20)")
    g.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("-o", "--output", metavar="PATH", help="save the compact model (fxprune.save)")
    p.set_defaults(func=run)


def _pruning_args(g: Any) -> None:
    g.add_argument("--method", choices=method_choices(), default="sfp", help="default sfp")
    g.add_argument("--criterion", default=None, choices=criterion_names(), metavar="CRITERION",
                   help="channel criterion (oneshot default l1; soft: any; others: optional)")
    how = g.add_mutually_exclusive_group()  # one of them, except for swp (learned amounts)
    how.add_argument("--ratio", type=float, help="fraction of channels to remove, in [0, 1)")
    how.add_argument("--target-flops", type=float, metavar="F",
                     help="fraction of the original MACs to keep, in (0, 1]")
    g.add_argument("--allocation", choices=("uniform", "global", "clr"), default="uniform")
    g.add_argument("--residual", choices=("coupled", "scatter"), default="coupled")
    group_scores_arg(g)
    g.add_argument("--round-to", type=round_to_arg, default=None, metavar="N|auto")
    g.add_argument("--ignore", nargs="+", default=None, metavar="NAME")
    g.add_argument("--interval", type=int, default=1, help="epochs between re-selections")
    g.add_argument("--settle", type=int, default=1, metavar="N",
                   help="last N epochs train under the final selection, masks held every step "
                        "(default 1; 0: the authors' schedule)")
    g.add_argument("--max-grad-norm", type=_grad_norm, default="auto", metavar="X|auto|none",
                   help="clip the gradient norm in the pruner's step hook (default auto: 5 "
                        "for per-epoch masks (sfp, soft, mfp), none otherwise and for fppmo)")
    g.add_argument("--variant", choices=("fxprune", "paper"), default="fxprune",
                   help="paper: the authors' settings of the method (no clip, no settle epoch, "
                        "residual scatter, no BN recalibration, their step schedule and weight "
                        "decay; swp: no L1 on 1x1 convs); default fxprune")
    g.add_argument("--score-recalibration", type=int, default=0, metavar="N",
                   help="mfp/fppmo: score candidates after recomputing BatchNorm statistics "
                        "on N training batches (default 0: off)")
    g.add_argument("--alpha", type=float, default=None,
                   help="swp: L1 weight of the Filter Skeleton (default 1e-5, the paper's)")
    g.add_argument("--delta", type=float, default=None,
                   help="swp: stripes with |FS| <= delta die (default 0.01, the paper's)")
    g.add_argument("--stripe-kernel", choices=("probe", "density", "dense", "stripe"),
                   default=None, help="swp: how each layer's conv form is chosen (default probe)")
    g.add_argument("--option", action="append", default=None, type=_option, metavar="NAME=VALUE",
                   help="one of the method's own options (a Python literal or a string), e.g. "
                        "--option switch=layer for mfp; repeatable")


def _training_args(g: Any) -> None:
    g.add_argument("--epochs", type=int, default=10, help="default 10")
    g.add_argument("--batch", type=int, default=64, help="global batch size (default 64)")
    g.add_argument("--lr", type=float, default=0.1, help="default 0.1 (0.01 from pretrained)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    g.add_argument("--warmup-epochs", type=int, default=0)
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                   help="autocast the forward pass (bf16: CPUs with AVX512-BF16/AMX; fp16: "
                        "CUDA); weights and pruning stay float32")
    g.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                   help="after each mask update, recompute BatchNorm statistics on N training "
                        "batches (default 0: as the authors)")
    g.add_argument("--reconstruct", type=int, default=0, metavar="N",
                   help="--method oneshot: refit the cut layers to the dense model's outputs "
                        "on N training batches before fine-tuning (fxprune.reconstruct; "
                        "default 0)")
    g.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                   help="distil from the dense model with weight ALPHA in [0, 1] (default 0)")
    g.add_argument("--temperature", type=float, default=4.0, metavar="T",
                   help="distillation temperature (default 4)")
    g.add_argument("--feature-distill", type=float, default=0.0, metavar="BETA",
                   help="--method oneshot: also distil the dense model's BatchNorm outputs at "
                        "the kept channels, with weight BETA (default 0)")
    g.add_argument("--pretrained", metavar="CKPT", help="start from these weights")
    g.add_argument("--trust-pickle", action="store_true",
                   help="let --pretrained unpickle a whole pickled module (runs code from the "
                        "file: only for files you trust)")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="written every epoch (default: OUTPUT.ckpt when -o is given)")
    g.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    g.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if any, else cpu")


def _grad_norm(text: str) -> float | str | None:
    t = text.strip().lower()
    if t in ("auto", "none"):
        return None if t == "none" else "auto"
    try:
        v = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, 'auto' or 'none', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


def _option(text: str) -> tuple[str, Any]:
    """argparse type of ``--option NAME=VALUE``: the value as a Python literal, else a string."""
    name, eq, value = text.partition("=")
    if not eq or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return name.strip(), value.strip()


def _method(args: argparse.Namespace) -> type[Method] | None:
    """The registered method ``--method`` names (None for ``oneshot``)."""
    return None if args.method == ONESHOT else get_method(args.method)


def _check(args: argparse.Namespace) -> None:
    for name, low in (("epochs", 1), ("batch", 1), ("interval", 1), ("latency_batch", 1),
                      ("repeat", 1), ("workers", 0), ("warmup_epochs", 0),
                      ("recalibrate_bn", 0), ("score_recalibration", 0), ("reconstruct", 0)):
        if getattr(args, name) < low:
            raise InputError(f"--{name.replace('_', '-')} must be >= {low}, got "
                             f"{getattr(args, name)}")
    amount = args.ratio is not None or args.target_flops is not None
    method = _method(args)
    if args.reconstruct and method is not None:
        raise InputError(f"--reconstruct refits a one-shot cut: it needs --method oneshot, "
                         f"not {args.method!r}")
    if args.feature_distill and method is not None:
        raise InputError(f"--feature-distill compares the channels a one-shot cut kept: it "
                         f"needs --method oneshot, not {args.method!r} (which trains the "
                         "model masked at full width; use --distill there)")
    if args.feature_distill < 0:
        raise InputError(f"--feature-distill must be >= 0, got {args.feature_distill}")
    learned = method is not None and not method.channel_selection
    budget = learned and "target_flops" in method.options  # SWP's budgeted mode
    if learned and (args.ratio is not None or (args.target_flops is not None and not budget)):
        how = (" and set the sparsity with --alpha / --delta"
               if {"alpha", "delta"} <= set(method.options) else "")
        drop = "--ratio (or give --target-flops F)" if budget else "--ratio / --target-flops"
        raise InputError(f"--method {args.method} learns how much each layer keeps: drop "
                         f"{drop}{how}")
    if not learned and not amount:
        raise InputError(f"--method {args.method} needs --ratio R or --target-flops F")
    if method is None and args.option is not None:
        raise InputError("--option sets a training method's options; --method oneshot has none")
    if args.resume and not (args.checkpoint or args.output):
        raise InputError("--resume needs --checkpoint PATH (or -o OUTPUT: OUTPUT.ckpt)")


def method_options(args: argparse.Namespace, method: type[Method]) -> dict[str, Any]:
    """The method's options the command line sets: ``--option NAME=VALUE``, and ``--alpha``,
    ``--delta``, ``--stripe-kernel`` where the method has an option of that name."""
    opts = {opt: getattr(args, flag) for flag, opt in _OPTION_FLAGS.items()
            if opt in method.options and getattr(args, flag) is not None}
    return {**opts, **dict(args.option or ())}


def _needs_data(args: argparse.Namespace) -> bool:
    """Whether the method or its criterion reads the validation batches (the registries say)."""
    from fxprune.criteria import get_criterion

    if args.method != ONESHOT:
        return needs_data(args.method, args.criterion)
    return get_criterion(args.criterion or "l1").needs_data


def _make_pruner(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, val: Any) -> Any:
    from fxprune.train.engine import SoftPruner

    method = get_method(args.method)
    kw: dict[str, Any] = {"method": args.method, "example_inputs": (x,),
                          "allocation": args.allocation, "round_to": args.round_to,
                          "ignore": args.ignore, "residual": args.residual,
                          "interval": args.interval, "seed": args.seed,
                          "settle": args.settle, "max_grad_norm": args.max_grad_norm,
                          "variant": args.variant,
                          "score_recalibration": args.score_recalibration}
    if args.criterion is not None:
        kw["criterion"] = args.criterion
    if args.group_scores is not None:
        kw["scoring"] = args.group_scores
    if args.target_flops is not None:
        kw["target_flops"] = args.target_flops
    if _needs_data(args):
        kw["data"] = val
    kw.update(method_options(args, method))
    return SoftPruner(model, args.ratio, **kw)


def _schedule_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """fit's schedule, weight decay and BN recalibration: the flags, or under ``--variant
    paper`` the authors' (:func:`fxprune.train.methods.paper_settings`)."""
    if args.variant != "paper" or args.method == ONESHOT:
        return {"schedule": args.schedule, "weight_decay": args.weight_decay,
                "bn_recalibration": args.recalibrate_bn}
    from fxprune.train.methods import paper_settings

    if args.recalibrate_bn:
        raise InputError("--variant paper runs without BatchNorm recalibration (the authors' "
                         "code): drop --recalibrate-bn, or use --variant fxprune")
    return paper_settings(args.method).fit_keywords(args.epochs)


def _oneshot(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, train: Any,
             val: Any) -> nn.Module:
    from fxprune.core.reconstruct import reconstruct
    from fxprune.plan.compress import compress

    kw: dict[str, Any] = {"criterion": args.criterion or "l1", "example_inputs": (x,),
                          "allocation": args.allocation, "round_to": args.round_to,
                          "ignore": args.ignore, "residual": args.residual, "seed": args.seed,
                          "scoring": args.group_scores}
    if args.target_flops is not None:
        kw["target_flops"] = args.target_flops
    if _needs_data(args):
        kw["data"] = val
    small = compress(model, args.ratio, **kw)
    if args.reconstruct:  # on training batches (a needs_data criterion scored on val)
        reconstruct(small, model, train, batches=args.reconstruct, seed=args.seed)
    return small


def _report(args: argparse.Namespace, model: nn.Module, small: nn.Module, x: torch.Tensor,
            acc: tuple[float, float]) -> None:
    from tabulate import tabulate

    from fxprune.costs.count import count
    from fxprune.costs.latency import measure_latency

    before, after = count(model, (x,)), count(small, (x,))
    rows: list[list[Any]] = [
        ["test accuracy", f"{100 * acc[0]:.2f}%", f"{100 * acc[1]:.2f}%",
         f"{100 * (acc[1] - acc[0]):+.2f} pt"],
        ["MACs", human(before.macs), human(after.macs), change(before.macs, after.macs)],
        ["params", human(before.params), human(after.params),
         change(before.params, after.params)]]
    if not args.no_latency:
        xb = x.expand(args.latency_batch, *x.shape[1:]).contiguous()
        lat = measure_latency(model, small, (xb,), repeat=args.repeat, threads=args.threads)
        rows.append([f"latency (batch {lat.batch}, {lat.threads} thr, {lat.device})",
                     f"{lat.median_a_ms:.2f} ms ±{lat.iqr_a_ms:.2f}",
                     f"{lat.median_b_ms:.2f} ms ±{lat.iqr_b_ms:.2f}",
                     f"{lat.speedup:.2f}x faster"])
    print(tabulate(rows, ["", "before", "after", "change"], tablefmt="simple",
                   disable_numparse=True))


def _model_for(args: argparse.Namespace, splits: Any, device: torch.device
               ) -> tuple[nn.Module, torch.Tensor]:
    """MODEL sized for the data, on ``device``, checked on one example input."""
    torch.manual_seed(args.seed)
    model = build_model(args.model, splits.num_classes, splits.in_chans)
    if args.pretrained:
        load_pretrained(model, args.pretrained, args.trust_pickle)
    model.to(device)
    x = splits.example_input().to(device)
    with torch.no_grad():
        out = model.eval()(x)
    if not isinstance(out, torch.Tensor) or out.shape != (1, splits.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{args.model} gives {shape} on a {tuple(x.shape)} input, not "
                         f"(1, {splits.num_classes}): it does not fit --data {args.data}")
    return model, x


def _amount(args: argparse.Namespace) -> str:
    if args.ratio is not None:
        return f"ratio {args.ratio:g}"
    if args.target_flops is not None:
        return f"target FLOPs {args.target_flops:g}"
    method = get_method(args.method)
    opts = {**method.options, **method_options(args, method)}
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in opts.items() if k in ("alpha", "delta")) or "learned amounts"


def _banner(args: argparse.Namespace, splits: Any, world_size: int, device: torch.device
            ) -> None:
    print(f"{args.model} on {splits.name} ({len(splits.train)} train / "
          f"{len(splits.val)} val / {len(splits.test)} test, "
          f"{'x'.join(map(str, (splits.in_chans, *splits.image_size)))}, "
          f"{splits.num_classes} classes): method {args.method}, {_amount(args)}, "
          f"{args.epochs} epochs, global batch {args.batch}, lr {args.lr:g}, "
          f"{world_size} process(es) on {device.type}", flush=True)


def run(args: argparse.Namespace) -> int:
    """The ``fxprune train`` command."""
    import torch.distributed as dist

    from fxprune.files.serialize import writable
    from fxprune.train.data import load_data, make_loaders
    from fxprune.train.distributed import init_distributed

    _check(args)
    if args.output:
        writable(args.output)  # before training: a missing folder is reported at once
    device = torch.device(args.device or _default_device())
    info = init_distributed(device)
    try:
        splits = load_data(args.data, data_dir=args.data_dir, val_fraction=args.val_fraction,
                           seed=args.seed, augment=not args.no_augment,
                           image_size=args.image_size)
        model, x = _model_for(args, splits, device)
        loaders = make_loaders(splits, args.batch, num_workers=args.workers)
        if info.is_main:
            _banner(args, splits, info.world_size, device)
        return _train(args, model, x, loaders, device, info.is_main)
    finally:
        if info.created and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, loaders: Any,
           device: torch.device, main: bool) -> int:
    """Prune (one-shot, or a pruner for the training), train, finalize, report and save."""
    from fxprune.costs.count import count
    from fxprune.files.serialize import save
    from fxprune.train.trainer import evaluate, fit

    train, val, test = loaders
    acc_before = evaluate(model, test, device)[1] if main else 0.0
    pruner, trained, kept = None, model, None
    teacher = copy.deepcopy(model).eval() \
        if args.distill or args.feature_distill else None  # before any mask
    if args.method == ONESHOT:
        trained = _oneshot(args, model, x, train, val)
        kept = count(trained, (x,)).macs / max(count(model, (x,)).macs, 1)
        if main:
            print(f"compressed to {kept:.3f} of the MACs: test accuracy "
                  f"{100 * evaluate(trained, test, device)[1]:.2f}% before fine-tuning",
                  flush=True)
    else:
        pruner = _make_pruner(args, model, x, val)

    def show(rec: Any) -> None:
        if rec.kept_macs is None:
            rec = dataclasses.replace(rec, kept_macs=kept)
        print(rec.line(args.epochs), flush=True)

    checkpoint = args.checkpoint or (f"{args.output}.ckpt" if args.output else None)
    fit(trained, train, val, args.epochs, lr=args.lr, momentum=args.momentum,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        pruner=pruner, amp=args.amp, **_schedule_keywords(args),
        checkpoint=checkpoint, resume=args.resume, device=device, seed=args.seed,
        progress=not args.quiet, callback=show, teacher=teacher, distill=args.distill,
        temperature=args.temperature, feature_distill=args.feature_distill)
    if not main:
        return 0
    small = pruner.finalize() if pruner is not None else trained
    _report(args, model, small, x, (acc_before, evaluate(small, test, device)[1]))
    if args.output:
        save(small, args.output)
        print(f"saved {args.output}" + (f" (checkpoint {checkpoint})" if checkpoint else ""))
    else:
        print("not saved (give -o PATH to save the compact model)")
    return 0
