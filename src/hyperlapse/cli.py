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
    p.add_argument("--quiet", action="store_true", help="no progress bar and no line per snapshot")
    p.add_argument(
        "--threads", type=int, default=1, metavar="N",
        help="torch threads for the encoder (default: %(default)s; on a 2-core machine that also "
        "trains, torch's default made the analysis 8-30x slower than 1 thread)",
    )
    p.add_argument(
        "--stride", type=int, default=1, metavar="N",
        help="analyse every N-th snapshot, to go faster through long runs (default: every one; "
        "analyze always keeps the last)",
    )
    p.add_argument(
        "--probes", default=None, metavar="FILE",
        help="probe inputs for the input-space geometry: a .npy or .pt array [B, inputs], e.g. "
        "held-out training data (default: Gaussian noise, or a grid for 2-D inputs)",
    )


def _online_kwargs(args: argparse.Namespace) -> dict:
    out = {"threads": args.threads, "stride": args.stride, "probes": args.probes}
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
        "for a fixed --seed. Ctrl-C stops early and still writes the page for the snapshots "
        "done. Example: hyperlapse analyze runs/mlp.zarr --out report --stride 5",
    )
    _add_report_options(p)
    p.add_argument(
        "--steps", default=None, metavar="A:B",
        help="only snapshots whose optimizer step lies in A..B inclusive (either side may be "
        "empty: '1000:' or ':500')",
    )
    p.add_argument("--no-embeddings", action="store_true", help="do not write embeddings.zarr")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .online.analyze import analyze_store

    res = analyze_store(
        args.store, args.out, seed=args.seed, encoder=args.encoder, quiet=args.quiet,
        plots=not args.no_plots, embeddings=not args.no_embeddings, steps=args.steps,
        **_online_kwargs(args),
    )
    how = f" (interrupted, of {res['selected']})" if res["interrupted"] else ""
    print(f"{res['snapshots']} snapshots{how} -> {res['reports']}")
    if res["embeddings"]:
        print(f"embeddings   {res['embeddings']}")
    if res["html"]:
        print(f"report       {res['html']}")
    return 130 if res["interrupted"] else 0


def _add_watch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "watch",
        help="follow a store that is being recorded and report on it live",
        description="Follow a trajectory store while a recorder writes it: each snapshot is "
        "encoded and reported as soon as it is committed. If the store does not exist yet, "
        "waits for it (up to --timeout). Exits when the recorder closes the store (or on "
        "Ctrl-C, after writing the page). The progress bar shows the lag behind the writer.",
    )
    _add_report_options(p)
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks (default: 1)")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up after this many seconds if the store has not appeared or "
                   "is not closed (default: wait until Ctrl-C)")
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


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="analyse many stores (a sweep), one task per store, and gather a summary table",
        description="Run `analyze` on every store, each into OUT/<store name>/, as one task per "
        "store: in this process, on a local dask.distributed cluster (--scheduler local), or on "
        "a running dask scheduler (--scheduler tcp://host:8786). Writes OUT/sweep.csv and "
        "OUT/sweep.json: per run the final hyperbolic radius and mean drift per layer, the mean "
        "prediction scores, and the seconds it took. A store that fails gives a row with its "
        "error; the others go on. Example: hyperlapse sweep runs/*.zarr --out sweep "
        "--scheduler local",
    )
    p.add_argument("stores", nargs="+", help="trajectory stores (paths or URLs)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="'local' or a dask scheduler address (default: run in this process)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of --scheduler local (default: CPU count)")
    p.add_argument("--stride", type=int, default=1, metavar="N", help="every N-th snapshot")
    p.add_argument("--seed", type=int, default=0, help="seed of the encoder (default: 0)")
    p.add_argument("--plots", action="store_true", help="also draw each run's plots and page")
    p.add_argument("--quiet", action="store_true", help="no line per finished store")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .online.sweep import analyze_sweep

    res = analyze_sweep(
        args.stores, args.out, scheduler=args.scheduler, workers=args.workers,
        quiet=args.quiet, stride=args.stride, seed=args.seed, plots=args.plots,
        embeddings=False,
    )
    failed = [r for r in res["rows"] if r.get("error")]
    print(f"{len(res['rows'])} runs ({res['scheduler']}, {res['seconds_per_store']:.1f} s per "
          f"store) -> {res['csv']}")
    for row in failed:
        print(f"failed: {row['store']}: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


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


_ADDERS = [_add_demo, _add_info, _add_analyze, _add_watch, _add_sweep]


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
