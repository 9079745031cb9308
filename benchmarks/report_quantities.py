"""Do a report's interpretive quantities carry information? Checked against ground truth.

1. Hyperbolic radius vs neuron importance. For digits, diabetes and moons (the MLPs of
   ``link_sign_prediction.py``, 3 seeds, 40 snapshots 5 SGD steps apart) the online encoder runs
   as the live reports do (self-supervised, d = 8). Per snapshot and hidden neuron: importance =
   increase of the held-out loss when the neuron is zeroed (labels used), its label-free proxy
   (mean squared output change, what live reports compute, validated here against it), and the
   in/out weight norms. Reported: Spearman of radius with importance, *partial* Spearman given
   the in and out norms, Spearman of the norm product with importance, and the per-snapshot
   turnover of the 10 smallest-radius neurons ("hubs") vs of the 10 most important ones.
2. Volume element near vs far from the decision boundary (the test's setting: moons, 2-128-2
   sigmoid MLP, Adam, 6 seeds): ratio of the mean volume element over the 20 % of probes
   closest to the boundary to that of the 20 % farthest, on the default 32x32 grid and on 400
   held-out data points, before and after training.

Runs with one thread (``torch.set_num_threads(1)``); a few minutes on a shared 2-core machine.
``--quick`` is the smoke setting. Usage: ``python benchmarks/report_quantities.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from link_sign_prediction import HIDDEN, machine, task_data  # noqa: E402

from hyperlapse import describe_mlp  # noqa: E402
from hyperlapse.geometry.ball import dist0  # noqa: E402
from hyperlapse.geometry.pullback import (  # noqa: E402
    feature_map,
    grid_probes,
    jacobian,
    log_volume_element,
    logit_margin,
    mlp_forward,
)
from hyperlapse.online.analyzer import OnlineEncoder  # noqa: E402
from hyperlapse.report.neurons import (  # noqa: E402
    neuron_importance,
    partial_spearman,
    top_turnover,
    weight_norms,
)
from hyperlapse.train.synthetic import make_mlp, train_states  # noqa: E402

FULL = {"tasks": ["digits", "diabetes", "moons"], "seeds": [0, 1, 2], "snapshots": 40,
        "every": 5, "skip": 8, "volume_seeds": [0, 1, 2, 3, 4, 5], "volume_steps": 800}
QUICK = FULL | {"tasks": ["moons"], "seeds": [0], "snapshots": 6, "skip": 2,
                "volume_seeds": [0], "volume_steps": 50}
TOP = 10


def radius_vs_importance(task: str, seed: int, cfg: dict) -> dict:
    x, y, out, loss = task_data(task, seed)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    cut = int(0.75 * x.shape[0])
    tr, te = perm[:cut], perm[cut:]
    torch.manual_seed(seed)
    model = make_mlp([x.shape[1], HIDDEN, HIDDEN, out])
    arch = describe_mlp(model)
    states, steps = train_states(model, x[tr], y[tr], loss, steps=(cfg["snapshots"] - 1) *
                                 cfg["every"], every=cfg["every"], lr=0.05, batch_size=64,
                                 seed=seed)
    online = OnlineEncoder(arch, d=8, seed=seed, geometry_every=0, num_hubs=TOP)
    hidden = online.node_table()["node_type"] == 1
    rows, prev_imp = [], None
    for t, (state, step) in enumerate(zip(states, steps, strict=True)):
        report = online.update(state, step)
        radius = dist0(online.z, manifold=online.manifold)[hidden].double()
        imp = neuron_importance(state, arch, x[te], y[te])
        proxy = neuron_importance(state, arch, x[te])
        norms = weight_norms(state, arch)
        turnover = top_turnover(prev_imp, imp, TOP)
        prev_imp = imp
        if t < cfg["skip"]:
            continue
        rows.append({
            "step": step,
            "spearman_radius_importance": partial_spearman(radius, imp),
            "partial_spearman_radius_importance": partial_spearman(radius, imp, norms),
            "spearman_norm_importance": partial_spearman(norms[:, 0] * norms[:, 1], imp),
            "spearman_radius_in_norm": partial_spearman(radius, norms[:, 0]),
            "spearman_proxy_importance": partial_spearman(proxy, imp),
            "hub_turnover": report["hubs"]["turnover"],
            "importance_turnover": turnover,
        })
    hubs = [r["hub_turnover"] for r in rows]
    imps = [r["importance_turnover"] for r in rows]
    summary = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "step"}
    summary["turnover_spearman"] = partial_spearman(torch.tensor(hubs, dtype=torch.float64),
                                                    torch.tensor(imps, dtype=torch.float64))
    return {"task": task, "seed": seed, "summary": summary, "per_snapshot": rows}


def _ratio(state, arch, probes) -> float:
    with torch.no_grad():
        lv = log_volume_element(jacobian(feature_map(state, arch, 1), probes))
        margin = logit_margin(mlp_forward(state, arch, probes, dtype=torch.float64)[-1])
    vol = lv.exp()
    near = margin <= torch.quantile(margin, 0.2)
    far = margin >= torch.quantile(margin, 0.8)
    return float(vol[near].mean() / vol[far].mean())


def volume_ratios(seed: int, steps: int) -> dict:
    from sklearn.datasets import make_moons

    torch.manual_seed(seed)
    X, y = make_moons(400, noise=0.1, random_state=seed)
    Xh, _ = make_moons(400, noise=0.1, random_state=1000 + seed)
    mean, std = X.mean(0), X.std(0)
    X = torch.tensor((X - mean) / std, dtype=torch.float32)
    held = torch.tensor((Xh - mean) / std, dtype=torch.float64)
    y = torch.tensor(y)
    model = nn.Sequential(nn.Linear(2, 128), nn.Sigmoid(), nn.Linear(128, 2))
    arch = describe_mlp(model)
    grid, _, _ = grid_probes((-2.5, -2.5), (2.5, 2.5), 32)
    before = {"grid": _ratio(model.state_dict(), arch, grid),
              "data": _ratio(model.state_dict(), arch, held)}
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    acc = float((model(X).argmax(1) == y).float().mean())
    after = {"grid": _ratio(model.state_dict(), arch, grid),
             "data": _ratio(model.state_dict(), arch, held)}
    return {"seed": seed, "train_accuracy": acc, "before": before, "after": after}


def _ms(values: list[float]) -> str:
    v = [x for x in values if not math.isnan(x)]
    return f"{np.mean(v):+.2f} ± {np.std(v):.2f}" if v else "-"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs = [radius_vs_importance(task, s, cfg) for task in cfg["tasks"] for s in cfg["seeds"]]
    volumes = [volume_ratios(s, cfg["volume_steps"]) for s in cfg["volume_seeds"]]
    keys = ["spearman_radius_importance", "partial_spearman_radius_importance",
            "spearman_norm_importance", "spearman_radius_in_norm", "spearman_proxy_importance",
            "hub_turnover", "importance_turnover", "turnover_spearman"]
    table = ["| task | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    per_task = {}
    for task in cfg["tasks"]:
        sel = [r["summary"] for r in runs if r["task"] == task]
        per_task[task] = {k: [s[k] for s in sel] for k in keys}
        table.append(f"| {task} | " + " | ".join(_ms(per_task[task][k]) for k in keys) + " |")
    vol_table = ["| seed | train acc | grid before | grid after | data before | data after |",
                 "|---|---|---|---|---|---|"]
    for v in volumes:
        vol_table.append(f"| {v['seed']} | {v['train_accuracy']:.3f} | {v['before']['grid']:.2f}"
                         f" | {v['after']['grid']:.2f} | {v['before']['data']:.2f} | "
                         f"{v['after']['data']:.2f} |")
    report = {"benchmark": "report_quantities", "mode": "quick" if args.quick else "full",
              "machine": machine(), "settings": cfg, "runs": runs, "volumes": volumes,
              "per_task": per_task, "wall_s": round(time.perf_counter() - t0, 1)}
    print("\n".join(table))
    print()
    print("\n".join(vol_table))
    print(f"wall {report['wall_s']} s")
    report["markdown"] = "\n".join([
        "# Report quantities against ground truth",
        "",
        f"Generated by `benchmarks/report_quantities.py` ({report['mode']} mode). Machine: "
        f"{report['machine']['processor']}, {report['machine']['cpu_count']} cores **shared with "
        f"other jobs running**, torch {report['machine']['torch']}, one thread; wall "
        f"{report['wall_s']} s. Means over snapshots >= {cfg['skip']}, then mean ± std over "
        f"seeds {cfg['seeds']}. Importance: held-out loss increase when a hidden neuron is "
        "zeroed; partial Spearman: given its in and out weight norms; label-free: the output "
        "change the live reports use.",
        "",
        *table,
        "",
        "Volume element, mean over the 20 % probes nearest the decision boundary / the 20 % "
        "farthest (moons, 2-128-2 sigmoid MLP, Adam):",
        "",
        *vol_table,
        "",
    ])
    out = args.out
    if out is None and not args.quick:
        out = Path(__file__).parent / "results" / "report_quantities.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=float))
        out.with_suffix(".md").write_text(report["markdown"])
    return report


if __name__ == "__main__":
    main()
