"""Open and ``refresh()`` time of a trajectory store against run length T (issue 12, item 8).

Writes stores of T tiny snapshots (one 2x2 parameter, one metric) with ``StoreWriter`` and
times, interleaved over repeats (medians, min-max spread):

* ``open``: ``open_trajectory`` alone;
* ``open+steps``: ``open_trajectory`` + reading all ``steps`` (T values: grows with T by nature);
* ``refresh0``: ``refresh()`` when nothing changed;
* ``refresh1``: ``refresh()`` after one more snapshot was committed (+ reading ``steps``).

    .venv/bin/python benchmarks/store_open.py --sizes 1000 100000 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hyperlapse import open_trajectory
from hyperlapse.store.writer import StoreWriter

PARAMS = [{"name": "w", "shape": [2, 2], "dtype": "float32"}]


def make_store(path: Path, n: int) -> StoreWriter:
    writer = StoreWriter(path, PARAMS, flush_every_s=None)
    value = np.zeros((2, 2), dtype=np.float32)
    for t in range(n):
        value[0, 0] = t
        writer.append({"w": value}, t, float(t), {"loss": float(t)})
    writer.flush()
    return writer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hyperlapse-open-"))
    try:
        writers = {n: make_store(root / f"t{n}.zarr", n) for n in args.sizes}
        times: dict[int, dict[str, list[float]]] = {
            n: {"open": [], "open+steps": [], "refresh0": [], "refresh1": []} for n in args.sizes
        }
        value = np.ones((2, 2), dtype=np.float32)
        for _ in range(args.repeats):
            for n in args.sizes:  # interleaved
                path = root / f"t{n}.zarr"
                t0 = time.perf_counter()
                traj = open_trajectory(path)
                t_open = time.perf_counter()
                _ = traj.steps[-1]
                t1 = time.perf_counter()
                traj.refresh()
                t2 = time.perf_counter()
                w = writers[n]
                w.append({"w": value}, w.last_step + 1, 0.0, {"loss": 0.0})
                w.flush()
                t3 = time.perf_counter()
                traj.refresh()
                _ = traj.steps[-1]
                t4 = time.perf_counter()
                times[n]["open"].append(t_open - t0)
                times[n]["open+steps"].append(t1 - t0)
                times[n]["refresh0"].append(t2 - t1)
                times[n]["refresh1"].append(t4 - t3)
        results = {}
        for n in args.sizes:
            row = {}
            for key, values in times[n].items():
                ms = [v * 1e3 for v in values]
                row[key] = {"median_ms": statistics.median(ms), "min_ms": min(ms),
                            "max_ms": max(ms)}
            results[n] = row
            print(
                f"T={n:>7}: "
                + "  ".join(
                    f"{k} {v['median_ms']:.2f} ms ({v['min_ms']:.2f}-{v['max_ms']:.2f})"
                    for k, v in row.items()
                )
            )
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
