"""``fxprune train``: prune while training (or compress, then fine-tune) and save the result.

``fxprune train MODEL --data digits|fashion-mnist|DIR --method sfp --ratio 0.4 --epochs N
--batch B --lr LR -o small.pt`` trains MODEL (random weights from ``--seed``, or
``--pretrained``) with :func:`fxprune.train.fit` and a :class:`fxprune.SoftPruner`, finalizes
the compact model, saves it with :func:`fxprune.save` and prints test accuracy, MACs, params
and measured latency before and after. ``--method oneshot --criterion l1|fpgm|rnf`` is
:func:`fxprune.compress` followed by fine-tuning. Under ``torchrun --nproc_per_node N`` the
same command trains with DDP; only rank 0 prints and writes files.
"""

from __future__ import annotations

__all__ = ["add_train_parser", "build_model", "load_pretrained"]

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fxprune.errors import InputError

METHODS = ("oneshot", "sfp", "fpgm", "mfp", "fppmo", "soft", "swp")
_DATA_METHODS = ("mfp", "fppmo")  # their engine needs validation batches (data=)


def build_model(spec: str, num_classes: int, in_chans: int) -> nn.Module:
    """MODEL sized for the data: ``cifar:NAME`` / fxprune.models and timm names get
    ``num_classes`` and ``in_chans``; torchvision models get ``num_classes`` (3-channel data
    only); factories and files are used as they are (checked by the caller)."""
    from fxprune import models
    from fxprune.cli.app import load_model

    name = spec[6:] if spec.startswith("cifar:") else spec
    if spec.startswith("cifar:") or (":" not in spec and name in models.list_models()):
        if name not in models.list_models():
            raise InputError(f"unknown fxprune.models model '{name}'. Available: "
                             f"{', '.join(models.list_models())}")
        return models.create_model(name, num_classes=num_classes, in_chans=in_chans)
    is_file = spec.lower().endswith((".pt", ".pth", ".pkl", ".bin")) or Path(spec).is_file()
    if is_file or (":" in spec and not spec.startswith(("tv:", "timm:"))):
        return load_model(spec)[0]
    import timm
    import torchvision

    bare = spec.split(":", 1)[1] if spec.startswith(("tv:", "timm:")) else spec
    if not spec.startswith("tv:") and timm.is_model(bare):
        return timm.create_model(bare, pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans)
    if bare in torchvision.models.list_models():
        if in_chans != 3:
            raise InputError(f"torchvision's {bare} takes 3-channel images but the data has "
                             f"{in_chans}: use a cifar: or timm model (they take in_chans)")
        return torchvision.models.get_model(bare, weights=None, num_classes=num_classes)
    return load_model(spec)[0]  # raises InputError with suggestions


