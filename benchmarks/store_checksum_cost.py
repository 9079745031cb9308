"""Write and read cost of format version 3 (chunk checksums bound to parameter and snapshot)
against version 2, measured in the same run (issue 16, item 7).

Drives ``StoreWriter`` directly (no training loop) with snapshots of a 784-256-256-10 MLP
(1.08 MB float32) and of a 64-32-10 MLP (10 KB), committing every ``--every`` snapshots with
``fsync=True``, on the fill-in-place path (``compression="none"``, the recorder's local default)
and the Zarr path (``"lz4"``). Each measurement runs in a fresh child process, alternating the
baseline source tree (``git archive`` of ``--baseline``, default 311ac8e: version 2) and this
tree, interleaved over repeats; medians with min-max spread, and the ratio current / baseline.
Reading: a fresh ``open_trajectory`` of the store just written reads every snapshot
(``traj[t]``; version 3 also checks each chunk's place once per shard).

    nice -n 5 .venv/bin/python benchmarks/store_checksum_cost.py --repeats 5 \
        --out benchmarks/results/store_checksum_cost.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"784-256-256-10": [784, 256, 256, 10], "64-32-10": [64, 32, 10]}

CHILD = """
import json, shutil, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from hyperlapse.store.writer import StoreWriter
from hyperlapse.store import format as fmt
widths, n, every, compression, root = json.loads(sys.argv[2])
params = []
for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
    params += [{"name": f"{i}.weight", "shape": [b, a], "dtype": "float32"},
               {"name": f"{i}.bias", "shape": [b], "dtype": "float32"}]
rng = np.random.default_rng(0)
states = [{p["name"]: rng.standard_normal(p["shape"]).astype(np.float32) for p in params}
          for _ in range(4)]
path = f"{root}/s{time.perf_counter_ns()}.zarr"
w = StoreWriter(path, params, flush_every_s=None, fsync=True, snapshots_per_chunk=64,
                compression=compression)
t0 = time.perf_counter()
for t in range(n):
    w.append(states[t % 4], t, float(t), {"loss": 1.0})
    if (t + 1) % every == 0:
        w.flush()
w.close()
elapsed = time.perf_counter() - t0
from hyperlapse import open_trajectory
t0 = time.perf_counter()
traj = open_trajectory(path)  # a fresh reader: every shard checked once
for t in range(n):
    traj[t]
read = time.perf_counter() - t0
print(json.dumps({"s_per_snapshot": elapsed / n, "read_s_per_snapshot": read / n,
                  "version": fmt.VERSION, "io": w.io_path}))
shutil.rmtree(path)
"""


def _child(src: Path, config: list, root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), json.dumps([*config, str(root)])],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _tree(rev: str, where: Path) -> Path:
    where.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="311ac8e", help="git revision of the baseline")
    parser.add_argument("--current", default=None,
                        help="git revision to measure as current (default: the working tree)")
    parser.add_argument("--snapshots", type=int, default=128)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--compression", nargs="+", default=["none", "lz4"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hyperlapse-crc-", dir="."))
    try:
        trees = {"baseline": _tree(args.baseline, tmp / "baseline"),
                 "current": _tree(args.current, tmp / "current") if args.current else ROOT / "src"}
        results: dict[str, dict[str, list[dict]]] = {}
        for _ in range(args.repeats):
            for model, widths in MODELS.items():
                for compression in args.compression:
                    for every in args.every:
                        key = f"{model} {compression} every={every}"
                        for name, src in trees.items():  # interleaved
                            results.setdefault(key, {}).setdefault(name, []).append(
                                _child(src, [widths, args.snapshots, every, compression], tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for key, runs in results.items():
        row: dict = {}
        for name, rs in runs.items():
            row[name] = {"version": rs[0]["version"], "io": rs[0]["io"]}
            for metric in ("s_per_snapshot", "read_s_per_snapshot"):
                values = [r[metric] for r in rs]
                row[name][metric] = {"median_ms": statistics.median(values) * 1e3,
                                     "min_ms": min(values) * 1e3, "max_ms": max(values) * 1e3}
        for metric in ("s_per_snapshot", "read_s_per_snapshot"):
            row[f"ratio_{metric}"] = (row["current"][metric]["median_ms"]
                                      / row["baseline"][metric]["median_ms"])
        summary[key] = row
        for metric, label in (("s_per_snapshot", "write"), ("read_s_per_snapshot", "read")):
            b, c = row["baseline"][metric], row["current"][metric]
            print(f"{key:<30} {label:<5} v{row['baseline']['version']} {b['median_ms']:7.3f} ms "
                  f"({b['min_ms']:.3f}-{b['max_ms']:.3f})  v{row['current']['version']} "
                  f"{c['median_ms']:7.3f} ms ({c['min_ms']:.3f}-{c['max_ms']:.3f})  "
                  f"ratio {row[f'ratio_{metric}']:.2f}  [{row['current']['io']}]")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
