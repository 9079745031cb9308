"""Cost of ``fsync=True`` and write amplification of time flushes (issue 12, items 9 and 11).

Drives ``StoreWriter`` directly (no training loop) with snapshots of a 784-256-256-10 MLP
(1.08 MB float32) and of a 64-32-10 MLP (10 KB), committing every ``--every`` snapshots, with
``fsync`` on and off, interleaved over repeats (medians, min-max spread). Reports writer seconds
per snapshot and per commit, and bytes written per byte of snapshot data.

    .venv/bin/python benchmarks/store_durability.py --snapshots 96 --repeats 3
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

from hyperlapse.store.writer import StoreWriter

MODELS = {"784-256-256-10": [784, 256, 256, 10], "64-32-10": [64, 32, 10]}


def _params(widths: list[int]) -> list[dict]:
    out = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        out += [{"name": f"{i}.weight", "shape": [b, a], "dtype": "float32"},
                {"name": f"{i}.bias", "shape": [b], "dtype": "float32"}]
    return out


def run(root: Path, widths: list[int], n: int, every: int, fsync: bool) -> dict[str, float]:
    params = _params(widths)
    rng = np.random.default_rng(0)
    states = [{p["name"]: rng.standard_normal(p["shape"]).astype(np.float32) for p in params}
              for _ in range(4)]
    path = root / f"s{time.perf_counter_ns()}.zarr"
    writer = StoreWriter(path, params, flush_every_s=None, fsync=fsync,
                         snapshots_per_chunk=64)
    t0 = time.perf_counter()
    for t in range(n):
        writer.append(states[t % 4], t, float(t), {"loss": 1.0})
        if (t + 1) % every == 0:
            writer.flush()
    writer.close()
    elapsed = time.perf_counter() - t0
    out = {"s_per_snapshot": elapsed / n, "s_per_commit": elapsed / max(writer.flushes, 1),
           "amplification": writer.write_amplification, "commits": writer.flushes}
    shutil.rmtree(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--snapshots", type=int, default=128)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hyperlapse-dur-", dir="."))
    results: dict[str, list[dict]] = {}
    try:
        for _ in range(args.repeats):
            for model, widths in MODELS.items():
                for every in args.every:
                    for fsync in (False, True):  # interleaved
                        key = f"{model} every={every} fsync={fsync}"
                        results.setdefault(key, []).append(
                            run(root, widths, args.snapshots, every, fsync))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {}
    for key, runs in results.items():
        row = {}
        for metric in ("s_per_snapshot", "s_per_commit", "amplification"):
            values = [r[metric] for r in runs]
            row[metric] = {"median": statistics.median(values), "min": min(values),
                           "max": max(values)}
        summary[key] = row
        print(f"{key:<36} {row['s_per_snapshot']['median'] * 1e3:7.2f} ms/snapshot "
              f"({row['s_per_snapshot']['min'] * 1e3:.2f}-{row['s_per_snapshot']['max'] * 1e3:.2f})"
              f"  {row['s_per_commit']['median'] * 1e3:7.2f} ms/commit"
              f"  amplification {row['amplification']['median']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
