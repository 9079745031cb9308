"""Weights as data: zoo build speed, and what a collection of trajectories tells about its runs.

1. ``build``: a digits-inr zoo trained as populations (stacked parameters, batched matmuls,
   recorded by ``TrajectoryRecorder`` into one store per block) against the same runs trained
   one by one, each with its own recorder and store (interleaved: half of the one-by-one runs
   before the population build, half after; medians). Also files and bytes on disk per run.
2. ``tasks``: meta-tasks on the zoos, 3 seeds (each seed: its own split and model seed; every
   row of a task uses the same splits):
   * digits-inr (random init, and shared init): accuracy of the digit from the INR's trajectory;
   * sines: test MSE of (a, f, p);
   * digits-generalisation: Kendall tau of the predicted final test accuracy, from the whole
     trajectory and from its first 20 %.
   Rows: weight statistics (StatNN) at T = 1 and T > 1, the loss/accuracy curve alone, the
   flattened weights, the trivial predictors, the pixel SVC ceiling, permutation checks, the
   network's outputs on ``PROBES`` fixed probe inputs (``features="probe-outputs"``: what a
   probe-reading encoder sees at its output nodes, for an INR the image at the probe points),
   and the temporal encoder as a metanetwork trained end to end (``features="encoder"``):
   hyperbolic T > 1 and T = 1, the Euclidean switch at equal d (matched scales), d in {4, 16},
   with and without probe features (every neuron's values on the probe inputs as node
   features), its permutation check, and its cost per epoch for T = 1 against T > 1.

The encoder rows are budgeted to keep the whole run near 25 minutes on 2 cores: ``ENCODER``
(epochs, snapshots per run k, one attention layer and head, incoming edges kept per neuron),
graphs built once per run and snapshot and shared by every row, seed and epoch. Which rows
each task runs (see ``task_*``): digits-inr random init: the plain encoder at T = 1 only (every
plain configuration was at chance there in the last full run) and the probe encoder at T > 1,
T = 1 and Euclidean T > 1; shared init: the plain encoder at T = 1; sines: the plain encoder in
every configuration, the probe encoder at T > 1 and T = 1; digits-generalisation: the plain
encoder in every configuration, the probe encoder at T = 1. The statistics' permutation check
applies the trained model to the permuted test runs (their features are bit-identical).

Usage: ``python benchmarks/weights_as_data.py [--quick] [--out PATH] [--work DIR]
[--only-encoder]``.
``--quick`` (seconds, the smoke test) uses tiny zoos and one seed and writes nothing unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyperlapse import TrajectoryRecorder
from hyperlapse.predict.features import PermutedRun
from hyperlapse.predict.predictor import fit_predictor
from hyperlapse.zoo import ZOOS, build_zoo, open_zoo
from hyperlapse.zoo.builders import INR_ACTIVATIONS, INR_EVERY, INR_LR, INR_STEPS, INR_WIDTHS
from hyperlapse.zoo.population import PopulationMLP, run_generator

#: The encoder metanetwork's budget (see the module docstring): options of EncoderFeatures.
ENCODER = {"epochs": 8, "max_snapshots": 3, "layers": 1, "heads": 1, "lr": 0.01,
           "batch_size": 64, "sparsify_k": 8, "threads": 1}
ENCODER_QUICK = {**ENCODER, "epochs": 2, "max_snapshots": 2}
#: Probe inputs of the probe rows (EncoderFeatures(probes=...), features="probe-outputs"): for
#: the 2-D INRs the 8 x 8 grid over [-1, 1]^2, i.e. the pixel coordinates the INRs were fitted
#: on; for the 1-D sines a 64-point grid over [-1, 1]; for the 64-D digit classifiers 64 seeded
#: N(0, 1) inputs (hyperlapse.nn.probes.probe_inputs, kind "auto").
PROBES = 64
FULL = {"inr_runs": 1797, "one_by_one": 24, "sines_runs": 1000, "gen_runs": 400,
        "seeds": [0, 1, 2], "scale": 1.0, "model": "gbt", "shared_init_task": True,
        "encoder": ENCODER, "encoder_d": [16, 4], "probes": PROBES}
QUICK = {"inr_runs": 40, "one_by_one": 2, "sines_runs": 30, "gen_runs": 12, "seeds": [0],
         "scale": 0.1, "model": "linear", "shared_init_task": False,
         "encoder": ENCODER_QUICK, "encoder_d": [4, 2], "probes": PROBES,
         "keep_predictions": True}
#: The shared-init INR zoo (the easy reference for weight readers): the encoder at T = 1 only
#: (its T > 1 row duplicated the T > 1 / T = 1 comparison made on the other tasks), no probes.
SHARED_INIT = {"encoder": {"plain": ("T=1",)}, "permute_encoder": False, "probe_rows": False}
MODEL_NAMES = {"gbt": "GBT", "linear": "linear"}
HYP, EUC = "poincare", "euclidean"


def encoder_variants(cfg: dict[str, Any], *, full: bool, prefix: str = "",
                     snapshots: Any = "all", plain: tuple[str, ...] | None = None,
                     probes: tuple[str, ...] = ()) -> list[tuple[str, Any, int, str, int]]:
    """``(row name, snapshots, d, manifold, probes)`` of the encoder rows of a task.

    ``plain``: which rows without probe features (``"T>1"``, ``"T=1"``, ``"euclidean"``,
    ``"d_small"``; default: T>1 and T=1, and with ``full`` the Euclidean switch and the small d).
    ``probes``: which rows with ``cfg["probes"]`` probe features (``"T>1"``, ``"T=1"``,
    ``"euclidean"``).
    """
    d, small = cfg["encoder_d"]
    if plain is None:
        plain = ("T>1", "T=1", "euclidean", "d_small") if full else ("T>1", "T=1")
    P = cfg["probes"]
    table = {
        "T>1": (f"hyperbolic encoder T>1 (d={d})", snapshots, d, HYP),
        "T=1": (f"hyperbolic encoder T=1 (d={d})", "last", d, HYP),
        "euclidean": (f"Euclidean encoder T>1 (d={d}, matched scales)", snapshots, d, EUC),
        "d_small": (f"hyperbolic encoder T>1 (d={small})", snapshots, small, HYP),
    }
    rows = [(prefix + table[k][0], *table[k][1:], 0) for k in table if k in plain]
    for k in ("T>1", "T=1", "euclidean"):
        if k in probes:
            name = table[k][0].replace("encoder", f"encoder + {P} probes", 1)
            rows.append((prefix + name, *table[k][1:], P))
    return rows


def encoder_rows(runs: list[Any], y: np.ndarray, task: str, split: Any, seeds: list[int],
                 cfg: dict[str, Any], variants: list[tuple[str, Any, int, str, int]],
                 permuted: tuple[str, list[Any], str | None] | None = None) -> dict[str, Any]:
    """Train the encoder metanetwork per variant and seed; scores, epoch times, loss curves.

    ``permuted``: ``(name of a variant, permuted runs, row name or None)``: the variant's own
    trained model applied to the permuted test runs (``applied to permuted test runs``: same
    predictions expected, up to float32 rounding), and, with a row name, the same variant
    trained and tested on the runs with their hidden neurons permuted.
    """
    out: dict[str, Any] = {}
    applied: dict[str, list[Any]] = {"scores": [], "agreement": []}
    jobs = [(name, runs, snaps, d, man, P) for name, snaps, d, man, P in variants]
    if permuted is not None and permuted[2] is not None:
        base, prun, pname = permuted
        _, snaps, d, man, P = next(v for v in variants if v[0] == base)
        jobs.append((pname, prun, snaps, d, man, P))
    for name, rr, snaps, d, man, P in jobs:
        scores, epoch_s, losses, preds = [], [], [], []
        for seed in seeds:
            tr, te = split(seed)
            opts = {**cfg["encoder"], "d": d, "manifold": man, "probes": P}
            p = fit_predictor([rr[i] for i in tr], y[tr], task, seed=seed, snapshots=snaps,
                              features="encoder", feature_options=opts)
            test = [rr[i] for i in te]
            pred = p.predict(test)
            if permuted is not None and name == permuted[0]:
                ptest = [permuted[1][i] for i in te]
                applied["scores"].append(p.score(ptest, y[te]))
                applied["agreement"].append(float(np.mean(p.predict(ptest) == pred)))
            scores.append(p.score(test, y[te]))
            preds.append(np.asarray(pred).tolist())
            epoch_s += [h["seconds"] for h in p.features.history]
            losses.append([round(h["loss"], 4) for h in p.features.history])
        row = _summary(scores)
        row.update(epoch_s_median=statistics.median(epoch_s), k=p.k, train_loss=losses)
        if cfg.get("keep_predictions"):
            row["predictions"] = preds
        out[name] = row
        print(f"  {name}: {_fmt(row)} ({row['epoch_s_median']:.2f} s/epoch)", flush=True)
    if applied["scores"]:
        row = _summary(applied["scores"])
        row["agreement_with_unpermuted_predictions"] = applied["agreement"]
        out[f"{permuted[0]}, trained model applied to permuted test runs"] = row
    return out


def encoder_cost(runs: list[Any], cfg: dict[str, Any], n: int = 64) -> dict[str, Any]:
    """Seconds and autograd-saved bytes of one training step on ``n`` runs, T = 1 vs T > 1
    (the encoder with probe features, as in the digits-inr probe rows).

    Interleaved, 5 repeats each, medians (the machine is shared).
    """
    from hyperlapse.predict.encoder import EncoderFeatures
    from hyperlapse.predict.features import snapshot_indices

    d = cfg["encoder_d"][0]
    opts = {**cfg["encoder"], "d": d, "manifold": HYP, "probes": cfg["probes"]}
    sub = runs[:n]
    res: dict[str, Any] = {}
    meas: dict[str, list[dict[str, float]]] = {"T=1": [], "T>1": []}
    k = opts["max_snapshots"]
    idx = {"T=1": [snapshot_indices(len(r), "last", 1) for r in sub],
           "T>1": [snapshot_indices(len(r), "all", k) for r in sub]}
    for _ in range(5):
        for key in ("T=1", "T>1"):
            meas[key].append(EncoderFeatures(**opts).batch_cost(sub, idx[key], 10))
    for key, m in meas.items():
        res[key] = {"snapshots": 1 if key == "T=1" else k,
                    "step_s_median": statistics.median(x["seconds"] for x in m),
                    "step_s_min_max": [min(x["seconds"] for x in m),
                                       max(x["seconds"] for x in m)],
                    "saved_MB": m[0]["saved_bytes"] / 1e6}
    res["runs_per_step"] = len(sub)
    res["d"] = d
    res["ratio_step_s"] = res["T>1"]["step_s_median"] / res["T=1"]["step_s_median"]
    res["ratio_saved_MB"] = res["T>1"]["saved_MB"] / res["T=1"]["saved_MB"]
    return res


def one_thread() -> Any:
    """Limit OpenMP and BLAS (scikit-learn's gradient-boosted trees, logistic regression) to
    one thread until ``.restore_original_limits()``. On 2 cores shared with other work, two
    OpenMP threads wait on each other at every barrier: a sines GBT fit measured 51 s wall
    with one thread against more than 250 s with two (load average 4). The encoder rows run
    at one torch thread already (``ENCODER["threads"]``)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "note": "2 shared cores; other engineers' tests and benchmarks were running at the same "
        "time, so wall times are noisy: speeds are reported as ratios measured in the same run "
        "(interleaved), with CPU time beside wall time. The meta-tasks run at one thread "
        "(torch, OpenMP and BLAS).",
    }