def load_pretrained(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> None:
    """Load weights into ``model``: a state_dict, a dict holding one under ``"model"`` or
    ``"state_dict"`` (e.g. a ``fit`` checkpoint; DDP's ``module.`` prefix is stripped), read
    as plain data (``weights_only=True``: no code from the file runs), or, only with
    ``trust_pickle=True`` (``--trust-pickle``), a whole pickled module.

    Raises:
        InputError: unreadable file or keys/shapes that do not match the model.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--pretrained: no such file {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as plain:  # noqa: BLE001 - maybe a pickled module
        if not trust_pickle:
            raise InputError(
                f"--pretrained: {path} is not plain data (a state_dict or checkpoint of "
                f"tensors): {type(plain).__name__}. Unpickling it could run any code the file "
                "holds; fxprune does that only with --trust-pickle (use it for files you "
                "trust), or save the weights with torch.save(model.state_dict(), path)."
            ) from plain
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - reported as bad input
            raise InputError(f"--pretrained: cannot read {path}: {e}") from e
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"--pretrained: {path} holds no state_dict (a dict of tensors, or one "
                         "under 'model' / 'state_dict')")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise InputError(f"--pretrained: {path} does not fit the model: "
                         f"{str(e).splitlines()[0]} (same MODEL, --data and classes?)") from e


def _default_device() -> str:
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def add_train_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``fxprune train`` on the CLI's subparsers."""
    from fxprune.cli.app import _round_to

    p = sub.add_parser(
        "train", parents=[common], help="prune while training; save the result",
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
    g = p.add_argument_group("pruning")
    g.add_argument("--method", choices=METHODS, default="sfp", help="default sfp")
    g.add_argument("--criterion", default=None,
                   help="channel criterion (oneshot default l1; soft: any; others: optional)")
    how = g.add_mutually_exclusive_group()  # one of them, except for swp (learned amounts)
    how.add_argument("--ratio", type=float, help="fraction of channels to remove, in [0, 1)")
    how.add_argument("--target-flops", type=float, metavar="F",
                     help="fraction of the original MACs to keep, in (0, 1]")
    g.add_argument("--allocation", choices=("uniform", "global", "clr"), default="uniform")
    g.add_argument("--residual", choices=("coupled", "scatter"), default="coupled")
    g.add_argument("--round-to", type=_round_to, default=None, metavar="N|auto")
    g.add_argument("--ignore", nargs="+", default=None, metavar="NAME")
    g.add_argument("--interval", type=int, default=1, help="epochs between re-selections")
    g.add_argument("--settle", type=int, default=1, metavar="N",
                   help="last N epochs train under the final selection, masks held every step "
                        "(default 1; 0: the authors' schedule)")
    g.add_argument("--max-grad-norm", type=_grad_norm, default="auto", metavar="X|auto|none",
                   help="clip the gradient norm in the pruner's step hook (default auto: 5 "
                        "for per-epoch masks (sfp, soft, mfp, fppmo), none otherwise)")
    g.add_argument("--alpha", type=float, default=1e-5,
                   help="swp: L1 weight of the Filter Skeleton (default 1e-5, the paper's)")
    g.add_argument("--delta", type=float, default=0.01,
                   help="swp: stripes with |FS| <= delta die (default 0.01, the paper's)")
    g.add_argument("--stripe-kernel", choices=("probe", "density", "dense", "stripe"),
                   default="probe", help="swp: how each layer's conv form is chosen")
    g = p.add_argument_group("training")
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
    g.add_argument("--pretrained", metavar="CKPT", help="start from these weights")
    g.add_argument("--trust-pickle", action="store_true",
                   help="let --pretrained unpickle a whole pickled module (runs code from the "
                        "file: only for files you trust)")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="written every epoch (default: OUTPUT.ckpt when -o is given)")
    g.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    g.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if any, else cpu")
    g = p.add_argument_group("report")
    g.add_argument("--latency-batch", type=int, default=8, help="batch for latency (default 8)")
    g.add_argument("--threads", type=int, default=None, help="torch threads for latency")
    g.add_argument("--repeat", type=int, default=20, help="timed latency runs (default 20)")
    g.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("-o", "--output", metavar="PATH", help="save the compact model (fxprune.save)")

    p.set_defaults(func=run_train)


def _check(args: argparse.Namespace) -> None:
    for name, low in (("epochs", 1), ("batch", 1), ("interval", 1), ("latency_batch", 1),
                      ("repeat", 1), ("workers", 0), ("warmup_epochs", 0),
                      ("recalibrate_bn", 0)):
        if getattr(args, name) < low:
            raise InputError(f"--{name.replace('_', '-')} must be >= {low}, got "
                             f"{getattr(args, name)}")
    amount = args.ratio is not None or args.target_flops is not None
    if args.method == "swp" and amount:
        raise InputError("--method swp learns how much each layer keeps: drop --ratio / "
                         "--target-flops and set the sparsity with --alpha / --delta")
    if args.method != "swp" and not amount:
        raise InputError(f"--method {args.method} needs --ratio R or --target-flops F")
    if args.resume and not (args.checkpoint or args.output):
        raise InputError("--resume needs --checkpoint PATH (or -o OUTPUT: OUTPUT.ckpt)")


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


def _make_pruner(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, val: Any) -> Any:
    from fxprune.train.engine import SoftPruner

    kw: dict[str, Any] = {"method": args.method, "example_inputs": (x,),
                          "allocation": args.allocation, "round_to": args.round_to,
                          "ignore": args.ignore, "residual": args.residual,
                          "interval": args.interval, "seed": args.seed,
                          "settle": args.settle, "max_grad_norm": args.max_grad_norm}
    if args.criterion is not None:
        kw["criterion"] = args.criterion
    if args.target_flops is not None:
        kw["target_flops"] = args.target_flops
    if args.method in _DATA_METHODS:
        kw["data"] = val
    if args.method == "swp":
        kw.update(alpha=args.alpha, delta=args.delta, kernel=args.stripe_kernel)
    return SoftPruner(model, args.ratio, **kw)


def _oneshot(args: argparse.Namespace, model: nn.Module, x: torch.Tensor) -> nn.Module:
    from fxprune.plan.compress import compress

    kw: dict[str, Any] = {"criterion": args.criterion or "l1", "example_inputs": (x,),
                          "allocation": args.allocation, "round_to": args.round_to,
                          "ignore": args.ignore, "residual": args.residual, "seed": args.seed}
    if args.target_flops is not None:
        kw["target_flops"] = args.target_flops
    return compress(model, args.ratio, **kw)


def _report(args: argparse.Namespace, model: nn.Module, small: nn.Module, x: torch.Tensor,
            acc: tuple[float, float]) -> None:
    from tabulate import tabulate

    from fxprune.cli.app import _change, _human
    from fxprune.costs.count import count
    from fxprune.costs.latency import measure_latency

    before, after = count(model, (x,)), count(small, (x,))
    rows: list[list[Any]] = [
        ["test accuracy", f"{100 * acc[0]:.2f}%", f"{100 * acc[1]:.2f}%",
         f"{100 * (acc[1] - acc[0]):+.2f} pt"],
        ["MACs", _human(before.macs), _human(after.macs), _change(before.macs, after.macs)],
        ["params", _human(before.params), _human(after.params),
         _change(before.params, after.params)]]
    if not args.no_latency:
        xb = x.expand(args.latency_batch, *x.shape[1:]).contiguous()
        lat = measure_latency(model, small, (xb,), repeat=args.repeat, threads=args.threads)
        rows.append([f"latency (batch {lat.batch}, {lat.threads} thr, {lat.device})",
                     f"{lat.median_a_ms:.2f} ms ±{lat.iqr_a_ms:.2f}",
                     f"{lat.median_b_ms:.2f} ms ±{lat.iqr_b_ms:.2f}",
                     f"{lat.speedup:.2f}x faster"])
    print(tabulate(rows, ["", "before", "after", "change"], tablefmt="simple",
                   disable_numparse=True))


def run_train(args: argparse.Namespace) -> int:  # noqa: PLR0915 - the command, step by step
    """The ``fxprune train`` command."""
    import torch.distributed as dist

    from fxprune.costs.count import count
    from fxprune.files.serialize import save
    from fxprune.train.data import load_data, make_loaders
    from fxprune.train.distributed import init_distributed
    from fxprune.train.trainer import evaluate, fit

    _check(args)
    device = torch.device(args.device or _default_device())
    info = init_distributed(device)
    try:
        splits = load_data(args.data, data_dir=args.data_dir, val_fraction=args.val_fraction,
                           seed=args.seed, augment=not args.no_augment,
                           image_size=args.image_size)
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
        train, val, test = make_loaders(splits, args.batch, num_workers=args.workers)
        main = info.is_main
        if main:
            print(f"{args.model} on {splits.name} ({len(splits.train)} train / "
                  f"{len(splits.val)} val / {len(splits.test)} test, "
                  f"{'x'.join(map(str, (splits.in_chans, *splits.image_size)))}, "
                  f"{splits.num_classes} classes): method {args.method}, "
                  + (f"ratio {args.ratio:g}" if args.ratio is not None
                     else f"target FLOPs {args.target_flops:g}" if args.target_flops is not None
                     else f"alpha {args.alpha:g}, delta {args.delta:g}")
                  + f", {args.epochs} epochs, global batch {args.batch}, lr {args.lr:g}, "
                  f"{info.world_size} process(es) on {device.type}", flush=True)
        acc_before = evaluate(model, test, device)[1] if main else 0.0
        dense_macs = count(model, (x,)).macs
        pruner, trained, kept = None, model, None
        if args.method == "oneshot":
            trained = _oneshot(args, model, x)
            kept = count(trained, (x,)).macs / max(dense_macs, 1)
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
            weight_decay=args.weight_decay, schedule=args.schedule,
            warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
            pruner=pruner, bn_recalibration=args.recalibrate_bn, amp=args.amp,
            checkpoint=checkpoint,
            resume=args.resume, device=device, seed=args.seed, progress=not args.quiet,
            callback=show)
        if not main:
            return 0
        small = pruner.finalize() if pruner is not None else trained
        acc_after = evaluate(small, test, device)[1]
        _report(args, model, small, x, (acc_before, acc_after))
        if args.output:
            save(small, args.output)
            print(f"saved {args.output}" + (f" (checkpoint {checkpoint})" if checkpoint else ""))
        else:
            print("not saved (give -o PATH to save the compact model)")
        return 0
    finally:
        if info.created and dist.is_initialized():
            dist.destroy_process_group()
