"""Inline against background writes on a loaded machine: per-step times, robust statistics.

A loaded shared machine makes whole-loop wall times useless (the bare loop of one run varied
30x). Here every step of the training loop is timed; steps are grouped by their phase in the
schedule (``step % every``: phase 0 takes the snapshot), and for each phase the median (and the
25th percentile) over all runs of a variant is taken, which filters out the bursts when another
process held the cores. The added cost of a variant is the sum over phases of its per-phase
statistic minus the bare loop's, per snapshot (also with the mean of the fastest 95 % of
each phase's steps: a background writer's cost comes in bursts that a median misses);
``close()`` is reported apart (median). Variants run interleaved, in a shuffled order per
repeat, in one process::

    .venv/bin/python benchmarks/recording_ab.py --model mlp --every 10 --steps 400 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recording_overhead as ro  # noqa: E402

from hyperlapse import TrajectoryRecorder  # noqa: E402


def run(widths, steps, every, root: Path, variant: str):
    model = ro.make_mlp(widths)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(8, ro.BATCH, widths[0], generator=g)
    ys = torch.randint(0, widths[-1], (8, ro.BATCH), generator=g)
    out = root / variant
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rec = floor = None
    if variant in ("inline", "background"):
        rec = TrajectoryRecorder(out / "run.zarr", model, every=every, writes=variant)
    elif variant == "floor":
        params = [p.detach() for p in model.parameters()]
        floor = ro.Floor(params, out / "floor.bin", ro.snapshot_steps(steps, every), False)
    os.sync()
    ts = np.empty(steps + 1)
    if rec is not None:
        rec.attach(opt)
    elif floor is not None:
        floor.snapshot()
    ts[0] = time.perf_counter()
    for i in range(1, steps + 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xs[i % 8]), ys[i % 8]).backward()
        opt.step()
        if floor is not None and i % every == 0:
            floor.snapshot()
        ts[i] = time.perf_counter()
    close_s = 0.0
    info = {}
    if rec is not None:
        t = time.perf_counter()
        rec.close()
        close_s = time.perf_counter() - t
        info = rec.overhead()
    elif floor is not None:
        floor.finish()
    shutil.rmtree(out)
    return np.diff(ts), close_s, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--variants", default="bare,inline,background,floor")
    args = ap.parse_args()
    widths = ro.MODELS[args.model]
    variants = args.variants.split(",")
    root = Path(tempfile.mkdtemp(prefix=".ab-", dir=Path(__file__).parent))
    rng = random.Random(0)
    steps: dict[str, list[np.ndarray]] = {v: [] for v in variants}
    closes: dict[str, list[float]] = {v: [] for v in variants}
    blocked: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for v in variants:
            run(widths, 30, args.every, root, v)
        for _ in range(args.repeats):
            order = variants[:]
            rng.shuffle(order)
            for v in order:
                d, c, info = run(widths, args.steps, args.every, root, v)
                steps[v].append(d)
                closes[v].append(c)
                if info:
                    blocked[v].append(info["capture_mean_s"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    e = args.every
    print(f"{args.model} every {e}, {args.steps} steps x {args.repeats} repeats, load "
          f"{os.getloadavg()[0]:.1f}")

    def per_phase(v: str, q: str) -> np.ndarray:
        allsteps = np.stack(steps[v])  # [repeats, steps]
        n = (args.steps // e) * e
        by = allsteps[:, :n].reshape(-1, e)  # phase i: step i+1 of a cycle
        if q == "mean95":  # mean of the fastest 95 % of each phase's steps
            cut = np.percentile(by, 95, axis=0)
            return np.array([by[by[:, i] <= cut[i], i].mean() for i in range(e)])
        return np.percentile(by, float(q), axis=0)

    for q in ("50", "mean95", "25"):
        base = per_phase("bare", q).sum()
        print(f"  statistic {q}: bare {base * 1e3:.3f} ms per {e} steps")
        for v in variants[1:] if variants[0] == "bare" else variants:
            cyc = per_phase(v, q).sum()
            print(f"    {v:11s} +{(cyc - base) * 1e3:.3f} ms per snapshot "
                  f"(+{(cyc / base - 1) * 100:.1f} % of the loop)")
    for v in variants:
        if blocked[v]:
            print(f"  {v:11s} blocked {statistics.median(blocked[v]) * 1e3:.3f} ms/snapshot, "
                  f"close {statistics.median(closes[v]) * 1e3:.1f} ms "
                  f"[{min(closes[v]) * 1e3:.1f}-{max(closes[v]) * 1e3:.1f}]")


if __name__ == "__main__":
    main()
