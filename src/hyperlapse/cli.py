"""The ``hyperlapse`` command line: parses arguments, calls the package, prints.

Each sub-command has its own ``_add_<name>`` (arguments) and ``_cmd_<name>`` (call + print).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import ConfigError, HyperlapseError
from .outputs import check_output_dir, check_output_file


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


def _add_compact(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact",
        help="rewrite a closed store compressed (lossless, bit-exact, crash-safe)",
        description="Rewrite a closed trajectory store with another compression, e.g. after "
        "recording with compression='none' for speed. The copy is compared snapshot by "
        "snapshot with the original before it replaces it; a crash leaves either the original "
        "or the complete copy, and the next compact tidies the rest. Local stores only.",
    )
    p.add_argument("store", help="path of a closed hyperlapse trajectory store (*.zarr)")
    p.add_argument("--compression", default="zstd", choices=["auto", "zstd", "lz4", "none"],
                   help="codec of the rewritten weights (default: %(default)s, the smallest "
                   "measured for float32)")
    p.set_defaults(func=_cmd_compact)


def _cmd_compact(args: argparse.Namespace) -> int:
    from .store.compact import compact_store
    from .store.info import human_size

    res = compact_store(args.store, compression=args.compression)
    if res["tidied"]:
        print(f"tidied an interrupted compaction: {res['tidied']}")
    print(f"{res['snapshots']} snapshots: {human_size(res['bytes_before'])} -> "
          f"{human_size(res['bytes_after'])} ({res['ratio']:.2f}) with {res['compression']}")
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

    check_output_dir(args.out, kind="the demo folder (--out)", create=False)
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

    check_output_dir(args.out, kind="the report folder (--out)", create=False)
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

    check_output_dir(args.out, kind="the report folder (--out)", create=False)
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
    p.add_argument("--out", default=None, help="output folder (required unless --forecast)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="'local' or a dask scheduler address (default: run in this process)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of --scheduler local (default: CPU count)")
    p.add_argument("--stride", type=int, default=1, metavar="N", help="every N-th snapshot")
    p.add_argument("--seed", type=int, default=0, help="seed of the encoder (default: 0)")
    p.add_argument("--plots", action="store_true", help="also draw each run's plots and page")
    p.add_argument("--quiet", action="store_true", help="no line per finished store")
    _add_sweep_forecast(p)
    p.set_defaults(func=_cmd_sweep)


def _add_sweep_forecast(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "forecast", "--forecast: instead of analysing, forecast each run in progress's final "
        "metric from its first part (fitted on the finished runs among STORES; see "
        "docs/sweep-forecast.md for what a run must log)")
    g.add_argument("--forecast", action="store_true", help="forecast the runs in progress")
    g.add_argument("--at", type=float, default=0.2, metavar="F",
                   help="cut, a fraction of the planned steps (default: %(default)s)")
    g.add_argument("--metric", default=None, help="logged metric to forecast (default: from "
                   "the stores)")
    g.add_argument("--planned-steps", type=int, default=None, metavar="N",
                   help="planned steps of every run (default: from the stores)")
    g.add_argument("--predictor", default=None, metavar="PATH",
                   help="a saved forecaster instead of fitting one on the finished runs")
    g.add_argument("--save-predictor", default=None, metavar="PATH",
                   help="save the fitted forecaster here")


def _cmd_sweep_forecast(args: argparse.Namespace) -> int:
    from .predict.sweep_forecast import forecast_sweep

    if args.save_predictor:  # before the fit, not after it
        check_output_file(args.save_predictor, kind="the forecaster file (--save-predictor)")
    res = forecast_sweep(args.stores, at=args.at, metric=args.metric,
                         planned_steps=args.planned_steps, predictor=args.predictor)
    if args.save_predictor:
        res.forecaster.save(args.save_predictor)
    print(res.table())
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.forecast:
        return _cmd_sweep_forecast(args)
    if args.out is None:
        raise ConfigError("Expected --out FOLDER for the sweep's analysis (or --forecast).")
    from .online.sweep import analyze_sweep

    check_output_dir(args.out, kind="the sweep folder (--out)", create=False)
    res = analyze_sweep(
        args.stores, args.out, scheduler=args.scheduler, workers=args.workers,
        quiet=args.quiet, stride=args.stride, seed=args.seed, plots=args.plots,
        embeddings=False,
    )
    failed = [r for r in res["rows"] if r.get("error")]
    print(f"{len(res['rows'])} runs ({res['scheduler']}, {res['seconds_per_store']:.1f} s per "
          f"store) -> {res['csv']}")
    page = _sweep_comparison(res["rows"], args.out)
    if page is not None:
        print(f"comparison page (static, for sharing): {page}")
    for row in failed:
        print(f"failed: {row['store']}: {row['error']}", file=sys.stderr)
    return 1 if failed else 0

def _sweep_comparison(rows: list, out: str):
    """The static comparison page of a sweep's runs (needs the board's plotly), or None."""
    from pathlib import Path

    from .errors import MissingDependencyError

    ok = [r for r in rows if not r.get("error")]
    if not ok:
        return None
    try:
        from .board.static import write_comparison

        names = {Path(r["out"]).name: r["store"] for r in ok}
        return write_comparison(names, Path(out) / "comparison.html",
                                analyses={Path(r["out"]).name: r["out"] for r in ok})
    except (ImportError, MissingDependencyError):
        print("no comparison page: it needs the board extra "
              "(pip install -e '.[board]' in the hyperlapse clone)", file=sys.stderr)
        return None


# -- board ---------------------------------------------------------------------------------------
def _add_board(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "board",
        help="serve a live web board over a folder of runs (time-lapse, curves, comparison)",
        description="Serve a local web app over every trajectory store in DIR (new ones "
        "included), live while they record: the run list with each run's state, each run's "
        "time-lapse on the Poincare disk, its logged metrics and structure curves, and a "
        "comparison of runs. New snapshots are analysed in one background worker; outputs go "
        "to DIR/.hyperlapse-board/<run>/. A second board on the same folder only reads. "
        "Ctrl-C stops. Example: hyperlapse board runs/",
    )
    p.add_argument("dir", metavar="DIR", help="folder of runs (trajectory stores, *.zarr)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on "
                   "(default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=6060, help="port (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads of the background analysis (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the encoder (default: 0)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks for new "
                   "snapshots and stores (default: 1)")
    p.add_argument("--no-analysis", action="store_true", help="only show the stores and what "
                   "an earlier analysis wrote")
    p.set_defaults(func=_cmd_board)


def _cmd_board(args: argparse.Namespace) -> int:
    from .board.server import serve

    serve(args.dir, host=args.host, port=args.port, threads=args.threads, seed=args.seed,
          poll_s=args.poll, analyse=not args.no_analysis)
    return 0


# -- zoo and predict (weights as data) -----------------------------------------------------------
def _add_zoo(sub: argparse._SubParsersAction) -> None:
    from .zoo.builders import ZOOS

    names = "; ".join(f"{n}: {spec.description}" for n, spec in ZOOS.items())
    p = sub.add_parser(
        "zoo",
        help="build a zoo of small recorded MLPs (a data set of trajectories)",
        description="Train a population of small MLPs at once (stacked parameters, batched "
        "matmuls), recorded by the TrajectoryRecorder into a few population stores in OUT, "
        f"with their labels. Zoos: {names}. Data ships with scikit-learn or is generated; "
        "nothing is downloaded. Resumable: run the same command again after a kill and the "
        "build continues at the first unfinished block (nothing is duplicated).",
    )
    p.add_argument("name", choices=sorted(ZOOS), help="which zoo")
    p.add_argument("--out", required=True, help="zoo folder (created; resumed if it holds "
                   "the same zoo)")
    p.add_argument("--runs", type=int, default=None, help="number of runs (default: digits-inr "
                   "1797 (every image), sines 1000, digits-generalisation 300, sweep-* 300)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--shared-init", action="store_true", help="start every run from one "
                   "initialisation (the easy reference; default: each run its own)")
    p.add_argument("--block-size", type=int, default=None, help="runs trained together per "
                   "block, the unit of resumption (default: per zoo)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_zoo)


def _cmd_zoo(args: argparse.Namespace) -> int:
    import numpy as np

    from .zoo.builders import build_zoo

    zoo = build_zoo(args.name, args.out, runs=args.runs, seed=args.seed,
                    shared_init=args.shared_init, block_size=args.block_size, quiet=args.quiet)
    print(f"{zoo.name}: {len(zoo)} runs in {args.out}")
    if zoo and "psnr" in zoo[0].attrs:
        psnr = zoo.labels("psnr")
        print(f"PSNR mean {psnr.mean():.1f} dB (min {psnr.min():.1f})")
    if zoo and "test_acc" in zoo[0].attrs:
        acc = zoo.labels("test_acc")
        print(f"test accuracy mean {np.mean(acc):.3f} (range {np.min(acc):.3f}..{np.max(acc):.3f})")
    if zoo and "final_metric" in zoo[0].attrs:  # sweep zoos
        fin = zoo.labels("final_metric")
        print(f"final test metric median {np.median(fin):.3f} (range {np.min(fin):.3f}.."
              f"{np.max(fin):.3f}); diverged {int((zoo.labels('diverged_at') >= 0).sum())}")
    return 0


def _open_runs(paths: Sequence[str]) -> list:
    """Runs from store paths/globs and zoo folders (a zoo contributes every run)."""
    import os

    from .store.reader import open_trajectories
    from .zoo.reader import MANIFEST, open_zoo

    runs: list = []
    for path in paths:
        if os.path.isfile(os.path.join(path, MANIFEST)):
            runs += list(open_zoo(path))
        else:
            runs += open_trajectories(path)
    return runs


def _snapshots(text: str) -> str | float:
    if text in ("last", "all"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'last', 'all' or a fraction such as 0.2, got {text!r}") from None


_PREDICT_HELP = """\
Learn from a collection of recorded runs: map each run's trajectory (or its first part, or
its last snapshot) to a label. RUNS are trajectory stores (paths or globs such as
'sweep/*.zarr') and zoo folders. '--features encoder' trains the temporal encoder (with a
permutation-invariant readout and a small head) end to end on the target, batched over runs.
Example, early stopping of a sweep: after 20 % of each run,
rank the runs by predicted final accuracy:

  hyperlapse predict fit old-sweep/*.zarr --target metric:val_acc --task rank \\
      --snapshots 0.2 --out ranker.pt
  hyperlapse predict apply ranker.pt new-sweep/*.zarr
"""


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="learn a label from runs' trajectories and apply it",
                       description=_PREDICT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="predict_command", metavar="{fit,apply}", required=True)
    f = psub.add_parser(
        "fit", help="train a predictor on runs and their targets",
        description="Train a predictor (features of each run -> target), report its k-fold "
        "cross-validated score, and save it. Targets: 'attr:NAME' reads a store attribute or "
        "zoo label (e.g. attr:digit, attr:test_acc), 'metric:NAME' the last logged value of "
        "a metric (e.g. metric:val_acc).")
    f.add_argument("runs", nargs="+", metavar="RUNS", help="stores, globs or zoo folders")
    f.add_argument("--target", required=True, help="attr:NAME or metric:NAME")
    f.add_argument("--task", choices=["classify", "regress", "rank"], default="classify",
                   help="classify labels, regress numbers, or rank runs (Kendall tau) "
                   "(default: %(default)s)")
    f.add_argument("--snapshots", type=_snapshots, default="all", help="'last' (T = 1), "
                   "'all', or the first fraction of each run, e.g. 0.2 (default: %(default)s)")
    f.add_argument("--features",
                   choices=["stats", "loss-curve", "flat", "encoder", "probe-outputs"],
                   default="stats",
                   help="per-layer weight statistics per snapshot, the logged metrics only, "
                   "the raw weights, the temporal encoder trained end to end on the target "
                   "(a metanetwork; slower), or the network's outputs on --probes fixed probe "
                   "inputs (the baseline of a probe-reading encoder) (default: %(default)s)")
    f.add_argument("--model", choices=["gbt", "linear", "mlp", "head"], default=None,
                   help="gradient-boosted trees, linear, MLP, or (with --features encoder) the "
                   "encoder's own head trained with it (default: gbt; head for the encoder)")
    e = f.add_argument_group("encoder options (with --features encoder)")
    e.add_argument("--dim", type=int, default=8, help="embedding dimension d "
                   "(default: %(default)s)")
    e.add_argument("--manifold", choices=["poincare", "euclidean"], default="poincare",
                   help="hyperbolic, or the like-for-like flat switch (default: %(default)s)")
    e.add_argument("--epochs", type=int, default=30, help="training epochs "
                   "(default: %(default)s)")
    e.add_argument("--max-snapshots", type=int, default=4, help="snapshots per run the "
                   "encoder reads (default: %(default)s)")
    e.add_argument("--threads", type=int, default=1, help="torch threads "
                   "(default: %(default)s)")
    e.add_argument("--probes", type=int, default=None, help="probe inputs P: every neuron's "
                   "values on P fixed inputs become node features (a grid over [-1, 1]^n for "
                   "1-D/2-D inputs when P is a perfect power, e.g. 64 = 8 x 8, else seeded "
                   "uniform in [-1, 1]^n; N(0, 1) above 2-D); 0 = off. Also the probe count of "
                   "--features probe-outputs (default: 0 for the encoder, 64 for probe-outputs)")
    f.add_argument("--folds", type=int, default=5, help="cross-validation folds, 0 = skip "
                   "(default: %(default)s)")
    f.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    f.add_argument("--out", required=True, help="where to save the predictor (e.g. model.pt)")
    f.set_defaults(func=_cmd_predict_fit)
    a = psub.add_parser(
        "apply", help="apply a saved predictor to runs",
        description="Print one prediction per run (tab-separated: run, prediction); with "
        "--target also the score against the true targets. Load only predictors you trust "
        "(the scikit-learn model inside is pickled).")
    a.add_argument("model", metavar="MODEL", help="a predictor saved by 'predict fit'")
    a.add_argument("runs", nargs="+", metavar="RUNS", help="stores, globs or zoo folders")
    a.add_argument("--target", default=None, help="attr:NAME or metric:NAME to score against")
    a.add_argument("--json", action="store_true", help="print machine-readable JSON")
    a.set_defaults(func=_cmd_predict_apply)


def _cmd_predict_fit(args: argparse.Namespace) -> int:
    from .predict.predictor import cross_validate, fit_predictor, resolve_targets

    check_output_file(args.out, kind="the predictor file (--out)")  # before minutes of training
    runs = _open_runs(args.runs)
    targets = resolve_targets(runs, args.target)
    kw = dict(snapshots=args.snapshots, features=args.features, model=args.model)
    if args.features == "encoder":
        kw["feature_options"] = {"d": args.dim, "manifold": args.manifold,
                                 "epochs": args.epochs, "max_snapshots": args.max_snapshots,
                                 "threads": args.threads, "probes": args.probes or 0}
    elif args.features == "probe-outputs" and args.probes is not None:
        kw["feature_options"] = {"probes": args.probes}
    if args.folds:
        cv = cross_validate(runs, targets, args.task, folds=args.folds, seed=args.seed, **kw)
        mean = cv["mean"] if isinstance(cv["mean"], list) else [cv["mean"]]
        std = cv["std"] if isinstance(cv["std"], list) else [cv["std"]]
        text = ", ".join(f"{m:.4f} +- {s:.4f}" for m, s in zip(mean, std, strict=True))
        print(f"{args.folds}-fold cross-validated {cv['metric']}: {text}")
    predictor = fit_predictor(runs, targets, args.task, seed=args.seed, **kw)
    predictor.save(args.out)
    print(f"{predictor!r} on {len(runs)} runs -> {args.out}")
    return 0


def _cmd_predict_apply(args: argparse.Namespace) -> int:
    from .predict.predictor import Predictor, resolve_targets

    predictor = Predictor.load(args.model)
    runs = _open_runs(args.runs)
    pred = predictor.predict(runs)
    score = None
    if args.target:
        score = predictor.score(runs, resolve_targets(runs, args.target))
    rows = [{"run": getattr(r, "location", str(i)), "prediction": p.tolist()}
            for i, (r, p) in enumerate(zip(runs, pred, strict=True))]
    if args.json:
        print(json.dumps({"predictions": rows, "score": score}, indent=1))
        return 0
    for row in rows:
        print(f"{row['run']}\t{row['prediction']}")
    if score is not None:
        print(f"score: {score}")
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


_ADDERS = [
    _add_demo, _add_info, _add_compact, _add_analyze, _add_watch, _add_sweep, _add_zoo,
    _add_predict, _add_board,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HyperlapseError as exc:  # says what, got and what to do: no traceback
        print(f"hyperlapse {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the environment (disk full, a path gone), not a bug: no traceback
        print(f"hyperlapse {args.command}: error: {type(exc).__name__}: {exc}. Check the paths "
              f"and free space, then run the command again.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hyperlapse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
