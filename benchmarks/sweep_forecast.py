"""Forecast a sweep early: hyperlapse against ASHA's cut and learning-curve extrapolation.

Sweep zoos (``hyperlapse.zoo.sweeps``: digits, breast cancer, a generated 4-class problem, a
generated regression; random search over optimizer, learning rate, width, depth, batch size,
weight decay, initialisation scale and label noise; every run recorded with
``TrajectoryRecorder``). Target: each run's final metric on a test split no predictor sees.

Predictors at a cut of 10, 20 and 50 % of the planned steps, all on the same runs and splits:

* baselines: the validation metric at the cut (ASHA's signal, no model); learning-curve
  extrapolation (pow3 / exp3 / log-power fits to the validation curve up to the cut, averaged,
  Domhan-style, fallback the last value; no model); the curve's features with gradient-boosted
  trees (GBT); the hyperparameters alone (GBT); curve + hyperparameters (GBT);
* hyperlapse: weight-trajectory features up to the cut (T > 1: per-layer norms, distance moved,
  update ratios and directions, per-layer statistics at the cut) alone, with the curve, and
  with curve + hyperparameters (GBT); the temporal encoder (``features="encoder"``, trained end
  to end) alone and with the curve, on a subset (``--encoder``; its cost is reported).

Protocols, each seed its own order of the runs: ``within`` a sweep (fitted on the half of the
runs that finished first, ranks the other half at their cut); ``transfer`` (fitted on the other
tasks' sweeps, features standardised within each sweep and targets as within-sweep rank
quantiles, applied to the same held-out half of the held-out task).

Decisions on the held-out runs: Kendall tau with the final test metric; recall of the true top
10 % when keeping the predicted top 30 %; and two simulated sweeps that cut with each predictor:
one cut at 20 % (keep the predicted top k, train them to the end) and successive halving with
rungs at 10 / 20 / 50 % (keep a fraction q at each rung). For each, the least compute (optimizer
steps, as a fraction of training every run to the end) whose finished runs still hold one within
0.005 (0.5 accuracy points / 0.005 R^2) of the best final test metric; the same rule with the
validation metric at the cut is ASHA's. Compute savings are per seed against ASHA.

Usage: ``python benchmarks/sweep_forecast.py [--quick] [--out DIR] [--work DIR] [--encoder]``.
``--quick`` (the smoke test) uses tiny sweeps and two seeds and writes nothing unless ``--out``.
The published run: ``nice -n 5 python benchmarks/sweep_forecast.py --work W`` (every row but the
encoder's), then ``--encoder-only --work W`` (the encoder rows on sweep-digits, written to
``sweep_forecast_encoder.json``; the zoo in ``W`` is reused) and ``--render`` (the markdown from
both files).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # a shared 2-core machine: one thread per fit

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hyperlapse.predict.sweep_forecast import (  # noqa: E402
    CUTS,
    curve_features,
    cut_length,
    make_regressor,
    trajectory_features,
)
from hyperlapse.zoo import build_zoo  # noqa: E402
from hyperlapse.zoo.sweeps import SWEEP_TASKS  # noqa: E402

FULL = {"tasks": list(SWEEP_TASKS), "runs": 300, "scale": 1.0, "seeds": [0, 1, 2, 3, 4],
        "encoder_task": "sweep-digits", "encoder_seeds": [0, 1, 2],
        "encoder": {"epochs": 8, "max_snapshots": 3, "layers": 1, "heads": 1, "lr": 0.01,
                    "batch_size": 32, "sparsify_k": 8, "threads": 1, "d": 8}}
QUICK = {"tasks": ["sweep-digits", "sweep-friedman"], "runs": 12, "scale": 0.25, "gbt_iter": 40,
         "seeds": [0, 1], "encoder_task": "sweep-digits", "encoder_seeds": [0],
         "encoder": {"epochs": 1, "max_snapshots": 2, "layers": 1, "heads": 1, "lr": 0.01,
                     "batch_size": 32, "sparsify_k": 4, "threads": 1, "d": 4}}
NEAR = 0.005  # "within 0.5 %" of the best final test metric: 0.5 accuracy points / R^2 units
K_CURVE = 5
VAL_COL = K_CURVE  # the curve row: k resampled metric values, then the last one

BASELINES = ["validation metric at the cut (ASHA's signal)",
             "curve extrapolation (pow3/exp3/log-power)",
             "curve features (GBT)", "hyperparameters alone (GBT)",
             "curve + hyperparameters (GBT)"]
HYPERLAPSE = ["hyperlapse: weight trajectory (GBT)",
              "hyperlapse: weight trajectory + curve (GBT)",
              "hyperlapse: weight trajectory + curve + hyperparameters (GBT)"]
PRIMARY = "hyperlapse: weight trajectory + curve (GBT)"  # forecast_sweep's default, fixed a priori
ASHA = BASELINES[0]
BLOCKS = {"curve features (GBT)": ("C",), "hyperparameters alone (GBT)": ("H",),
          "curve + hyperparameters (GBT)": ("C", "H"),
          "hyperlapse: weight trajectory (GBT)": ("T",),
          "hyperlapse: weight trajectory + curve (GBT)": ("T", "C"),
          "hyperlapse: weight trajectory + curve + hyperparameters (GBT)": ("T", "C", "H")}


def hparam_rows(runs: list[Any]) -> np.ndarray:
    a = lambda k: np.asarray([r.attrs[k] for r in runs])  # noqa: E731
    return np.stack([np.log10(a("lr")), (a("optimizer") == "adam").astype(float),
                     np.log2(a("width")), a("depth"), np.log2(a("batch_size")),
                     np.log10(a("weight_decay")), np.log10(a("init_scale")), a("label_noise")],
                    1).astype(np.float64)


def task_features(runs: list[Any], cuts: tuple[float, ...]) -> dict[str, Any]:
    planned = int(runs[0].attrs["planned_steps"])
    out: dict[str, Any] = {"H": hparam_rows(runs),
                           "y": np.asarray([r.attrs["final_metric"] for r in runs], float)}
    for cut in cuts:
        n = [cut_length(r, cut, planned) for r in runs]
        out[("C", cut)] = np.stack([curve_features(r, m, planned, "val_metric", k=K_CURVE)
                                    for r, m in zip(runs, n, strict=True)])
        out[("T", cut)] = np.stack([trajectory_features(r, m)
                                    for r, m in zip(runs, n, strict=True)])
        out[("n", cut)] = n
    return out


def _block(F: dict[str, Any], name: str, cut: float) -> np.ndarray:
    return F["H"] if name == "H" else F[(name, cut)]


def _design(F: dict[str, Any], blocks: tuple[str, ...], cut: float, idx: np.ndarray,
            standardise: bool) -> np.ndarray:
    X = np.concatenate([_block(F, b, cut)[idx] for b in blocks], 1)
    if standardise:  # transfer: every feature on the scale of its own sweep
        X = (X - X.mean(0)) / (X.std(0) + 1e-9)
    return X


def _rank_quantile(y: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return (rankdata(y) - 0.5) / len(y)


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs that finished first (fit) and those still running (ranked), for one seed."""
    order = np.random.default_rng([seed, 99]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def recall_top(y: np.ndarray, score: np.ndarray, top: float = 0.1, keep: float = 0.3) -> float:
    n = len(y)
    true = set(np.argsort(-y, kind="stable")[: max(1, round(top * n))].tolist())
    kept = set(np.argsort(-score, kind="stable")[: max(1, round(keep * n))].tolist())
    return len(true & kept) / len(true)


def one_cut_cost(y: np.ndarray, score: np.ndarray, cut: float = 0.2) -> float:
    """Least compute (fraction of the full sweep) of one cut at ``cut`` that keeps a near-best
    run: every run to the cut, the predicted top k to the end, k as small as it can be."""
    n, best = len(y), y.max()
    order = np.argsort(-score, kind="stable")
    running = np.maximum.accumulate(y[order])
    k = int(np.argmax(running >= best - NEAR)) + 1
    return (n * cut + k * (1 - cut)) / n


def halving_cost(y: np.ndarray, scores: dict[float, np.ndarray],
                 cuts: tuple[float, ...] = CUTS) -> float:
    """Least compute of successive halving with rungs at ``cuts`` keeping a fraction q at each
    rung (the same q at every rung, the smallest that keeps a near-best run)."""
    n, best = len(y), y.max()
    costs = []
    for q in np.linspace(0.02, 1.0, 50):
        alive = np.arange(n)
        spent, prev = 0.0, 0.0
        for c in cuts:
            spent += len(alive) * (c - prev)
            prev = c
            k = max(1, math.ceil(q * len(alive) - 1e-9))
            alive = alive[np.argsort(-scores[c][alive], kind="stable")[:k]]
        spent += len(alive) * (1 - prev)
        if y[alive].max() >= best - NEAR:
            costs.append(spent / n)
    return min(costs)


def evaluate(all_F: dict[str, dict[str, Any]], cfg: dict[str, Any],
             encoder: dict[Any, dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Every predictor, protocol, task, cut and seed: raw per-seed values."""
    from scipy.stats import kendalltau

    raw: dict[str, Any] = {}
    tasks = list(all_F)
    gbt_iter = cfg.get("gbt_iter", 150)
    for proto in ("within", "transfer"):
        if proto == "transfer" and len(tasks) < 2:
            continue
        for task in tasks:
            F = all_F[task]
            y = F["y"]
            for seed in cfg["seeds"]:
                fit_idx, test_idx = split(len(y), seed)
                scores: dict[str, dict[float, np.ndarray]] = {}
                for cut in CUTS:
                    C = F[("C", cut)]
                    scores.setdefault(ASHA, {})[cut] = C[test_idx, VAL_COL]
                    scores.setdefault(BASELINES[1], {})[cut] = C[test_idx, -1]
                    for name, blocks in BLOCKS.items():
                        if proto == "within":
                            X = _design(F, blocks, cut, fit_idx, False)
                            model = make_regressor(len(X), seed, gbt_iter).fit(X, y[fit_idx])
                            Xt = _design(F, blocks, cut, test_idx, False)
                        else:
                            Xs, ys = [], []
                            for other in tasks:
                                if other == task:
                                    continue
                                G = all_F[other]
                                every = np.arange(len(G["y"]))
                                Xs.append(_design(G, blocks, cut, every, True))
                                ys.append(_rank_quantile(G["y"]))
                            X, yy = np.concatenate(Xs), np.concatenate(ys)
                            model = make_regressor(len(X), seed, gbt_iter).fit(X, yy)
                            Xt = _design(F, blocks, cut, test_idx, True)
                        scores.setdefault(name, {})[cut] = model.predict(Xt)
                    enc = (encoder or {}).get((proto, task, seed, cut))
                    if enc:
                        scores.update({k: {**scores.get(k, {}), cut: v} for k, v in enc.items()})
                yt = y[test_idx]
                for name, by_cut in scores.items():
                    key = f"{proto}|{task}|{name}"
                    row = raw.setdefault(key, {})
                    for cut, s in by_cut.items():
                        tau = float(kendalltau(yt, s).statistic)
                        # a constant forecast (tiny --quick fits) ranks nothing: tau 0, not NaN
                        row.setdefault(f"kendall@{cut}", []).append(
                            tau if math.isfinite(tau) else 0.0)
                        row.setdefault(f"recall@{cut}", []).append(recall_top(yt, s))
                    if 0.2 in by_cut:
                        row.setdefault("one_cut_cost@0.2", []).append(
                            one_cut_cost(yt, by_cut[0.2]))
                    if all(c in by_cut for c in CUTS):
                        row.setdefault("halving_cost", []).append(halving_cost(yt, by_cut))
    return raw


def encoder_scores(runs: list[Any], F: dict[str, Any], cfg: dict[str, Any], task: str
                   ) -> tuple[dict[Any, dict[str, np.ndarray]], dict[str, float]]:
    """The temporal encoder (trained end to end) at the 20 % cut, within-sweep protocol."""
    from hyperlapse.predict.encoder import EncoderFeatures

    y = F["y"]
    cut = 0.2
    out: dict[Any, dict[str, np.ndarray]] = {}
    k = cfg["encoder"]["max_snapshots"]
    indices = [np.round(np.linspace(0, n - 1, k)).astype(np.int64) for n in F[("n", cut)]]
    times = []
    for seed in cfg["encoder_seeds"]:
        fit_idx, test_idx = split(len(y), seed)
        t0 = time.perf_counter()
        ext = EncoderFeatures(**cfg["encoder"])
        head = ext.fit([runs[i] for i in fit_idx], [indices[i] for i in fit_idx], y[fit_idx],
                       "regress", seed=seed)
        rows_fit = ext([runs[i] for i in fit_idx], [indices[i] for i in fit_idx])
        rows_test = ext([runs[i] for i in test_idx], [indices[i] for i in test_idx])
        alone = np.asarray(head.predict(rows_test), dtype=np.float64).reshape(-1)
        C = F[("C", cut)]
        X = np.concatenate([rows_fit, C[fit_idx]], 1)
        model = make_regressor(len(X), seed).fit(X, y[fit_idx])
        both = model.predict(np.concatenate([rows_test, C[test_idx]], 1))
        times.append(time.perf_counter() - t0)
        out[("within", task, seed, cut)] = {
            "hyperlapse: temporal encoder (end to end)": alone,
            "hyperlapse: temporal encoder readout + curve (GBT)": both}
    return out, {"seconds_per_fit_median": float(np.median(times)), "fits": len(times),
                 "runs_fitted": len(y) // 2}


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, row in raw.items():
        out[key] = {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v),
                        "values": [round(x, 4) for x in v]} for m, v in row.items()}
    return out


def savings(raw: dict[str, Any], proto: str, task: str, name: str, metric: str
            ) -> dict[str, float] | None:
    a = raw.get(f"{proto}|{task}|{name}", {}).get(metric)
    b = raw.get(f"{proto}|{task}|{ASHA}", {}).get(metric)
    if not a or not b:
        return None
    s = 1 - np.asarray(a) / np.asarray(b)
    return {"mean": float(s.mean()), "std": float(s.std())}


def goals(raw: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """The issue's two targets at 20 %, per protocol and task, for the primary predictor."""
    out: dict[str, Any] = {}
    for proto in ("within", "transfer"):
        for task in tasks:
            pk = f"{proto}|{task}|{PRIMARY}"
            if pk not in raw:
                continue
            base = {b: np.mean(raw[f"{proto}|{task}|{b}"]["kendall@0.2"]) for b in BASELINES
                    if f"{proto}|{task}|{b}" in raw}
            strongest = max(base, key=base.get)
            diff = (np.asarray(raw[pk]["kendall@0.2"])
                    - np.asarray(raw[f"{proto}|{task}|{strongest}"]["kendall@0.2"]))
            margin = float(diff.mean() - 0.1 - diff.std())
            s1 = savings(raw, proto, task, PRIMARY, "one_cut_cost@0.2")
            sh = savings(raw, proto, task, PRIMARY, "halving_cost")
            out[f"{proto}|{task}"] = {
                "strongest_baseline": strongest,
                "kendall_gain": {"mean": float(diff.mean()), "std": float(diff.std())},
                "kendall_goal_met": margin >= 0, "kendall_goal_margin": margin,
                "savings_one_cut": s1, "savings_halving": sh,
                "compute_goal_met": bool(s1 and s1["mean"] >= 0.3) or bool(
                    sh and sh["mean"] >= 0.3)}
    return out


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "processor": platform.processor()
            or platform.machine(), "cpu_count": os.cpu_count(), "python":
            platform.python_version(), "torch": torch.__version__, "load_at_end": load,
            "note": "2-core machine shared with other engineers' work during the run (loaded); "
                    "benchmark run with nice -n 5, one thread per model fit"}


def _fmt(v: dict[str, float] | None, pct: bool = False) -> str:
    if not v:
        return "-"
    if pct:
        return f"{100 * v['mean']:.0f} ± {100 * v['std']:.0f} %"
    return f"{v['mean']:.3f} ± {v['std']:.3f}"


def _cpu(res: dict[str, Any]) -> str:
    cpu = res.get("cpu_s") or (res.get("cpu_s_external") or {}).get("value")
    return f" CPU time of the process: {cpu / 60:.1f} min (one thread)." if cpu else ""


def markdown(res: dict[str, Any]) -> str:
    s, tasks = res["summary"], res["config"]["tasks"]
    names = BASELINES + HYPERLAPSE + ["hyperlapse: temporal encoder (end to end)",
                                      "hyperlapse: temporal encoder readout + curve (GBT)"]
    lines = ["# Sweep forecast: results", "",
             f"Machine: {res['machine']['platform']}, {res['machine']['cpu_count']} cores, "
             f"{res['machine']['note']}. Wall time: {res['wall_s'] / 60:.1f} min "
             f"(zoo build {res['build_s'] / 60:.1f} min, features "
             f"{res['features_s'] / 60:.1f} min). {res['config']['runs']} runs per task, "
             f"seeds {res['config']['seeds']}; mean ± std over seeds. Held-out runs: the half of "
             "each sweep that finished last (per seed)." + _cpu(res), ""]
    for proto in ("within", "transfer"):
        lines += [f"## Protocol: {proto}", "",
                  "Kendall tau with the final test metric (cuts 10 / 20 / 50 %):", "",
                  "| predictor | " + " | ".join(tasks) + " |",
                  "|---|" + "---|" * len(tasks)]
        lines += _predictor_rows(s, proto, tasks, names, _kendall_cell)
        lines += ["", "At 20 %: recall of the true top 10 % in the predicted top 30 %; compute "
                  "to keep a run within 0.005 of the best (one cut at 20 % / successive halving "
                  "10-20-50 %), as a fraction of the full sweep:", "",
                  "| predictor | " + " | ".join(tasks) + " |",
                  "|---|" + "---|" * len(tasks)]
        lines += _predictor_rows(s, proto, tasks, names, _decision_cell)
        lines.append("")
    lines += ["## Goals at 20 % (primary predictor: " + PRIMARY + ")", "",
              "| protocol / task | strongest baseline | Kendall gain | +0.1 beyond spread | "
              "savings vs ASHA, one cut | savings, halving | >= 30 % |",
              "|---|---|---|---|---|---|---|"]
    for key, g in res["goals"].items():
        lines.append(
            f"| {key.replace('|', ' / ')} | {g['strongest_baseline']} | "
            f"{_fmt(g['kendall_gain'])} | {'met' if g['kendall_goal_met'] else 'missed'} "
            f"(margin {g['kendall_goal_margin']:+.3f}) | {_fmt(g['savings_one_cut'], True)} | "
            f"{_fmt(g['savings_halving'], True)} | "
            f"{'met' if g['compute_goal_met'] else 'missed'} |")
    if res.get("encoder_cost"):
        e = res["encoder_cost"]
        lines += ["", f"Temporal encoder: {e['seconds_per_fit_median']:.0f} s per fit on "
                  f"{e['runs_fitted']} runs (median of {e['fits']}), options "
                  f"{e.get('options', res['config']['encoder'])}; measured on "
                  f"{res['config']['encoder_task']} at 20 %, within-sweep only, seeds "
                  f"{e.get('seeds', res['config']['encoder_seeds'])} (the other rows of that "
                  f"task on the same seeds: json 'encoder_comparison')."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results "
                   "for a full run, nothing for --quick)")
    p.add_argument("--work", default=None, help="where the zoos are built (kept: resumable)")
    p.add_argument("--encoder", action="store_true", help="also the temporal encoder rows")
    p.add_argument("--encoder-only", action="store_true",
                   help="only the encoder rows (on the encoder task's zoo in --work), merged "
                   "later into the markdown by --render (results in --out)")
    p.add_argument("--render", action="store_true",
                   help="only rewrite the markdown from the results in --out")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.encoder_only:
        return encoder_only(cfg, args)
    if args.render:
        return render(Path(args.out or Path(__file__).parent / "results"))
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="sweep-forecast-"))
    t0 = time.perf_counter()
    zoos = {}
    for task in cfg["tasks"]:
        kw = {} if cfg["scale"] == 1.0 else {"scale": cfg["scale"]}
        zoos[task] = list(build_zoo(task, work / task, runs=cfg["runs"], quiet=args.quick, **kw))
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    all_F: dict[str, Any] = {task: task_features(runs, CUTS) for task, runs in zoos.items()}
    features_s = time.perf_counter() - t0
    encoder, encoder_cost = None, None
    if args.encoder:
        encoder, encoder_cost = encoder_scores(
            zoos[cfg["encoder_task"]], all_F[cfg["encoder_task"]], cfg, cfg["encoder_task"])
    raw = evaluate(all_F, cfg, encoder)
    res = {"config": {k: v for k, v in cfg.items()}, "machine": machine(),
           "wall_s": time.perf_counter() - t_all, "cpu_s": time.process_time(),
           "build_s": build_s, "features_s": features_s,
           "summary": summarise(raw), "goals": goals(raw, cfg["tasks"]),
           "encoder_cost": encoder_cost,
           "final_metric_range": {t: [float(F["y"].min()), float(F["y"].max())]
                                  for t, F in all_F.items()},
           "diverged": {t: int(sum(r.attrs["diverged_at"] >= 0 for r in runs))
                        for t, runs in zoos.items()}}
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results"))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "sweep_forecast.json").write_text(json.dumps(res, indent=1))
        (Path(out) / "sweep_forecast.md").write_text(markdown(res))
    print(markdown(res))
    return res


