"""Forecasting links, new links and sign flips of training MLPs: honest baselines vs the model.

Protocol
--------
Tasks (scikit-learn's bundled data, nothing downloaded): digits 64-32-32-10 (classification),
diabetes 10-32-32-1 (regression), moons 2-32-32-2 (2-D classification). For every task, seed and
*spacing* (1, 5 or 25 SGD steps between snapshots), a tanh MLP is trained with SGD (momentum 0.9,
batch 64) and ``snapshots`` snapshots are kept in memory. The first ``split`` snapshots are the
past a model may train on; origins ``t >= split`` are evaluated, predicting snapshot ``t + h``
from snapshots ``<= t`` at horizons ``h`` = 1, 5 and 20 snapshots.

Targets, candidates and baselines are those of :mod:`hyperlapse.train.forecast` (one definition,
shared with the online reports): links (top 20 % of ``|w|`` per layer), new links (among the
non-links of ``t``) and sign flips (among the edges with ``w_t != 0``), every candidate scored,
nothing sampled. Baselines: persistence and linear extrapolation normalised per layer by the link
threshold, EdgeBank ("was ever a link", ``|w|`` tie-break), and a logistic regression on recent
deltas refitted at every origin on the latest outcomes already observed.

Model: a TemporalEncoder (``d`` = 8, change features and time gaps as inputs) fitted
self-supervised on the first ``split`` snapshots, then a change-aware decoder
(:class:`hyperlapse.nn.change_decoder.ChangeDecoder`): the extrapolation baseline plus a learned
correction from the endpoints' embeddings and the edge's recent history, zero at
initialisation, trained on the origins whose outcome lies before ``split``. Run on the ball
(c = 1) and in flat space (like for like), and without embeddings (``history-only``: the same
decoder on the edge history alone, isolating what the embeddings add).

Metrics per origin: AUC and AP (and the base rate) on each target's candidates; mean over origins
per run, then mean and standard deviation over seeds.

Cost: every job runs with ``torch.set_num_threads(1)``; the full setting takes a few minutes on
2 cores (``--workers 2``); ``--quick`` (1 seed, spacing 5, 10 snapshots, d = 2) runs in seconds
and is the smoke test in ``tests/train``.

Usage: ``python benchmarks/link_sign_prediction.py [--quick] [--out PATH] [--workers N]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hyperlapse import describe_mlp
from hyperlapse.graph.temporal import TemporalParameterGraph
from hyperlapse.nn.change_decoder import ChangeDecoder
from hyperlapse.train.fit import fit_encoder
from hyperlapse.train.forecast import (
    BASELINES,
    EDGE_FEATURES,
    TARGETS,
    RunForecasts,
    decoder_scores,
    fit_change_decoder,
    forecast_metrics,
    select_reference,
)
from hyperlapse.train.synthetic import make_mlp, train_states

FULL = {
    "tasks": ["digits", "diabetes", "moons"],
    "seeds": [0, 1, 2],
    "spacings": [1, 5, 25],
    "horizons": [1, 5, 20],
    "snapshots": 48,
    "split": 24,
    "geometries": ["poincare", "euclidean"],
    "d": 8,
    "encoder_epochs": 2,
    "decoder_epochs": 150,
    "lr": 0.05,
}
QUICK = {
    **FULL,
    "seeds": [0],
    "spacings": [5],
    "horizons": [1, 2],
    "snapshots": 10,
    "split": 6,
    "d": 2,
    "encoder_epochs": 1,
    "decoder_epochs": 5,
}
HIDDEN = 32
Q = 0.2
MODELS = ("poincare", "euclidean", "history-only")


# ------------------------------------------------------------------------------- trajectories
def task_data(task: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, int, object]:
    """Inputs, targets, output width and loss of a task (scikit-learn bundled data only)."""
    from sklearn.datasets import load_diabetes, load_digits, make_moons

    if task == "digits":
        x, y = load_digits(return_X_y=True)
        return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y), 10, F.cross_entropy
    if task == "diabetes":
        x, y = load_diabetes(return_X_y=True)
        x = (x - x.mean(0)) / x.std(0)
        y = (y - y.mean()) / y.std()
        xt = torch.tensor(x, dtype=torch.float32)
        yt = torch.tensor(y, dtype=torch.float32).unsqueeze(1)
        return xt, yt, 1, F.mse_loss
    if task == "moons":
        x, y = make_moons(n_samples=512, noise=0.2, random_state=seed)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y), 2, F.cross_entropy
    raise ValueError(f"Unknown task {task!r}.")


def make_run(task: str, seed: int, snapshots: int, every: int, lr: float = 0.05):
    """A recorded SGD run of the task's MLP: ``snapshots`` states ``every`` steps apart."""
    x, y, out, loss = task_data(task, seed)
    widths = [x.shape[1], HIDDEN, HIDDEN, out]
    torch.manual_seed(seed)
    model = make_mlp(widths)
    states, steps = train_states(
        model, x, y, loss, steps=(snapshots - 1) * every, every=every, lr=lr, batch_size=64,
        seed=seed,
    )
    return TemporalParameterGraph.from_states(states, describe_mlp(model), steps=steps)


