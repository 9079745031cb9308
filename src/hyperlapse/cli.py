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
    p.add_argument("--verify", action="store_true", help="read every committed snapshot and "
                   "report each damaged one (exit status 1 if any)")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from .store.info import format_info, store_info

    info = store_info(args.store, verify=args.verify)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    if info["damaged"]:
        print(f"hyperlapse info: error: {len(info['damaged'])} damaged entries in "
              f"'{args.store}' (listed above). Restore the store from a copy or record again.",
              file=sys.stderr)
        return 1
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train small MLPs with the recorder attached and report on them",
        description="Train an MLP on scikit-learn's bundled digits data with the recorder and "
        "a live report attached, and a 2-D moons MLP analysed afterwards (the input-space "
        "geometry picture); writes two stores and two report.html pages. Needs no download; "
        "about a minute on 2 CPU cores.",
    )
    p.add_argument("--out", default="hyperlapse-demo", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--fast", action="store_true", help="a much smaller run (seconds; for tests)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, seed=args.seed, quiet=args.quiet, fast=args.fast)
    return 0


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="path or URL of a hyperlapse trajectory store (*.zarr)")
    p.add_argument("--out", required=True, help="output folder for reports.jsonl, plots, HTML")
    p.add_argument("--seed", type=int, default=0, help="seed of the encoder (default: 0)")
    p.add_argument(
        "--encoder",
        default=None,
        metavar="PATH",
        help="a TemporalEncoder saved by fit_encoder (default: a fresh one, trained on the run "
        "itself as it goes)",
    )
    p.add_argument("--refine-steps", type=int, default=None, help="Riemannian Adam steps per "
                   "snapshot (default: 6)")
    p.add_argument("--geometry-every", type=int, default=None, help="input-space geometry every "
                   "N snapshots, 0 = off (default: 1 for <= 64 inputs, else 10)")
    p.add_argument("--no-plots", action="store_true", help="only reports.jsonl (no PNG/HTML)")
    p.add_argument("--quiet", action="store_true", help="no line per snapshot")


def _online_kwargs(args: argparse.Namespace) -> dict:
    out = {}
    if args.refine_steps is not None:
        out["refine_steps"] = args.refine_steps
    if args.geometry_every is not None:
        out["geometry_every"] = args.geometry_every
    return out


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="encode a recorded run and write its structure report",
        description="Encode every committed snapshot of a trajectory store in hyperbolic space "
        "and write OUT/reports.jsonl (one report per snapshot), OUT/embeddings.zarr (T, N, d) "
        "with the node table, PNG plots and a self-contained OUT/report.html. Deterministic "
        "for a fixed --seed.",
    )
    _add_report_options(p)
    p.add_argument("--no-embeddings", action="store_true", help="do not write embeddings.zarr")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .online.analyze import analyze_store

    res = analyze_store(
        args.store, args.out, seed=args.seed, encoder=args.encoder, quiet=args.quiet,
        plots=not args.no_plots, embeddings=not args.no_embeddings, **_online_kwargs(args),
    )
    print(f"{res['snapshots']} snapshots -> {res['reports']}")
    if res["embeddings"]:
        print(f"embeddings   {res['embeddings']}")
    if res["html"]:
        print(f"report       {res['html']}")
    return 0


def _add_watch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "watch",
        help="follow a store that is being recorded and report on it live",
        description="Follow a trajectory store while a recorder writes it: each snapshot is "
        "encoded and reported as soon as it is committed. Exits when the recorder closes the "
        "store (or on Ctrl-C, after writing the page).",
    )
    _add_report_options(p)
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks (default: 1)")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up after this many seconds if the store is not closed")
    p.set_defaults(func=_cmd_watch)


def _cmd_watch(args: argparse.Namespace) -> int:
    from .online.analyze import watch_store

    res = watch_store(
        args.store, args.out, seed=args.seed, encoder=args.encoder, quiet=args.quiet,
        poll_s=args.poll, timeout_s=args.timeout, plots=not args.no_plots,
        **_online_kwargs(args),
    )
    how = "interrupted" if res["interrupted"] else (
        "timed out" if res["timed_out"] else "store closed")
    print(f"{res['snapshots']} snapshots ({how}) -> {res['reports']}")
    if res["html"]:
        print(f"report       {res['html']}")
    return 130 if res["interrupted"] else 0


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


_ADDERS = [_add_demo, _add_info, _add_analyze, _add_watch]


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
