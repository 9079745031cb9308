"""Link, new-link, sign and magnitude prediction on recorded MLP runs: hyperbolic vs Euclidean.

Protocol
--------
For each task (scikit-learn's bundled digits = classification, diabetes = regression, and a 2-D
moons task) and several seeds, a small MLP is trained with SGD and its state dict is kept in memory
every few steps (``TemporalParameterGraph.from_states``). One encoder per (task, geometry, d) --
geometries: the Poincare ball at c = 1 and c = 0.1, and flat space -- is trained with
``fit_encoder`` on the first ``train_frac`` of the snapshots of every seed. On the
later snapshots ``t``, the embedding of snapshot ``t - 1`` (``embed``: encoder + Riemannian
refinement, causal) predicts snapshot ``t``:

* links: top 20 % of ``|w|`` per layer, scored over every edge by the Fermi-Dirac decoder (AUC, AP);
* new links: links at ``t`` that were not links at ``t - 1``, among the non-links of ``t - 1``;
* signs of the links at ``t`` (accuracy of ``sign logit > 0``);
* magnitudes: Spearman correlation of the predicted ``log|w|`` with ``|w_t|`` over every edge.

Baselines: ``previous`` (the trivial one: the links and signs of snapshot ``t - 1``; for new links
it scores every candidate 0, i.e. chance) and ``previous |w|`` (the magnitudes of ``t - 1`` as
scores: a much stronger persistence baseline, reported for honesty).

Also timed: one snapshot forward (no grad) and forward + backward at the 784-256-256-10 size with
the default sparsification.

Scaled to run in under 8 minutes on 2 cores (about 4 on a shared one): 3 seeds, 20 snapshots 5
SGD steps apart, 10 epochs, 20 refinement steps; ``--quick`` (1 seed, 5 snapshots, 1 epoch, d = 2)
runs in seconds and is the smoke test in ``tests/train``.

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
from hyperlapse.graph.parameter_graph import ParameterGraph
from hyperlapse.graph.temporal import TemporalParameterGraph
from hyperlapse.nn.encoder import TemporalEncoder
from hyperlapse.train.fit import fit_encoder
from hyperlapse.train.losses import loss_terms
from hyperlapse.train.metrics import accuracy, average_precision, roc_auc, spearman
from hyperlapse.train.synthetic import make_mlp, train_states
from hyperlapse.train.targets import snapshot_targets

FULL = {
    "tasks": ["digits", "diabetes", "moons"],
    "seeds": [0, 1, 2],
    "snapshots": 20,
    "every": 5,
    "dims": [2, 4, 8, 16],
    "manifolds": ["poincare", "euclidean"],
    "curvatures": [1.0, 0.1],
    "epochs": 10,
    "refine_steps": 20,
    "refine_lr": 0.1,
    "train_frac": 0.5,
    "timing_reps": 5,
}
QUICK = {
    **FULL,
    "seeds": [0],
    "snapshots": 5,
    "every": 2,
    "dims": [2],
    "epochs": 1,
    "refine_steps": 2,
    "timing_reps": 1,
}
HIDDEN = 32
Q = 0.2


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


def make_run(task: str, seed: int, snapshots: int, every: int) -> TemporalParameterGraph:
    x, y, out, loss = task_data(task, seed)
    widths = [x.shape[1], HIDDEN, HIDDEN, out]
    torch.manual_seed(seed)
    model = make_mlp(widths)
    states, steps = train_states(
        model,
        x,
        y,
        loss,
        steps=(snapshots - 1) * every,
        every=every,
        lr=0.05,
        batch_size=64,
        seed=seed,
    )
    return TemporalParameterGraph.from_states(states, describe_mlp(model), steps=steps)


# ------------------------------------------------------------------------------- evaluation
def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _scores(link_score, mag_score, sign_pred, prev_links, links, weight) -> dict[str, float]:
    new = links & ~prev_links
    cand = ~prev_links
    on = links
    return {
        "link_auc": roc_auc(link_score, links),
        "link_ap": average_precision(link_score, links),
        "new_link_auc": roc_auc(link_score[cand], new[cand]) if new.any() else math.nan,
        "new_link_ap": average_precision(link_score[cand], new[cand]) if new.any() else math.nan,
        "sign_acc": accuracy(sign_pred[on], (weight[on] > 0).long()),
        "magnitude_spearman": spearman(mag_score, weight.abs()),
    }


def evaluate_run(
    encoder: TemporalEncoder | None, run, start: int, refine_steps: int, refine_lr: float = 0.02
) -> dict:
    """Mean metrics over snapshots ``t >= start`` predicted from ``t - 1``, for a model or the
    baselines (``encoder=None``)."""
    per: dict[str, list[dict[str, float]]] = {}
    if encoder is not None:
        with torch.no_grad():
            emb = encoder.embed(run, refine_steps=refine_steps, refine_lr=refine_lr)
        variants = {"refined": emb.z}
        if emb.z_encoder is not None:
            variants["encoder"] = emb.z_encoder
    for t in range(max(start, 1), len(run)):
        g_prev, g = run[t - 1], run[t]
        prev_links, links = g_prev.links(Q), g.links(Q)
        weight = g.edge_weight
        if encoder is None:
            prev_w = g_prev.edge_weight
            per.setdefault("previous", []).append(
                _scores(
                    prev_links.double(),
                    prev_w.abs(),
                    (prev_w > 0).long(),
                    prev_links,
                    links,
                    weight,
                )
            )
            per.setdefault("previous_abs_w", []).append(
                _scores(prev_w.abs(), prev_w.abs(), (prev_w > 0).long(), prev_links, links, weight)
            )
            continue
        pairs = g.edge_index
        ids = g.node_identity
        for name, zs in variants.items():
            z = zs[t - 1]
            with torch.no_grad():
                logit = encoder.link_head(z, pairs)
                log_mag, sign_logit = encoder.weight_head(z, ids, pairs)
            per.setdefault(name, []).append(
                _scores(logit, log_mag, (sign_logit > 0).long(), prev_links, links, weight)
            )
    return {name: {k: _mean([r[k] for r in rows]) for k in rows[0]} for name, rows in per.items()}


def _average(results: list[dict]) -> dict:
    names = results[0].keys()
    return {
        name: {k: _mean([r[name][k] for r in results]) for k in results[0][name]} for name in names
    }


def job(args: tuple) -> dict:
    """One (task, manifold, d) cell: fit on the early snapshots of every seed, evaluate late."""
    task, manifold, d, cfg, c = (*args, 1.0) if len(args) == 4 else args
    torch.set_num_threads(1)
    runs = [make_run(task, s, cfg["snapshots"], cfg["every"]) for s in cfg["seeds"]]
    split = max(2, int(round(cfg["train_frac"] * cfg["snapshots"])))
    train = [TemporalParameterGraph(r.source, r.architecture, stop=split) for r in runs]
    t0 = time.perf_counter()
    if manifold is None:
        metrics = _average([evaluate_run(None, r, split, 0) for r in runs])
        return {"task": task, "model": "baseline", "metrics": metrics, "fit_s": 0.0}
    enc = fit_encoder(
        train, d=d, manifold=manifold, c=c, epochs=cfg["epochs"], seed=0, lr=1e-2, progress=False
    )
    fit_s = time.perf_counter() - t0
    metrics = _average(
        [evaluate_run(enc, r, split, cfg["refine_steps"], cfg["refine_lr"]) for r in runs]
    )
    return {
        "task": task,
        "model": manifold if manifold == "euclidean" else f"poincare_c{c:g}",
        "d": d,
        "c": c if manifold == "poincare" else 0.0,
        "metrics": metrics,
        "fit_s": round(fit_s, 2),
        "final_train_loss": enc.history[-1] if enc.history else None,
    }


# ------------------------------------------------------------------------------- timing
def time_big(reps: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    widths = [784, 256, 256, 10]
    g = ParameterGraph.from_module(make_mlp(widths, torch.nn.ReLU))
    enc = TemporalEncoder(in_features=g.x.shape[1], num_identities=g.num_identities)
    snap = enc.prepare(g)
    targets = snapshot_targets(snap, q=Q)
    state = enc.init_state()
    for _ in range(2):  # warm-up, fills the window
        with torch.no_grad():
            _, state = enc.step(snap, state)
    fwd, both = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.no_grad():
            enc.step(snap, state)
        fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        z, _ = enc.step(snap, state)
        loss_terms(enc, z, targets)["total"].backward()
        both.append(time.perf_counter() - t0)
    return {
        "widths": widths,
        "config": {
            k: getattr(enc.config, k) for k in ("d", "heads", "layers", "window", "sparsify_k")
        },
        "num_edges": g.num_edges,
        "message_edges": int(snap.msg_edge_index.shape[1]),
        "loss_pairs": int(targets.pairs.shape[1]),
        "forward_ms": round(1e3 * float(np.median(fwd)), 1),
        "forward_backward_ms": round(1e3 * float(np.median(both)), 1),
        "backward_ms": round(1e3 * (float(np.median(both)) - float(np.median(fwd))), 1),
        "threads": 1,
    }


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


# ------------------------------------------------------------------------------- report
def table(results: list[dict], variants: tuple[str, ...] | None = None) -> str:
    """A markdown table of the results (model rows restricted to ``variants`` if given)."""
    cols = ["link_auc", "link_ap", "new_link_auc", "new_link_ap", "sign_acc", "magnitude_spearman"]
    lines = [
        "| task | model | d | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 3),
    ]
    for r in results:
        for variant, m in r["metrics"].items():
            if variants is not None and r["model"] != "baseline" and variant not in variants:
                continue
            name = r["model"] if r["model"] == "baseline" else f"{r['model']} ({variant})"
            if r["model"] == "baseline":
                name = variant
            vals = " | ".join(f"{m[c]:.3f}" for c in cols)
            lines.append(f"| {r['task']} | {name} | {r.get('d', '-')} | {vals} |")
    return "\n".join(lines)


def compact_table(results: list[dict]) -> str:
    """Models side by side per task and d (cells: "poincare c=1 / poincare c=0.1 / euclidean")."""
    pairs = [
        ("encoder", "link_auc", "link AUC (enc)"),
        ("refined", "link_auc", "link AUC"),
        ("refined", "link_ap", "link AP"),
        ("refined", "new_link_auc", "new-link AUC"),
        ("refined", "new_link_ap", "new-link AP"),
        ("refined", "sign_acc", "sign acc"),
        ("refined", "magnitude_spearman", "magnitude rho"),
    ]
    lines = [
        "| task | d | " + " | ".join(p[2] for p in pairs) + " |",
        "|" + "---|" * (len(pairs) + 2),
    ]
    cell = {(r["task"], r["model"], r.get("d")): r["metrics"] for r in results}
    tasks = list(dict.fromkeys(r["task"] for r in results))
    dims = sorted({r["d"] for r in results if r["model"] != "baseline"})
    models = list(dict.fromkeys(r["model"] for r in results if r["model"] != "baseline"))
    models = sorted(models, key=lambda m: (m == "euclidean", m))
    for task in tasks:
        base = cell[(task, "baseline", None)]
        for name, label in (
            ("previous", "previous (trivial)"),
            ("previous_abs_w", "previous abs(w)"),
        ):
            vals = [f"{base[name][m]:.3f}" for v, m, _ in pairs]
            lines.append(f"| {task} | {label} | " + " | ".join(vals) + " |")
        for d in dims:
            found = [cell.get((task, model, d)) for model in models]
            if any(f is None for f in found):
                continue
            vals = [" / ".join(f"{f[v][m]:.3f}" for f in found) for v, m, _ in pairs]
            lines.append(f"| {task} | {d} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n\nCells: " + " / ".join(models) + "."


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny setting (a smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON path")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    out = args.out
    if out is None and not args.quick:
        out = Path(__file__).parent / "results" / "link_sign_prediction.json"
    t0 = time.perf_counter()
    jobs = [(task, None, None, cfg) for task in cfg["tasks"]]
    models = [("euclidean", 1.0)] + [("poincare", c) for c in cfg["curvatures"]]
    if "poincare" not in cfg["manifolds"]:
        models = [mc for mc in models if mc[0] != "poincare"]
    jobs += [(t, m, d, cfg, c) for t in cfg["tasks"] for d in cfg["dims"] for m, c in models]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(job, jobs))
    else:
        results = [job(j) for j in jobs]
    timing = time_big(cfg["timing_reps"])
    report = {
        "benchmark": "link_sign_prediction",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "settings": {k: v for k, v in cfg.items()} | {"hidden": HIDDEN, "q": Q, "lr": 1e-2},
        "results": results,
        "timing_784_256_256_10": timing,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(table(results))
    print()
    print(compact_table(results))
    print(json.dumps(timing))
    print(f"wall {report['wall_s']} s")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=float))
    return report


if __name__ == "__main__":
    main()
