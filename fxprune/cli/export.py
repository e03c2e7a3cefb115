"""``fxprune export MODEL --onnx out.onnx``: ONNX export, checked and timed (see the CLI)."""

from __future__ import annotations

__all__ = ["add_parser"]

import argparse
from typing import Any

import torch

from fxprune.errors import InputError


def _cmd_export(args: argparse.Namespace) -> int:
    from fxprune.cli.app import _model_and_inputs
    from fxprune.costs.latency import measure_latency
    from fxprune.files.export import export_onnx, onnx_session

    if args.batch < 1:
        raise InputError(f"--batch must be >= 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    if not args.onnx.lower().endswith(".onnx"):
        raise InputError(f"--onnx must name a .onnx file, got {args.onnx!r}")
    model, x = _model_and_inputs(args, args.model)
    report = export_onnx(model, args.onnx, x, dynamic_batch=True, check=True,
                         dynamo=args.dynamo)
    print(f"wrote {args.onnx} (dynamic batch); ONNX Runtime {report}")
    if args.no_latency:
        return 0
    xb = torch.randn((args.batch, *x[0].shape[1:]), generator=torch.Generator().manual_seed(
        args.seed)).to(x[0])
    sess = onnx_session(args.onnx, threads=args.threads)
    lat = measure_latency(model, sess, (xb, *x[1:]), warmup=args.warmup, repeat=args.repeat,
                          threads=args.threads)
    thr = f"{lat.threads} thread{'s' if lat.threads > 1 else ''}"
    print(f"latency (batch {lat.batch}, {thr}, {lat.device}; median ± IQR of {lat.repeat} "
          f"interleaved runs): PyTorch {lat.median_a_ms:.2f} ms ±{lat.iqr_a_ms:.2f}, "
          f"ONNX Runtime {lat.median_b_ms:.2f} ms ±{lat.iqr_b_ms:.2f} "
          f"({lat.speedup:.2f}x)")
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common],
                       help="export to ONNX (dynamic batch), check in ONNX Runtime, time both")
    p.add_argument("model", metavar="MODEL",
                   help="a pruned .pt file (fxprune.save) or any MODEL the other commands take")
    p.add_argument("--input", metavar="SHAPE", help="example input shape (default: the saved)")
    p.add_argument("--onnx", required=True, metavar="PATH", help="the .onnx file to write")
    p.add_argument("--dynamo", action="store_true",
                   help="use the torch.export-based exporter (default: TorchScript's)")
    p.add_argument("--batch", type=int, default=8, help="batch size for latency (default 8)")
    p.add_argument("--threads", type=int, default=None, help="threads (torch and ORT)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per engine (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs per engine (default 3)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.set_defaults(func=_cmd_export)