def _files_and_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


# -- 1. build speed -----------------------------------------------------------------------------
def _one_by_one(work: Path, runs: list[int], seed: int, steps: int) -> list[dict[str, float]]:
    """Train digits-inr runs one at a time, each with its own recorder and store."""
    from sklearn.datasets import load_digits

    X, _ = load_digits(return_X_y=True)
    grid = torch.linspace(-1, 1, 8)
    coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(64, 2)
    out = []
    for r in runs:
        t0, c0 = time.perf_counter(), time.process_time()
        pop = PopulationMLP(1, INR_WIDTHS, INR_ACTIVATIONS)
        pop.init_runs([run_generator(seed, r)])
        net = pop.member(0)
        target = torch.tensor(X[r] / 16.0, dtype=torch.float32).unsqueeze(-1)
        opt = torch.optim.Adam(net.parameters(), lr=INR_LR)
        store = work / f"run-{r:04d}.zarr"
        with TrajectoryRecorder(store, net, every=INR_EVERY, flush_every_s=None) as rec:
            rec.attach(opt)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = ((net(coords) - target) ** 2).mean()
                loss.backward()
                opt.step()
                rec.log(loss=loss.detach())
        files, nbytes = _files_and_bytes(store)
        out.append({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                    "files": files, "bytes": nbytes})
    return out