# ------------------------------------------------------------------------------- evaluation
def _evaluate(score_fn, rf: RunForecasts, horizons, split: int) -> dict:
    """``{h: {target: {"auc", "ap", "base_rate"}}}``: means over the origins ``t >= split``."""
    out = {}
    for h in horizons:
        rows = []
        for t in rf.origins(h, split):
            scores = score_fn(t, h)
            if scores is not None:
                rows.append(forecast_metrics(scores, rf.targets(t, h)))
        out[str(h)] = {
            name: {
                k: _nanmean([r[name][k] for r in rows]) for k in ("auc", "ap", "base_rate")
            }
            for name in TARGETS
        } | {"origins": len(rows)}
    return out


def _nanmean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def job(args: tuple) -> dict:
    """One (task, seed, spacing): baselines and models on the same candidates."""
    task, seed, spacing, cfg = args
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run = make_run(task, seed, cfg["snapshots"], spacing, cfg["lr"])
    weights = torch.stack([run.edge_weights(t) for t in range(len(run))]).to(torch.float64)
    edge_layer, edge_index = run.edge_layer, run.edge_index
    rf = RunForecasts(weights, edge_layer, q=Q, gap=float(spacing))
    horizons, split = cfg["horizons"], cfg["split"]
    methods: dict[str, dict] = {}
    cache: dict[tuple[int, int], dict] = {}

    def baseline(name):
        def score(t, h):
            if (t, h) not in cache:
                cache[(t, h)] = rf.baselines(t, h)
            return cache[(t, h)].get(name)

        return score

    for name in BASELINES:
        methods[name] = _evaluate(baseline(name), rf, horizons, split)
    fit_s = {}
    # the decoders start from the closed-form baseline that was strongest on the past
    choice = select_reference([rf], horizons, start=1, stop=split, recent=split // 4)
    for model in MODELS:
        t1 = time.perf_counter()
        z, manifold, d = None, None, 0
        if model != "history-only":
            train = TemporalParameterGraph(run.source, run.architecture, stop=split)
            enc = fit_encoder(
                train, d=cfg["d"], manifold=model, epochs=cfg["encoder_epochs"], seed=seed,
                lr=1e-2, progress=False,
            )
            z = enc.embed(run).z.to(torch.float64)
            manifold, d = enc.manifold, cfg["d"]
        else:
            from hyperlapse.geometry.ball import make_manifold

            manifold = make_manifold("euclidean")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dec = ChangeDecoder(d, len(EDGE_FEATURES), len(TARGETS), manifold=manifold).double()
        losses = fit_change_decoder(
            dec, [(rf, z, edge_index)], horizons, start=1, stop=split,
            epochs=cfg["decoder_epochs"], choice=choice, seed=seed,
        )
        methods[model] = _evaluate(
            lambda t, h, dec=dec, z=z: decoder_scores(dec, rf, z, edge_index, t, h, choice),
            rf, horizons, split,
        )
        methods[model]["decoder_loss"] = [losses[0], losses[-1]]
        methods[model]["decoder_epoch"] = dec.fit_info["epoch"]
        fit_s[model] = round(time.perf_counter() - t1, 2)
    return {
        "task": task,
        "seed": seed,
        "spacing": spacing,
        "widths": run.widths,
        "num_edges": int(weights.shape[1]),
        "methods": methods,
        "reference": {str(h): c for h, c in choice.items()},
        "fit_s": fit_s,
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def embedding_job(args: tuple) -> dict:
    """Like-for-like geometry check of the embedding itself: the encoder's Fermi-Dirac head on
    ``z_t`` (encoder output) scoring the links of ``t + 1`` over every edge, t >= split."""
    task, seed, d, manifold, cfg = args
    torch.set_num_threads(1)
    spacing = cfg["geometry_spacing"]
    run = make_run(task, seed, cfg["snapshots"], spacing, cfg["lr"])
    train = TemporalParameterGraph(run.source, run.architecture, stop=cfg["split"])
    t0 = time.perf_counter()
    enc = fit_encoder(train, d=d, manifold=manifold, epochs=cfg["encoder_epochs"], seed=seed,
                      lr=1e-2, progress=False)
    z = enc.embed(run).z
    aucs, aps = [], []
    for t in range(cfg["split"], len(run) - 1):
        links = run.links(t + 1, Q)
        with torch.no_grad():
            logits = enc.link_head(z[t], run.edge_index)
        m = forecast_metrics({"link": logits}, rf_targets(run, t))
        aucs.append(m["link"]["auc"])
        aps.append(m["link"]["ap"])
        assert int(links.sum()) == m["link"]["positives"]
    return {"task": task, "seed": seed, "d": d, "manifold": manifold, "spacing": spacing,
            "head_link_auc": _nanmean(aucs), "head_link_ap": _nanmean(aps),
            "fit_s": round(time.perf_counter() - t0, 2)}


def rf_targets(run, t: int):
    """Forecast targets of ``t -> t + 1`` from a run's edge weights."""
    from hyperlapse.train.forecast import forecast_targets

    return forecast_targets(run.edge_weights(t), run.edge_weights(t + 1), run.edge_layer, Q)


# ------------------------------------------------------------------------------- aggregation
def aggregate(results: list[dict]) -> list[dict]:
    """Mean and std over seeds per (task, spacing, horizon, method, target)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        for method, per_h in r["methods"].items():
            for h, per_target in per_h.items():
                if not h.isdigit():
                    continue
                for target in TARGETS:
                    key = (r["task"], r["spacing"], int(h), method, target)
                    groups.setdefault(key, []).append(per_target[target])
    rows = []
    for (task, spacing, h, method, target), vals in sorted(groups.items()):
        row = {"task": task, "spacing": spacing, "horizon": h, "method": method, "target": target,
               "seeds": len(vals)}
        for k in ("ap", "auc", "base_rate"):
            xs = [v[k] for v in vals if not math.isnan(v[k])]
            row[k] = float(np.mean(xs)) if xs else math.nan
            row[k + "_std"] = float(np.std(xs)) if len(xs) > 1 else (0.0 if xs else math.nan)
        rows.append(row)
    return rows


def verdicts(rows: list[dict], model: str) -> list[dict]:
    """Per (task, spacing, horizon >= 5, target in new_link/sign_flip): does ``model`` beat the
    strongest baseline's mean AP by more than the larger of the two seed spreads?"""
    index = {(r["task"], r["spacing"], r["horizon"], r["method"], r["target"]): r for r in rows}
    out = []
    cells = {(r["task"], r["spacing"], r["horizon"], r["target"]) for r in rows}
    for task, spacing, h, target in sorted(cells):
        if h < 5 or target == "link" or (task, spacing, h, model, target) not in index:
            continue
        m = index[(task, spacing, h, model, target)]
        base = [index[(task, spacing, h, b, target)] for b in BASELINES
                if (task, spacing, h, b, target) in index]
        base = [b for b in base if not math.isnan(b["ap"])]
        if not base or math.isnan(m["ap"]):
            continue
        best = max(base, key=lambda b: b["ap"])
        margin = m["ap"] - best["ap"]
        spread = max(m["ap_std"], best["ap_std"])
        out.append({"task": task, "spacing": spacing, "horizon": h, "target": target,
                    "model_ap": m["ap"], "best_baseline": best["method"], "best_ap": best["ap"],
                    "margin": margin, "spread": spread, "beats": margin > spread})
    return out


# ------------------------------------------------------------------------------- report
def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads_per_job": 1,
    }


def _cell(row: dict | None) -> str:
    if row is None or math.isnan(row["ap"]):
        return "-"
    return f"{row['ap']:.3f}±{row['ap_std']:.3f} ({row['auc']:.3f})"


def table(rows: list[dict], target: str) -> str:
    """Markdown: one line per (task, spacing, horizon); AP ± std (AUC) per method."""
    methods = [*BASELINES, *MODELS]
    index = {(r["task"], r["spacing"], r["horizon"], r["method"]): r
             for r in rows if r["target"] == target}
    lines = [
        "| task | spacing | h | base rate | " + " | ".join(methods) + " |",
        "|" + "---|" * (len(methods) + 4),
    ]
    keys = sorted({(r["task"], r["spacing"], r["horizon"]) for r in rows},
                  key=lambda k: (k[0], k[1], k[2]))
    for task, spacing, h in keys:
        any_row = index.get((task, spacing, h, "persistence"))
        rate = "-" if any_row is None else f"{any_row['base_rate']:.4f}"
        cells = [_cell(index.get((task, spacing, h, m))) for m in methods]
        lines.append(f"| {task} | {spacing} | {h} | {rate} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def geometry_comparison(rows: list[dict]) -> dict:
    """Cells (task, spacing, h >= 5, rare target) where the ball's mean AP is >= flat space's."""
    index = {(r["task"], r["spacing"], r["horizon"], r["method"], r["target"]): r for r in rows}
    cells = []
    for (task, spacing, h, method, target), r in index.items():
        if method != "poincare" or target == "link":
            continue
        e = index.get((task, spacing, h, "euclidean", target))
        if e is None or math.isnan(r["ap"]) or math.isnan(e["ap"]):
            continue
        cells.append({"task": task, "spacing": spacing, "horizon": h, "target": target,
                      "poincare": r["ap"], "euclidean": e["ap"], "diff": r["ap"] - e["ap"],
                      "spread": max(r["ap_std"], e["ap_std"])})
    return {
        "cells": len(cells),
        "poincare_ge": sum(c["diff"] >= 0 for c in cells),
        "poincare_better_beyond_spread": sum(c["diff"] > c["spread"] for c in cells),
        "euclidean_better_beyond_spread": sum(-c["diff"] > c["spread"] for c in cells),
        "identical": sum(c["diff"] == 0 for c in cells),
        "per_cell": cells,
    }


def markdown(report: dict) -> str:
    """The results summary written next to the JSON."""
    rows = report["summary"]
    cfg = report["settings"]
    mach = report["machine"]
    lines = [
        "# Forecasting links, new links and sign flips: baselines vs the change-aware model",
        "",
        f"Generated by `benchmarks/link_sign_prediction.py` ({report['mode']} mode). Machine: "
        f"{mach['processor']}, {mach['cpu_count']} cores **shared with other jobs running** "
        f"(several engineers' test suites and benchmarks), {mach['platform']}, Python "
        f"{mach['python']}, torch {mach['torch']}; every job runs with "
        f"`torch.set_num_threads(1)`, {cfg['workers']} worker processes. Wall time "
        f"{report['wall_s']} s (on the shared machine; the accuracy figures do not depend on it).",
        "",
        f"Setting: tasks {cfg['tasks']}, seeds {cfg['seeds']}, snapshots {cfg['snapshots']} "
        f"spaced {cfg['spacings']} SGD steps apart, horizons {cfg['horizons']} snapshots, "
        f"models trained on snapshots < {cfg['split']} and evaluated on origins >= "
        f"{cfg['split']}; d = {cfg['d']}. Cells: AP ± std over seeds (AUC), mean over origins; "
        "base rate = fraction of positives among the candidates (the AP of a random ranking).",
        "",
    ]
    for target, title in (("new_link", "New links"), ("sign_flip", "Sign flips"),
                          ("link", "Links (all edges)")):
        lines += [f"## {title}", "", table(rows, target), ""]
    lines += ["## Targets", ""]
    for model in MODELS:
        v = report["verdicts"][model]
        wins = [c for c in v if c["beats"]]
        margins = [c["margin"] for c in v]
        if not margins:
            lines.append(f"* **{model}**: no cell with h >= 5 in this setting.")
            continue
        lines.append(
            f"* **{model}** beats the strongest baseline's AP by more than the seed spread in "
            f"{len(wins)} of {len(v)} cells (h >= 5, new links and sign flips; margin over the "
            f"best baseline: median {np.median(margins):+.3f}, best {max(margins):+.3f}, worst "
            f"{min(margins):+.3f})."
        )
    g = report["geometry"]
    lines += [
        "",
        f"Hyperbolic vs Euclidean (d = {cfg['d']}, same cells): ball AP >= flat AP in "
        f"{g['poincare_ge']} of {g['cells']} (identical in {g['identical']}: both decoders kept "
        f"their untrained start, the baseline); ball better by more than the spread in "
        f"{g['poincare_better_beyond_spread']}, flat better by more than the spread in "
        f"{g['euclidean_better_beyond_spread']}.",
    ]
    return "\n".join(lines) + "\n"


def _rounded(value, digits: int = 4):
    """Floats rounded for the results file (NaN -> null)."""
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, digits)
    return value


def geometry_check(cfg: dict, dims: list[int], args) -> dict:
    """Ball vs flat space, like for like, on the embedding's own link head (d in ``dims``)."""
    cfg = dict(cfg, geometry_spacing=5)
    t0 = time.perf_counter()
    jobs = [(task, seed, d, m, cfg) for task in cfg["tasks"] for d in dims
            for m in ("poincare", "euclidean") for seed in cfg["seeds"]]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(embedding_job, jobs))
    else:
        results = [embedding_job(j) for j in jobs]
    lines = ["| task | d | ball link AUC | flat link AUC | ball link AP | flat link AP |",
             "|---|---|---|---|---|---|"]
    for task in cfg["tasks"]:
        for d in dims:
            cell = {}
            for m in ("poincare", "euclidean"):
                rs = [r for r in results if (r["task"], r["d"], r["manifold"]) == (task, d, m)]
                cell[m] = {k: (np.mean([r[k] for r in rs]), np.std([r[k] for r in rs]))
                           for k in ("head_link_auc", "head_link_ap")}
            fmt = [f"{cell[m][k][0]:.3f}±{cell[m][k][1]:.3f}" for k in ("head_link_auc",
                   "head_link_ap") for m in ("poincare", "euclidean")]
            lines.append(f"| {task} | {d} | {fmt[0]} | {fmt[1]} | {fmt[2]} | {fmt[3]} |")
    report = {"benchmark": "link_sign_prediction/geometry", "machine": machine(),
              "settings": dict(cfg) | {"dims": dims}, "results": results,
              "table": "\n".join(lines), "wall_s": round(time.perf_counter() - t0, 1)}
    print(report["table"])
    if args.out is not None or not args.quick:
        out = args.out or Path(__file__).parent / "results" / "link_sign_prediction_geometry.json"
        out.write_text(json.dumps(_rounded(report), indent=1))
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny setting (a smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON path")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--geometry-dims", type=str, default=None,
                        help="only the embedding geometry check at these d (e.g. 2,4,8)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.geometry_dims:
        return geometry_check(cfg, [int(d) for d in args.geometry_dims.split(",")], args)
    out = args.out
    if out is None and not args.quick:
        out = Path(__file__).parent / "results" / "link_sign_prediction.json"
    t0 = time.perf_counter()
    jobs = [(task, seed, spacing, cfg) for task in cfg["tasks"] for spacing in cfg["spacings"]
            for seed in cfg["seeds"]]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(job, jobs))
    else:
        results = [job(j) for j in jobs]
    rows = aggregate(results)
    report = {
        "benchmark": "link_sign_prediction",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "settings": dict(cfg) | {"hidden": HIDDEN, "q": Q, "workers": args.workers},
        "results": results,
        "summary": rows,
        "verdicts": {m: verdicts(rows, m) for m in MODELS},
        "geometry": geometry_comparison(rows),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    for target in ("new_link", "sign_flip"):
        print(f"\n{target}: AP ± std over seeds (AUC)")
        print(table(rows, target))
    print(f"wall {report['wall_s']} s")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_rounded(report), indent=1))
        out.with_suffix(".md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
