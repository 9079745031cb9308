"""What `hyperlapse sweep` costs per store: in-process vs a local dask.distributed cluster.

Records ``--runs`` stores of a 64-32-32-10 MLP (``--snapshots`` each), then analyses them all
in this process and on ``LocalCluster(--workers processes x 1 thread)``, alternating, and reports
the median seconds per store of each (and the spread over ``--repeats``).

    python benchmarks/sweep_cost.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from hyperlapse.online.sweep import analyze_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import record_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sweep_cost.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--snapshots", type=int, default=11)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    widths = [8, 8, 3] if args.quick else [64, 32, 32, 10]
    runs, snaps = (2, 3) if args.quick else (args.runs, args.snapshots)
    repeats = 1 if args.quick else args.repeats
    per_store: dict[str, list[float]] = {"in-process": [], "local-cluster": []}
    with tempfile.TemporaryDirectory() as tmp:
        stores = [Path(tmp) / f"run{i}.zarr" for i in range(runs)]
        for i, s in enumerate(stores):
            record_run(s, widths, snaps, seed=i, activation=nn.Tanh, batch=256)
        for r in range(repeats):
            for label, sched in (("in-process", None), ("local-cluster", "local")):
                res = analyze_sweep(stores, Path(tmp) / f"{label}{r}", scheduler=sched,
                                    workers=args.workers, quiet=True, plots=False,
                                    embeddings=False)
                assert not any(row["error"] for row in res["rows"])
                per_store[label].append(res["seconds_per_store"])
    med = {k: statistics.median(v) for k, v in per_store.items()}
    out = {
        "what": "wall seconds per store of a sweep (analyze, no plots), cluster start included",
        "widths": widths, "runs": runs, "snapshots_per_run": snaps, "repeats": repeats,
        "workers": args.workers,
        "seconds_per_store": {k: {"median": med[k], "min": min(v), "max": max(v)}
                              for k, v in per_store.items()},
        "cluster_over_in_process": med["local-cluster"] / med["in-process"],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__,
                    "note": "shared 2-core machine; other work was running"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["seconds_per_store"], indent=1))
    return out


if __name__ == "__main__":
    main()
