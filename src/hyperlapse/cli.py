"""The ``hyperlapse`` command line: parses arguments, calls the package, prints.

Each sub-command has its own ``_add_<name>`` (arguments) and ``_cmd_<name>`` (call + print).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import HyperlapseError


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="summarise a trajectory store",
        description="Summarise a trajectory store: snapshots, steps, parameters and sizes, "
        "compression, architecture, metrics, whether the writer closed cleanly.",
    )
    p.add_argument("store", help="path or URL of a hyperlapse trajectory store (*.zarr)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from .store.info import format_info, store_info

    info = store_info(args.store)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train small MLPs with the recorder attached and report on them",
        description="Train an MLP on scikit-learn's bundled digits data with the recorder "
        "attached, then summarise and report on the recorded trajectory. Needs no download.",
    )
    p.add_argument("--out", default="hyperlapse-demo", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, seed=args.seed, quiet=args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperlapse",
        description="Record, encode and report the geometry of an MLP's training.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hyperlapse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return parser


_ADDERS = [_add_demo, _add_info]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HyperlapseError as exc:
        print(f"hyperlapse {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hyperlapse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
