"""The ``fxprune`` command line (also ``python -m fxprune``): the parser and the dispatch.

Subcommands: ``inspect``, ``compress``, ``train``, ``verify``, ``export``, ``graph``, ``plot``,
``list-criteria``, ``list-rules`` and ``bench``, one module each in :mod:`fxprune.cli` (each has
``add_parser(subparsers)`` and ``run(args)``; what they share is in :mod:`.common`). A MODEL is
a timm model name (``resnet50``), ``tv:NAME`` or a torchvision model name, ``cifar:NAME`` or a
name from :mod:`fxprune.models`, ``package.module:factory`` (called without arguments), or a
path to a file saved with :func:`fxprune.save` (opened as plain data: no code from the file
runs). Any other ``.pt`` file (a whole pickled module) is unpickled only with
``--trust-pickle``: unpickling can run any code the file holds. Models are created with random
weights from a fixed seed (``--seed``), so the same MODEL gives the same weights in
``compress`` and ``verify``.

Exit codes: 0 success, 1 failure, 2 usage error or bad input, 3 unsupported model (strict mode).
"""

from __future__ import annotations

__all__ = ["main", "build_parser", "load_model", "parse_shape", "COMMANDS"]

import argparse
import logging
import sys
import traceback
import warnings
from typing import Any

from fxprune.cli import bench, compress, export, graph, inspect, lists, plot, train, verify
from fxprune.cli.common import general, load_model, parse_shape
from fxprune.errors import InputError, UnsupportedOpError
from fxprune.version import __version__

# The command modules, in the order of ``fxprune --help``.
COMMANDS = (inspect, compress, train, verify, export, graph, plot, lists, bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``fxprune`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="fxprune", parents=[general()],
        description="Structured channel pruning of CNNs with torch.fx.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad usage or input, 3 unsupported model.")
    parser.add_argument("--version", action="version", version=f"fxprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    for k, v in (("verbose", False), ("quiet", False), ("seed", 0)):
        if not hasattr(args, k):
            setattr(args, k, v)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv  # the whole command line, for commands that parse their own (bench)
    _setup(args)
    try:
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
