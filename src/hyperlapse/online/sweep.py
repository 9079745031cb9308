"""Analyse many stores (a sweep) as one task per store, on dask.distributed or in-process.

:func:`analyze_sweep` runs :func:`~hyperlapse.online.analyze.analyze_store` on every store, each
into ``out/<store name>/``, and gathers one summary row per run into ``out/sweep.json`` and
``out/sweep.csv``: the final hyperbolic radius per layer, the mean drift per layer, the mean of
every prediction score over the run, and what the analysis cost. ``scheduler`` picks where the
tasks run: ``None`` in this process one after another, ``"local"`` a
``distributed.LocalCluster`` of single-threaded worker processes, or the address of a running
dask scheduler (``"tcp://host:8786"``). Each task encodes with one torch thread; the cluster
provides the parallelism.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, HyperlapseError, MissingDependencyError

__all__ = ["analyze_sweep", "summarise_reports"]


def summarise_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row of numbers from a run's reports (JSON-ready; None where undefined).

    Example:
        >>> reps = [{"step": s, "layers": [{"radius_mean": r, "drift_mean": d}],
        ...          "scores": {"link_ap": a}} for s, r, d, a in
        ...         [(0, 1.0, None, None), (5, 2.0, 0.5, 0.6), (10, 3.0, 0.25, 0.8)]]
        >>> row = summarise_reports(reps)
        >>> row["final_radius_l0"], row["drift_mean_l0"], round(row["mean_link_ap"], 3)
        (3.0, 0.375, 0.7)
        >>> summarise_reports([{"step": 0, "layers": [], "metrics": {"loss": 2.0}},
        ...                    {"step": 5, "layers": [], "metrics": {"loss": 0.5}}])["last_loss"]
        0.5
    """
    if not reports:
        return {"snapshots": 0}
    last = reports[-1]
    row: dict[str, Any] = {"snapshots": len(reports), "first_step": reports[0]["step"],
                           "last_step": last["step"]}
    for i, layer in enumerate(last.get("layers", [])):
        row[f"final_radius_l{i}"] = layer.get("radius_mean")
        drifts = [r["layers"][i].get("drift_mean") for r in reports if len(r["layers"]) > i]
        row[f"drift_mean_l{i}"] = _mean(drifts)
    keys = sorted({k for r in reports for k, v in r.get("scores", {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in keys:
        row[f"mean_{key}"] = _mean([r.get("scores", {}).get(key) for r in reports])
    # each score's baseline on the same candidates and snapshots, beside it
    from ..report.summary import score_table

    for entry in score_table(reports):
        row[f"mean_{entry['key']}_baseline"] = entry["baseline"]
    for i in range(len(last.get("layers", []))):
        rates = [r["layers"][i].get("drift_rate") for r in reports if len(r["layers"]) > i]
        row[f"drift_rate_l{i}"] = _mean(rates)
    # the user's own logged scalars (loss, val_acc, ...): last value, min and max over the run
    names = sorted({k for r in reports for k in (r.get("metrics") or {})})
    for name in names:
        values = [v for r in reports
                  if isinstance(v := (r.get("metrics") or {}).get(name), (int, float))
                  and not isinstance(v, bool) and math.isfinite(v)]
        row[f"last_{name}"] = values[-1] if values else None
        row[f"min_{name}"] = min(values) if values else None
        row[f"max_{name}"] = max(values) if values else None
    return row


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(nums) / len(nums) if nums else None


def _run_one(store: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
    """One task: analyse one store; errors come back as a row, so one bad run keeps the rest."""
    from ..report.jsonl import read_reports
    from .analyze import analyze_store

    start = time.perf_counter()
    row: dict[str, Any] = {"store": store, "out": out}
    try:
        res = analyze_store(store, out, quiet=True, threads=1, **options)
        row.update(summarise_reports(read_reports(res["reports"])))
        row["error"] = None
    except HyperlapseError as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = time.perf_counter() - start
    row["worker_pid"] = os.getpid()
    return row


def _names(stores: Sequence[str]) -> list[str]:
    """Output folder names: the store names, made unique where two runs share one."""
    names, seen = [], {}
    for store in stores:
        base = Path(str(store).rstrip("/")).name or "store"
        base = base[: -len(".zarr")] if base.endswith(".zarr") else base
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(base if n == 0 else f"{base}-{n}")
    return names


def analyze_sweep(
    stores: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    quiet: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Analyse every store as one task and gather a summary table.

    Args:
        stores: trajectory stores (paths or URLs).
        out: output folder; each run's report goes into ``out/<store name>/``.
        scheduler: None (in this process), ``"local"`` (a ``LocalCluster`` of ``workers``
            single-threaded processes), or a dask scheduler address.
        workers: processes of the local cluster (default: the CPU count, at most the runs).
        quiet: no progress output.
        **options: :func:`~hyperlapse.online.analyze.analyze_store` arguments (``plots``,
            ``stride``, ``d``, ...).

    Returns:
        ``{"rows": [...], "json": path, "csv": path, "seconds", "seconds_per_store",
        "scheduler"}``. A store that fails to analyse gives a row with its ``error``.

    Raises:
        ConfigError: no stores; MissingDependencyError: a scheduler without ``distributed``.
    """
    stores = [str(s) for s in stores]
    if not stores:
        raise ConfigError("Expected at least one store to analyse, got none.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [str(out / name) for name in _names(stores)]
    start = time.perf_counter()
    if scheduler is None:
        rows = []
        for i, (store, target) in enumerate(zip(stores, targets, strict=True)):
            rows.append(_run_one(store, target, options))
            if not quiet:
                print(f"[{i + 1}/{len(stores)}] {store}: {rows[-1]['seconds']:.1f} s"
                      + (f" ({rows[-1]['error']})" if rows[-1]["error"] else ""), flush=True)
        where = "in-process"
    else:
        rows, where = _on_dask(stores, targets, options, scheduler, workers, quiet)
    elapsed = time.perf_counter() - start
    table = {"rows": rows, "seconds": elapsed, "seconds_per_store": elapsed / len(stores),
             "scheduler": where}
    (out / "sweep.json").write_text(json.dumps(table, indent=2) + "\n")
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table["json"], table["csv"] = str(out / "sweep.json"), str(out / "sweep.csv")
    return table


def _on_dask(
    stores: list[str], targets: list[str], options: dict[str, Any], scheduler: str,
    workers: int | None, quiet: bool,
) -> tuple[list[dict[str, Any]], str]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise MissingDependencyError(
            "Running a sweep on a dask scheduler needs dask.distributed, which is not "
            "installed. Install it with: pip install -e '.[sweep]' in the hyperlapse clone "
            "(or run without "
            "--scheduler, in this process)."
        ) from exc
    cluster = None
    if scheduler == "local":
        n = workers or min(len(stores), os.cpu_count() or 1)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        where = f"LocalCluster({n} processes x 1 thread)"
    else:
        client = Client(scheduler)
        where = scheduler
    try:
        futures = {
            client.submit(_run_one, store, target, options, pure=False): i
            for i, (store, target) in enumerate(zip(stores, targets, strict=True))
        }
        rows: list[dict[str, Any] | None] = [None] * len(stores)
        for k, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            rows[i] = future.result()
            if not quiet:
                print(f"[{k}/{len(stores)}] {stores[i]}: {rows[i]['seconds']:.1f} s", flush=True)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return [r for r in rows if r is not None], where
