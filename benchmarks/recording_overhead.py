"""Recording overhead: what recording weights costs a training loop.

The same training loop (Adam, cross-entropy, synthetic data) runs with:

* ``none``            no recording (the baseline);
* ``bare_copy_10``    one copy of all parameters into a preallocated buffer every 10 steps,
                      timed in place: the floor for training-thread blocking per snapshot;
* ``hyperlapse_1``    TrajectoryRecorder, every step;
* ``hyperlapse_10``   TrajectoryRecorder, every 10 steps;
* ``torch_save_1``    ``torch.save(model.state_dict(), f)`` per step (what users do today);
* ``zarr_naive_1``    a synchronous ``zarr.Array.append`` per parameter per step.

Runs are interleaved (every repeat runs every variant, in a shuffled order) and summarised by
medians and ratios to ``none``. Also measured: training-thread blocking per snapshot vs one bare
copy of all parameters, bytes on disk and files created per variant, and the store size of
float32 (lossless) and float16 stores relative to raw float32 bytes.

Run::

    .venv/bin/python benchmarks/recording_overhead.py            # full, a few minutes
    .venv/bin/python benchmarks/recording_overhead.py --quick    # seconds (smoke test)

Results go to ``benchmarks/results/recording_overhead.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from hyperlapse import TrajectoryRecorder, __version__
from hyperlapse.store.info import disk_usage, store_info

MODELS = {
    # name: (widths, batch, steps in the full run)
    "mlp": ([784, 256, 256, 10], 128, 500),
    "tiny": ([64, 32, 10], 32, 300),
    "wide": ([784, 2048, 10], 128, 80),
}
VARIANTS = ["none", "bare_copy_10", "hyperlapse_10", "hyperlapse_1", "torch_save_1", "zarr_naive_1"]
SLOW = {"zarr_naive_1": 2}  # at most this many repeats (each run takes ~30 ms a step)


def make_mlp(widths: list[int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def run_once(widths: list[int], batch: int, steps: int, variant: str, root: Path) -> dict:
    """One training loop; returns its wall time and what it wrote."""
    model = make_mlp(widths)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(8, batch, widths[0], generator=g)
    ys = torch.randint(0, widths[-1], (8, batch), generator=g)
    out = root / variant
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rec = None
    arrays: dict[str, Any] = {}
    if variant.startswith("hyperlapse"):
        every = int(variant.split("_")[1])
        rec = TrajectoryRecorder(out / "run.zarr", model, every=every)
    elif variant == "zarr_naive_1":
        group = zarr.open_group(out / "run.zarr", mode="w")
        for name, p in model.named_parameters():
            arrays[name] = group.create_array(
                name, shape=(0, *p.shape), chunks=(1, *p.shape), dtype="float32"
            )
        arrays["step"] = group.create_array("step", shape=(0,), chunks=(1,), dtype="int64")

    params = [p.detach() for p in model.parameters()]
    dst = [torch.empty_like(p) for p in params]
    copy_times = []
    t0 = time.perf_counter()
    if rec is not None:
        rec.attach(opt)
    for i in range(1, steps + 1):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xs[i % 8]), ys[i % 8])
        loss.backward()
        opt.step()
        if variant == "bare_copy_10" and i % 10 == 0:
            tc = time.perf_counter()
            torch._foreach_copy_(dst, params)
            copy_times.append(time.perf_counter() - tc)
        elif variant == "torch_save_1":
            torch.save(model.state_dict(), out / f"step{i:06d}.pt")
        elif variant == "zarr_naive_1":
            for name, p in model.named_parameters():
                arrays[name].append(p.detach().numpy()[None])
            arrays["step"].append(np.array([i]))
    stats = None
    if rec is not None:
        rec.close()
        stats = rec.stats
    seconds = time.perf_counter() - t0
    files, size = disk_usage(out)
    result = {"seconds": seconds, "files": files, "bytes": size}
    if stats is not None:
        result["blocked_s_per_capture"] = stats["blocked_s_per_capture"]
        result["captures"] = stats["captures"]
    if copy_times:
        result["blocked_s_per_capture"] = statistics.median(copy_times)
        result["captures"] = len(copy_times)
    shutil.rmtree(out)
    return result


def store_ratios(widths: list[int], root: Path, snapshots: int) -> dict[str, float]:
    """Stored parameter bytes / raw float32 bytes for float32 and float16 stores of a run."""
    out = {}
    for dtype in ("float32", "float16"):
        model = make_mlp(widths)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(2)
        path = root / f"ratio_{dtype}.zarr"
        with TrajectoryRecorder(path, model, every=5, dtype=dtype) as rec:
            rec.attach(opt)
            for _ in range(snapshots * 5):
                x = torch.randn(64, widths[0], generator=g)
                y = torch.randint(0, widths[-1], (64,), generator=g)
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        info = store_info(path)
        out[dtype] = info["ratio_to_float32"]
        shutil.rmtree(path)
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "hyperlapse": __version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def bench_model(name: str, repeats: int, steps: int, root: Path, rng: random.Random) -> dict:
    widths, batch, _ = MODELS[name]
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    run_once(widths, batch, max(steps // 10, 5), "hyperlapse_1", root)  # warm-up
    for _ in range(repeats):
        order = VARIANTS[:]
        rng.shuffle(order)
        for variant in order:
            if len(runs[variant]) < SLOW.get(variant, repeats):
                runs[variant].append(run_once(widths, batch, steps, variant, root))
    base = statistics.median(r["seconds"] for r in runs["none"])
    bare = statistics.median(r["blocked_s_per_capture"] for r in runs["bare_copy_10"])
    summary: dict[str, Any] = {
        "widths": widths,
        "batch": batch,
        "steps": steps,
        "repeats": repeats,
        "snapshot_bytes": sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True)) * 4,
        "bare_copy_ms": bare * 1e3,
        "variants": {},
    }
    for variant, rs in runs.items():
        med = statistics.median(r["seconds"] for r in rs)
        entry = {
            "median_s": med,
            "all_s": [r["seconds"] for r in rs],
            "ratio_to_none": med / base,
            "overhead": med / base - 1.0,
            "ms_per_step_added": (med - base) / steps * 1e3,
            "files": rs[-1]["files"],
            "bytes": rs[-1]["bytes"],
        }
        if "blocked_s_per_capture" in rs[-1]:
            blocked = statistics.median(r["blocked_s_per_capture"] for r in rs)
            entry["blocked_ms_per_snapshot"] = blocked * 1e3
            entry["blocked_vs_bare_copy"] = blocked / bare
            entry["captures"] = rs[-1]["captures"]
        summary["variants"][variant] = entry
    v = summary["variants"]
    summary["targets"] = {
        "every10_overhead_le_2pct": v["hyperlapse_10"]["overhead"] <= 0.02,
        "every1_added_le_half_torch_save": v["hyperlapse_1"]["ms_per_step_added"]
        <= 0.5 * v["torch_save_1"]["ms_per_step_added"],
        "blocking_le_2x_bare_copy": v["hyperlapse_10"]["blocked_vs_bare_copy"] <= 2.0,
    }
    return summary


def _table(results: dict) -> str:
    lines = [
        "| model | variant | median s | x none | ms/step added | blocked ms/snap | files | MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in results["models"].items():
        for variant, e in m["variants"].items():
            blocked = e.get("blocked_ms_per_snapshot")
            lines.append(
                f"| {name} | {variant} | {e['median_s']:.3f} | {e['ratio_to_none']:.3f} | "
                f"{e['ms_per_step_added']:.3f} | "
                f"{'' if blocked is None else f'{blocked:.3f}'} | {e['files']} | "
                f"{e['bytes'] / 1e6:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: smoke test only")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODELS), default=None, help="models to run"
    )
    parser.add_argument(
        "--out",
        default=str(Path(__file__).parent / "results" / "recording_overhead.json"),
        help="output JSON (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the training loop (default: torch's choice); leaving "
        "one core to the writer avoids OpenMP oversubscription on small machines",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(0)
    started = time.perf_counter()
    models = args.models or (["tiny"] if args.quick else list(MODELS))
    repeats = args.repeats or (1 if args.quick else 5)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "models": {}}
    with tempfile.TemporaryDirectory(prefix="hyperlapse-bench-") as tmp:
        root = Path(tmp)
        for name in models:
            steps = 20 if args.quick else MODELS[name][2]
            results["models"][name] = bench_model(name, repeats, steps, root, rng)
            print(f"{name}: done ({time.perf_counter() - started:.0f} s)", flush=True)
        ratio_widths = MODELS["tiny" if args.quick else "mlp"][0]
        results["store_ratio_to_float32"] = store_ratios(
            ratio_widths, root, snapshots=4 if args.quick else 40
        )
    results["store_ratio_targets"] = {
        "lossless_le_0.90": results["store_ratio_to_float32"]["float32"] <= 0.90,
        "float16_le_0.50": results["store_ratio_to_float32"]["float16"] <= 0.50,
    }
    results["total_seconds"] = time.perf_counter() - started
    table = _table(results)
    results["table_markdown"] = table
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print("store ratio to raw float32:", results["store_ratio_to_float32"])
    print(f"wrote {out} in {results['total_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
