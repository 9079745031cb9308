"""Seconds per snapshot of `hyperlapse analyze` with 1 torch thread vs torch's default.

Records one store of a 784-256-256-10 MLP, then encodes the same snapshots with 1 thread and
with torch's default thread count, interleaved (1, default, 1, default, ...), and reports the
median seconds per snapshot of each and their ratio, with the spread. Optionally a background
load (``--load N``: N busy Python processes) stands in for a training run sharing the cores.

    python benchmarks/analysis_threads.py [--quick] [--load 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hyperlapse.online.analyze import analyze_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import record_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "analysis_threads.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, 1 repeat (smoke test)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--snapshots", type=int, default=4)
    ap.add_argument("--load", type=int, default=0, help="busy background processes")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    widths = [16, 16, 4] if args.quick else [784, 256, 256, 10]
    repeats = 1 if args.quick else args.repeats
    default_threads = torch.get_num_threads()
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)
    ]
    times: dict[str, list[float]] = {"1": [], "default": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "run.zarr"
            record_run(store, widths, args.snapshots)
            for r in range(repeats):
                for label, threads in (("1", 1), ("default", default_threads)):
                    start = time.perf_counter()
                    res = analyze_store(store, Path(tmp) / f"o{r}{label}", quiet=True,
                                        plots=False, embeddings=False, threads=threads,
                                        refine_steps=6, geometry_every=0)
                    times[label].append((time.perf_counter() - start) / res["snapshots"])
    finally:
        for p in burners:
            p.kill()
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "what": "seconds per snapshot of analyze (encode + refine + report, no plots), "
        "interleaved runs, median and [min, max]",
        "widths": widths,
        "snapshots_per_run": args.snapshots,
        "repeats": repeats,
        "background_busy_processes": args.load,
        "torch_default_threads": default_threads,
        "seconds_per_snapshot": {
            k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in times.items()
        },
        "default_over_one_thread": med["default"] / med["1"],
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "note": "shared 2-core machine; other work was running during the measurement",
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["seconds_per_snapshot"], indent=1))
    print("default / 1 thread:", round(out["default_over_one_thread"], 2))
    return out


if __name__ == "__main__":
    main()