def bench_build(cfg: dict[str, Any], work: Path) -> tuple[dict[str, Any], Path]:
    torch.set_num_threads(1)  # what build_zoo uses; the same for both sides
    n_one = cfg["one_by_one"]
    half = n_one // 2
    steps = max(20, round(INR_STEPS * cfg["scale"]))
    one = _one_by_one(work / "one", list(range(half)), 0, steps)
    zoo_dir = work / "digits-inr"
    shutil.rmtree(zoo_dir, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    zoo = build_zoo("digits-inr", zoo_dir, runs=cfg["inr_runs"], quiet=True, scale=cfg["scale"])
    pop_wall, pop_cpu = time.perf_counter() - t0, time.process_time() - c0
    one += _one_by_one(work / "one", list(range(half, n_one)), 0, steps)
    files, nbytes = _files_and_bytes(zoo_dir)
    one_wall = statistics.median(o["wall_s"] for o in one)
    one_cpu = statistics.median(o["cpu_s"] for o in one)
    walls = sorted(o["wall_s"] for o in one)
    n = len(zoo)
    res = {
        "runs": n,
        "block_size": ZOOS["digits-inr"].block_size,
        "population": {"wall_s": pop_wall, "cpu_s": pop_cpu, "runs_per_s": n / pop_wall,
                       "runs_per_cpu_s": n / pop_cpu, "files": files, "bytes": nbytes,
                       "stores": len(list(zoo_dir.glob("*.zarr")))},
        "one_by_one": {"runs_timed": len(one), "median_wall_s_per_run": one_wall,
                       "min_max_wall_s_per_run": [walls[0], walls[-1]],
                       "median_cpu_s_per_run": one_cpu, "runs_per_s": 1 / one_wall,
                       "files_per_run": statistics.median(o["files"] for o in one),
                       "bytes_per_run": statistics.median(o["bytes"] for o in one)},
        "speedup_wall": (n / pop_wall) * one_wall,
        "speedup_cpu": (n / pop_cpu) * one_cpu,
        "psnr_db": {"mean": float(zoo.labels("psnr").mean()),
                    "min": float(zoo.labels("psnr").min())},
    }
    res["one_by_one"]["files_for_all_runs"] = res["one_by_one"]["files_per_run"] * n
    return res, zoo_dir


# -- 2. meta-tasks ------------------------------------------------------------------------------
def _split(n: int, seed: int, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(n), test_size=0.3, random_state=seed, stratify=y)


def _summary(values: list[Any]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": arr.mean(0).tolist(), "std": arr.std(0).tolist(), "per_seed": arr.tolist()}


def _fit_score(runs, y, tr, te, task, seed, **kw) -> Any:
    p = fit_predictor([runs[i] for i in tr], y[tr], task, seed=seed, **kw)
    return p.score([runs[i] for i in te], y[te])


def task_digits_inr(zoo_dir: Path, seeds: list[int], permute: bool, cfg: dict[str, Any],
                    *, encoder: dict[str, Any] | None = None, only_encoder: bool = False,
                    permute_encoder: bool = True, probe_rows: bool = True) -> dict[str, Any]:
    """Rows of a digits-inr zoo. ``encoder``: keyword arguments of :func:`encoder_variants`
    (default: the random-init set: T = 1 without probes, and with probes T > 1, T = 1 and the
    Euclidean switch); ``permute_encoder``: the probe encoder T = 1 (or, without probe rows,
    the plain T = 1) applied to permuted test runs; ``probe_rows``: the probe-outputs
    baselines."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    zoo = open_zoo(zoo_dir)
    runs = list(zoo)
    y = zoo.labels("digit")
    images, _ = load_digits(return_X_y=True)
    images = images[zoo.labels("image")]
    permuted = [PermutedRun(r, torch.Generator().manual_seed(1000 + i))
                for i, r in enumerate(runs)]
    rows: dict[str, list[Any]] = {}

    def add(name: str, value: Any) -> None:
        rows.setdefault(name, []).append(value)

    P, k = cfg["probes"], cfg["encoder"]["max_snapshots"]
    for seed in [] if only_encoder else seeds:
        tr, te = _split(len(runs), seed, y)
        lin = {"model": "linear"}
        add("stats T=1 (logistic regression)",
            _fit_score(runs, y, tr, te, "classify", seed, snapshots="last", **lin))
        stats = fit_predictor([runs[i] for i in tr], y[tr], "classify", seed=seed,
                              snapshots="all", **lin)
        add("stats T>1 (logistic regression)", stats.score([runs[i] for i in te], y[te]))
        add("flattened weights T=1 (logistic regression)",
            _fit_score(runs, y, tr, te, "classify", seed, snapshots="last", features="flat",
                       **lin))
        if probe_rows:
            probe = {"features": "probe-outputs", "feature_options": {"probes": P}, **lin}
            add(f"probe outputs T=1, {P} probes (logistic regression)",
                _fit_score(runs, y, tr, te, "classify", seed, snapshots="last", **probe))
            add(f"probe outputs T>1, {P} probes x {k} snapshots (logistic regression)",
                _fit_score(runs, y, tr, te, "classify", seed, snapshots="all", k=k, **probe))
        if permute:
            # the statistics are bit-identical on permuted runs (tested), so the trained model
            # applied to the permuted test runs is the check (retraining would repeat the fit)
            add("stats T>1 (logistic regression), trained model applied to permuted test runs",
                stats.score([permuted[i] for i in te], y[te]))
            add("permuted: flattened weights T=1 (logistic regression)",
                _fit_score(permuted, y, tr, te, "classify", seed, snapshots="last",
                           features="flat", **lin))
        svc = SVC().fit(images[tr], y[tr])
        add("pixel SVC on the images (ceiling)", float(svc.score(images[te], y[te])))
        add("majority class (trivial)", float(np.mean(y[te] == np.bincount(y[tr]).argmax())))
    out = {name: _summary(v) for name, v in rows.items()}
    if encoder is None:
        encoder = {"plain": ("T=1",), "probes": ("T>1", "T=1", "euclidean")}
    variants = encoder_variants(cfg, full=False, **encoder)
    check = None
    if permute and permute_encoder:
        base = [v for v in variants if v[1] == "last"]
        base = [v for v in base if v[4]] or base  # the probe encoder T = 1 when there is one
        check = (base[0][0], permuted, None)
    out.update(encoder_rows(runs, y, "classify", lambda s: _split(len(runs), s, y), seeds, cfg,
                            variants, check))
    out["_metric"] = "accuracy (30 % held out)"
    out["_runs"] = len(runs)
    out["_psnr_mean_db"] = float(zoo.labels("psnr").mean())
    return out


def task_sines(zoo_dir: Path, seeds: list[int], model: str, cfg: dict[str, Any],
               *, full_encoder: bool = True, only_encoder: bool = False) -> dict[str, Any]:
    zoo = open_zoo(zoo_dir)
    runs = list(zoo)
    y = np.stack([zoo.labels(k) for k in ("a", "f", "p")], 1)
    rows: dict[str, list[Any]] = {}
    for seed in [] if only_encoder else seeds:
        tr, te = _split(len(runs), seed, None)
        m = MODEL_NAMES[model]
        for name, kw in ((f"stats T=1 ({m})", {"snapshots": "last", "model": model}),
                         (f"stats T>1 ({m})", {"snapshots": "all", "model": model}),
                         ("flattened weights T=1 (ridge)",
                          {"snapshots": "last", "features": "flat", "model": "linear"}),
                         (f"probe outputs T=1, {cfg['probes']} probes ({m})",
                          {"snapshots": "last", "features": "probe-outputs", "model": model,
                           "feature_options": {"probes": cfg["probes"]}})):
            rows.setdefault(name, []).append(
                _fit_score(runs, y, tr, te, "regress", seed, **kw))
        mean = y[tr].mean(0)
        rows.setdefault("training mean (trivial)", []).append(
            ((y[te] - mean) ** 2).mean(0).tolist())
    out: dict[str, Any] = {name: _summary(v) for name, v in rows.items()}
    variants = encoder_variants(cfg, full=full_encoder, probes=("T>1", "T=1"))
    out.update(encoder_rows(runs, y, "regress", lambda s: _split(len(runs), s, None), seeds,
                            cfg, variants))
    out["_metric"] = "test MSE of (a, f, p) (30 % held out)"
    out["_runs"] = len(runs)
    out["_psnr_mean_db"] = float(zoo.labels("psnr").mean())
    return out


def task_generalisation(zoo_dir: Path, seeds: list[int], model: str, cfg: dict[str, Any],
                        *, full_encoder: bool = True, only_encoder: bool = False
                        ) -> dict[str, Any]:
    from scipy.stats import kendalltau

    zoo = open_zoo(zoo_dir)
    runs = list(zoo)
    y = zoo.labels("test_acc").astype(np.float64)
    rows: dict[str, list[Any]] = {}
    hp = np.stack([np.log10(zoo.labels("lr")), np.log10(zoo.labels("weight_decay")),
                   zoo.labels("label_noise"), zoo.labels("epochs"), zoo.labels("width"),
                   zoo.labels("depth")], 1)
    for seed in [] if only_encoder else seeds:
        tr, te = _split(len(runs), seed, None)
        m = MODEL_NAMES[model]
        for name, kw in (
            (f"whole: stats T>1 ({m})", {"snapshots": "all"}),
            (f"whole: stats T=1, last snapshot ({m})", {"snapshots": "last"}),
            (f"whole: loss/accuracy curve alone ({m})", {"snapshots": "all",
                                                          "features": "loss-curve"}),
            (f"first 20 %: stats ({m})", {"snapshots": 0.2}),
            (f"first 20 %: loss/accuracy curve alone ({m})", {"snapshots": 0.2,
                                                              "features": "loss-curve"}),
            (f"whole: probe outputs T=1, {cfg['probes']} probes ({m})",
             {"snapshots": "last", "features": "probe-outputs",
              "feature_options": {"probes": cfg["probes"]}}),
        ):
            rows.setdefault(name, []).append(
                _fit_score(runs, y, tr, te, "rank", seed, model=model, **kw))
        # trivial predictors: no model, the validation accuracy observed at the cut
        for name, frac in (("whole: validation accuracy at the end (trivial)", 1.0),
                           ("first 20 %: validation accuracy at the cut (trivial)", 0.2)):
            val = [r.metrics["val_acc"][max(1, math.ceil(frac * len(r))) - 1]
                   for r in (runs[i] for i in te)]
            rows.setdefault(name, []).append(float(kendalltau(y[te], val).statistic))
        from sklearn.ensemble import HistGradientBoostingRegressor

        m = HistGradientBoostingRegressor(max_iter=200, min_samples_leaf=10,
                                          random_state=seed).fit(hp[tr], y[tr])
        rows.setdefault("hyperparameters alone (GBT)", []).append(
            float(kendalltau(y[te], m.predict(hp[te])).statistic))
    out: dict[str, Any] = {name: _summary(v) for name, v in rows.items()}
    split = lambda s: _split(len(runs), s, None)  # noqa: E731
    d = cfg["encoder_d"][0]
    variants = encoder_variants(cfg, full=full_encoder, prefix="whole: ", probes=("T=1",))
    variants.append((f"first 20 %: hyperbolic encoder (d={d})", 0.2, d, HYP, 0))
    out.update(encoder_rows(runs, y, "rank", split, seeds, cfg, variants))
    out["_metric"] = "Kendall tau of predicted vs true final test accuracy (30 % held out)"
    out["_runs"] = len(runs)
    out["_test_acc_range"] = [float(y.min()), float(y.max())]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return v
    mean, std = v["mean"], v["std"]
    if isinstance(mean, list):
        return ", ".join(f"{m:.3f} +- {s:.3f}" for m, s in zip(mean, std, strict=True))
    return f"{mean:.3f} +- {std:.3f}"


def _epoch_times(results: dict[str, Any]) -> str:
    parts = []
    for task, rows in results["tasks"].items():
        for name, v in rows.items():
            if isinstance(v, dict) and "epoch_s_median" in v:
                parts.append(f"{task} / {name}: {v['epoch_s_median']:.2f} s")
    return "; ".join(parts)


def markdown(results: dict[str, Any]) -> str:
    b = results["build"]
    one = b["one_by_one"]
    lines = [
        "# Weights as data (benchmarks/weights_as_data.py)", "",
        f"Machine: {results['machine']['processor']}, {results['machine']['cpu_count']} cores "
        f"shared with other engineers' work (load average at start "
        f"{results['machine']['load_average_at_start']}). Wall times are noisy; ratios are "
        f"measured in the same run, interleaved. Seeds: {results['seeds']}; mean +- std over "
        f"seeds, each seed its own 70/30 split, the same for every row.", "",
        "## Zoo build: populations vs one run at a time (both recorded)", "",
        "| | runs/s (wall) | runs per CPU-s | files | MB |", "|---|---|---|---|---|",
        f"| population ({b['runs']} runs, {b['population']['stores']} stores) | "
        f"{b['population']['runs_per_s']:.1f} | {b['population']['runs_per_cpu_s']:.1f} | "
        f"{b['population']['files']} | {b['population']['bytes'] / 1e6:.1f} |",
        f"| one by one (median of {one['runs_timed']} runs) | {one['runs_per_s']:.2f} | "
        f"{1 / one['median_cpu_s_per_run']:.2f} | {one['files_per_run']:.0f} per run "
        f"({one['files_for_all_runs']:.0f} for {b['runs']}) | "
        f"{one['bytes_per_run'] * b['runs'] / 1e6:.1f} |", "",
        f"Speed-up: **{b['speedup_wall']:.1f}x** wall, {b['speedup_cpu']:.1f}x CPU time "
        f"(blocks of {b.get('block_size', '?')} runs; load average when measured: "
        f"{results.get('build_machine', results['machine'])['load_average_at_start']}). "
        f"INR fit: mean PSNR {b['psnr_db']['mean']:.1f} dB (min {b['psnr_db']['min']:.1f}).", "",
    ]
    for task, rows in results["tasks"].items():
        lines += [f"## {task}: {rows['_metric']}, {rows['_runs']} runs", "",
                  "| row | score |", "|---|---|"]
        lines += [f"| {name} | {_fmt(v)} |" for name, v in rows.items()
                  if not name.startswith("_")]
        lines.append("")
    cost = results.get("encoder_cost")
    if cost:
        one, many = cost["T=1"], cost["T>1"]
        lines += [
            "## Encoder cost: T = 1 against T > 1", "",
            f"One training step (forward and backward) on {cost['runs_per_step']} digits-inr "
            f"runs batched as one disjoint union, d = {cost['d']}; medians of 5 interleaved "
            f"repeats. Memory: bytes of the tensors autograd keeps for the backward pass "
            f"(distinct storages, torch.autograd.graph.saved_tensors_hooks), the part that "
            f"grows with T.", "",
            "| | snapshots | s per step (min-max) | autograd-saved MB per step |",
            "|---|---|---|---|",
            f"| T = 1 | 1 | {one['step_s_median']:.3f} ({one['step_s_min_max'][0]:.3f}-"
            f"{one['step_s_min_max'][1]:.3f}) | {one['saved_MB']:.1f} |",
            f"| T > 1 | {many['snapshots']} | {many['step_s_median']:.3f} "
            f"({many['step_s_min_max'][0]:.3f}-{many['step_s_min_max'][1]:.3f}) | "
            f"{many['saved_MB']:.1f} |", "",
            f"Ratio T > 1 / T = 1: {cost['ratio_step_s']:.2f}x time, "
            f"{cost['ratio_saved_MB']:.2f}x memory. Median seconds per training epoch of each "
            f"encoder row: {_epoch_times(results)}.", "",
        ]
    if results.get("encoder_config"):
        lines += [f"Encoder budget (EncoderFeatures options): {results['encoder_config']}.", ""]
    P = results.get("config", {}).get("probes")
    if P:
        lines += [
            f"Probe rows: {P} probe inputs, fixed (hyperlapse.nn.probes.probe_inputs, kind "
            f"'auto'): for the 2-D INRs the 8 x 8 grid over [-1, 1]^2, i.e. the pixel "
            f"coordinates the INRs were fitted on; for the 1-D sines a grid over [-1, 1]; for "
            f"the 64-D digit classifiers seeded N(0, 1) inputs. 'probe outputs' rows give the "
            f"network's outputs on them (for an INR: its image at the probe points) to the "
            f"row's model: the strongest trivial predictor of the probe-reading encoder "
            f"('encoder + {P} probes', node features normalised per layer, probe_norm "
            f"'layer'). The encoder's cost rows above use the probe features.", ""]
    if "permutation_rows_note" in results:
        lines.append(f"Note: {results['permutation_rows_note']}.")
    if "encoder_permutation_note" in results:
        lines.append(f"Note: {results['encoder_permutation_note']}.")
    lines.append(f"Total time of the full run: {results['total_s']:.0f} s (wall, shared machine).")
    if "encoder_s" in results:
        lines.append(f"The encoder rows were measured afterwards with --only-encoder on the same "
                     f"zoo configuration and splits: {results['encoder_s']:.0f} s (wall, shared "
                     f"machine, load average at its start "
                     f"{results['encoder_machine']['load_average_at_start']}).")
    return "\n".join(lines) + "\n"


def _only_permutation(args: argparse.Namespace) -> dict[str, Any]:
    """Re-measure the stats T>1 rows and their permutation check on existing INR zoos."""
    out = Path(args.out or "benchmarks/results/weights_as_data.json")
    results = json.loads(out.read_text())
    work = Path(args.work)
    for task, folder in (("digits-inr (random init)", "digits-inr"),
                         ("digits-inr (shared init)", "digits-inr-shared")):
        zoo = open_zoo(work / folder)
        runs = list(zoo)
        y = zoo.labels("digit")
        permuted = [PermutedRun(r, torch.Generator().manual_seed(1000 + i))
                    for i, r in enumerate(runs)]
        plain, perm = [], []
        for seed in results["seeds"]:
            tr, te = _split(len(runs), seed, y)
            kw = {"model": "linear", "snapshots": "all"}
            plain.append(_fit_score(runs, y, tr, te, "classify", seed, **kw))
            perm.append(_fit_score(permuted, y, tr, te, "classify", seed, **kw))
        results["tasks"][task]["stats T>1 (logistic regression)"] = _summary(plain)
        results["tasks"][task]["permuted: stats T>1 (logistic regression)"] = _summary(perm)
        print(task, plain, perm, flush=True)
    results["permutation_rows_note"] = (
        "the stats T>1 rows and their permutation check were re-measured after the moments "
        "were made order-independent (sorted before summing): bit-identical features")
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    return results


def _only_build(args: argparse.Namespace) -> dict[str, Any]:
    cfg = QUICK if args.quick else FULL
    out = Path(args.out or "benchmarks/results/weights_as_data.json")
    results = json.loads(out.read_text())
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build, _ = bench_build(cfg, Path(args.work or tmp))
        finally:
            torch.set_num_threads(threads)
    results["build"] = build
    results["build_machine"] = machine()
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return results


def _only_encoder_permutation(args: argparse.Namespace) -> dict[str, Any]:
    """Re-measure the probe encoder's permutation check (T = 1) on the random-init INR zoo in
    --work (built by the full run) and merge it into an existing results file; also checks
    that retraining the unpermuted variant reproduces its scores (determinism)."""
    cfg = QUICK if args.quick else FULL
    out = Path(args.out or "benchmarks/results/weights_as_data.json")
    results = json.loads(out.read_text())
    zoo = open_zoo(Path(args.work) / "digits-inr")
    runs = list(zoo)
    y = zoo.labels("digit")
    permuted = [PermutedRun(r, torch.Generator().manual_seed(1000 + i))
                for i, r in enumerate(runs)]
    base = encoder_variants(cfg, full=False, plain=(), probes=("T=1",))[0]
    rows = encoder_rows(runs, y, "classify", lambda s: _split(len(runs), s, y),
                        results["seeds"], cfg, [base], (base[0], permuted, None))
    task = results["tasks"]["digits-inr (random init)"]
    before = task.get(base[0], {}).get("per_seed")
    rerun = rows.pop(base[0])["per_seed"]
    task.update(rows)
    same = "identical" if rerun == before else "different"
    results["encoder_permutation_note"] = (
        f"the encoder's permutation rows were re-measured with --only-encoder-permutation; "
        f"retraining '{base[0]}' there gave per-seed scores {rerun}, {same} to the full run's "
        f"{before} (another process may round differently, e.g. in BLAS kernels, and a model "
        f"at chance level follows the rounding)")
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return results


def _only_encoder(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the encoder rows (and their cost) on the zoos in --work (built there when
    missing, with the full configuration's sizes) and merge them into an existing results
    file; the other rows are kept as they were measured."""
    cfg = QUICK if args.quick else FULL
    out = Path(args.out or "benchmarks/results/weights_as_data.json")
    results = json.loads(out.read_text())
    work = Path(args.work)
    t0 = time.perf_counter()
    sc = {"quiet": True, "scale": cfg["scale"]}
    zoos = {"digits-inr": ("digits-inr", cfg["inr_runs"], {}),
            "digits-inr-shared": ("digits-inr", cfg["inr_runs"], {"shared_init": True}),
            "sines": ("sines", cfg["sines_runs"], {}),
            "digits-generalisation": ("digits-generalisation", cfg["gen_runs"], {})}
    for folder, (name, runs, kw) in zoos.items():
        build_zoo(name, work / folder, runs=runs, **sc, **kw)
    seeds = results["seeds"]
    only = {"only_encoder": True}
    parts = {
        "digits-inr (random init)": lambda: task_digits_inr(work / "digits-inr", seeds, True,
                                                            cfg, **only),
        "digits-inr (shared init)": lambda: task_digits_inr(
            work / "digits-inr-shared", seeds, True, cfg, **SHARED_INIT, **only),
        "sines": lambda: task_sines(work / "sines", seeds, cfg["model"], cfg, **only),
        "digits-generalisation": lambda: task_generalisation(
            work / "digits-generalisation", seeds, cfg["model"], cfg, **only),
    }
    results["encoder_machine"] = machine()
    one_thread()
    for task, fn in parts.items():
        print(task, flush=True)
        rows = fn()
        kept = {k: v for k, v in results["tasks"][task].items()
                if not (isinstance(v, str) and v.startswith("not yet measured"))}
        kept.update({k: v for k, v in rows.items() if not k.startswith("_")})
        results["tasks"][task] = kept
        out.write_text(json.dumps(results, indent=1))  # partial results survive a kill
    results["encoder_cost"] = encoder_cost(list(open_zoo(work / "digits-inr")), cfg)
    results["encoder_config"] = cfg["encoder"]
    results["encoder_s"] = time.perf_counter() - t0
    results["machine"]["encoder_load_average_at_end"] = (
        os.getloadavg() if hasattr(os, "getloadavg") else None)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds: tiny zoos, one seed")
    parser.add_argument("--out", default=None, help="results JSON (a .md is written beside it; "
                        "default: benchmarks/results/weights_as_data.json; --quick: not written)")
    parser.add_argument("--work", default=None, help="folder for the zoos (default: a temp dir)")
    parser.add_argument("--only-build", action="store_true", help="re-measure the build speed "
                        "only and replace that section of an existing results file")
    parser.add_argument("--only-permutation", action="store_true", help="re-measure the stats "
                        "T>1 rows and the permutation check on the zoos in --work")
    parser.add_argument("--only-encoder", action="store_true", help="measure the encoder rows "
                        "on the zoos in --work and merge them into an existing results file")
    parser.add_argument("--only-encoder-permutation", action="store_true",
                        help="re-measure the encoder's permutation check on the zoo in --work")
    args = parser.parse_args(argv)
    if args.only_encoder_permutation:
        return _only_encoder_permutation(args)
    if args.only_encoder:
        return _only_encoder(args)
    if args.only_permutation:
        return _only_permutation(args)
    if args.only_build:
        return _only_build(args)
    cfg = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    threads = torch.get_num_threads()
    limits = None
    try:
        results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "config": cfg,
                                   "seeds": cfg["seeds"]}
        build, inr_dir = bench_build(cfg, work)
        results["build"] = build
        print(f"build: {build['speedup_wall']:.1f}x wall, {build['speedup_cpu']:.1f}x CPU",
              flush=True)
        shared_dir = work / "digits-inr-shared"
        sines_dir = work / "sines"
        gen_dir = work / "digits-generalisation"
        sc = {"quiet": True, "scale": cfg["scale"]}
        if cfg["shared_init_task"]:
            build_zoo("digits-inr", shared_dir, runs=cfg["inr_runs"], shared_init=True, **sc)
        build_zoo("sines", sines_dir, runs=cfg["sines_runs"], **sc)
        build_zoo("digits-generalisation", gen_dir, runs=cfg["gen_runs"], **sc)
        torch.set_num_threads(threads)
        seeds = cfg["seeds"]
        tasks = {}
        limits = one_thread()  # the meta-tasks, sklearn's models included
        tasks["digits-inr (random init)"] = task_digits_inr(inr_dir, seeds, True, cfg)
        print("digits-inr random done", flush=True)
        if cfg["shared_init_task"]:
            tasks["digits-inr (shared init)"] = task_digits_inr(
                shared_dir, seeds, True, cfg, **SHARED_INIT)
            print("digits-inr shared done", flush=True)
        tasks["sines"] = task_sines(sines_dir, seeds, cfg["model"], cfg)
        print("sines done", flush=True)
        if cfg["gen_runs"] >= 12:
            tasks["digits-generalisation"] = task_generalisation(gen_dir, seeds, cfg["model"],
                                                                 cfg)
        results["tasks"] = tasks
        results["encoder_cost"] = encoder_cost(list(open_zoo(inr_dir)), cfg)
        results["encoder_config"] = cfg["encoder"]
        results["total_s"] = time.perf_counter() - t_start
        results["machine"]["load_average_at_end"] = (
            os.getloadavg() if hasattr(os, "getloadavg") else None)
    finally:
        torch.set_num_threads(threads)
        if limits is not None:
            limits.restore_original_limits()
        if tmp is not None:
            tmp.cleanup()
    out = args.out or (None if args.quick else "benchmarks/results/weights_as_data.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=1))
        Path(out).with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