def encoder_only(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The encoder rows alone (they cost the most), merged into an earlier run's results."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    task = cfg["encoder_task"]
    kw = {} if cfg["scale"] == 1.0 else {"scale": cfg["scale"]}
    runs = list(build_zoo(task, Path(args.work) / task, runs=cfg["runs"], quiet=True, **kw))
    F = task_features(runs, CUTS)
    encoder, cost = encoder_scores(runs, F, {**cfg, "seeds": cfg["encoder_seeds"]}, task)
    raw = evaluate({task: F}, {**cfg, "seeds": cfg["encoder_seeds"]}, encoder)
    out = Path(args.out or Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(raw)
    enc = {"summary": {k: row for k, row in summary.items() if "encoder" in k},
           # the rows the encoder is compared with, on the encoder's seeds
           "comparison": {k: {m: v for m, v in row.items() if "@0.2" in m}
                          for k, row in summary.items()},
           "cost": {**cost, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time(),
                    "seeds": cfg["encoder_seeds"], "options": cfg["encoder"]},
           "machine": machine()}
    (out / "sweep_forecast_encoder.json").write_text(json.dumps(enc, indent=1))
    print(json.dumps(enc["cost"]))
    return enc


def _kendall_cell(row: dict[str, Any]) -> str:
    return " / ".join(_fmt(row.get(f"kendall@{c}")) if row.get(f"kendall@{c}") else "-"
                      for c in CUTS)


def _decision_cell(row: dict[str, Any]) -> str:
    if "recall@0.2" not in row:
        return "-"
    hc = row.get("halving_cost")
    return (f"{_fmt(row['recall@0.2'])}; {_fmt(row['one_cut_cost@0.2'])} / "
            f"{_fmt(hc) if hc else '-'}")


def _predictor_rows(summary: dict[str, Any], proto: str, tasks: list[str], names: list[str],
                    cell: Callable[[dict[str, Any]], str]) -> list[str]:
    """One markdown row per predictor with a result on some task ("-" where it has none)."""
    rows = []
    for name in names:
        cells = [cell(row) if (row := summary.get(f"{proto}|{task}|{name}")) else "-"
                 for task in tasks]
        if any(c != "-" for c in cells):
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def render(out: Path) -> dict[str, Any]:
    """Rewrite the markdown from the stored results (merging the encoder rows, if measured)."""
    res = json.loads((out / "sweep_forecast.json").read_text())
    enc_path = out / "sweep_forecast_encoder.json"
    if enc_path.is_file():
        enc = json.loads(enc_path.read_text())
        res["summary"].update(enc["summary"])
        res["encoder_cost"] = enc["cost"]
    (out / "sweep_forecast.md").write_text(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
