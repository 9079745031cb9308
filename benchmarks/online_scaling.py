"""Cost of the online encoder per snapshot: flat in T, versus re-encoding, and its training cost.

Measures, for a synthetic training run (a random walk of the weights of a freshly initialised
MLP, so no data is needed), at two sizes (784-256-256-10 ReLU, sparsified with the default
top-32 incoming edges, and a small 64-64-32-10):

* ``per_snapshot``: mean wall time of one :meth:`OnlineEncoder.update` over the 10 updates ending
  at T = 10, 100, 1000 (one run to the largest T; the input-space geometry is off here and
  measured separately), and the ratio T=max / T=10 (target <= 1.2);
* ``where_time_goes``: the mean of the update's own timing fields (graph building, scoring the
  predictions made at t-1, encoding, Riemannian refinement, the encoder's training step,
  report, geometry when on);
* ``reencode``: the cost of re-encoding the whole history of T=100 snapshots (encoder + the same
  refinement, :meth:`TemporalEncoder.embed`) against one online update (target >= 10x);
* ``training_slowdown``: wall time of a training loop recording every 10 steps, with and
  without ``report=LiveReport(...)`` attached.

Usage: ``python benchmarks/online_scaling.py [--quick] [--out PATH] [--max-t N]``.
``--quick`` (seconds, used as a smoke test) runs the small size at T = 3, 6 only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from hyperlapse import LiveReport, TrajectoryRecorder, describe_mlp
from hyperlapse.graph.parameter_graph import ParameterGraph
from hyperlapse.online.analyzer import OnlineEncoder
from hyperlapse.train.embed import embed_refined

SIZES = {"784-256-256-10": [784, 256, 256, 10], "64-64-32-10": [64, 64, 32, 10]}


def _mlp(widths: list[int], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        mods.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def _walk(model: nn.Module, num: int, seed: int = 0, scale: float = 0.02):
    """Yield ``num`` state dicts of a random walk of the weights (a stand-in for training)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(num):
        yield {k: v.clone() for k, v in state.items()}
        for v in state.values():
            v.add_(scale * v.std() * torch.randn(v.shape, generator=g))


def per_snapshot(widths: list[int], milestones: list[int]) -> dict:
    model = _mlp(widths)
    online = OnlineEncoder(describe_mlp(model), geometry_every=0)
    times, fields, out = [], {}, {}
    for t, state in enumerate(_walk(model, max(milestones)), start=1):
        report = online.update(state, step=10 * t)
        times.append(report["timing"]["total"])
        for k, v in report["timing"].items():
            fields.setdefault(k, []).append(v)
        if t in milestones:
            window = times[-min(10, t - 1):] if t > 1 else times
            out[f"T={t}"] = sum(window) / len(window)
            print(f"  T={t}: {out[f'T={t}']:.3f} s per update", flush=True)
        if t == milestones[-1]:
            break
    first, last = out[f"T={milestones[0]}"], out[f"T={milestones[-1]}"]
    return {
        "seconds": out,
        "ratio_last_to_first": last / first,
        "where_time_goes": {k: sum(v[1:]) / max(len(v) - 1, 1) for k, v in fields.items()},
        "retained_tensors": len(online.retained()),
        "retained_values": sum(t.numel() for t in online.retained()),
        "num_edges": sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)),
        "encoder": {"d": online.config.d, "window": online.config.window,
                    "sparsify_k": online.config.sparsify_k,
                    "refine_steps": online.refine_steps},
    }


def geometry_cost(widths: list[int], num_probes: int = 64) -> dict:
    from hyperlapse.geometry.pullback import default_top_k

    model = _mlp(widths)
    probes = torch.randn(num_probes, widths[0], dtype=torch.float64)
    online = OnlineEncoder(describe_mlp(model), probes=probes, geometry_every=1,
                           geometry_k=default_top_k(widths[0]))
    state = model.state_dict()
    online.update(state, 0)
    report = online.update(state, 1)
    return {"probes": num_probes, "seconds": report["timing"]["geometry"]}


def reencode(widths: list[int], T: int) -> dict:
    model = _mlp(widths)
    arch = describe_mlp(model)
    states = list(_walk(model, T))
    online = OnlineEncoder(arch, geometry_every=0)
    times = []
    for t, state in enumerate(states):
        times.append(online.update(state, t)["timing"]["total"])
    one = sum(times[-10:]) / len(times[-10:])
    graphs = [ParameterGraph.from_state_dict(s, arch) for s in states]
    encoder = online.encoder
    start = time.perf_counter()
    embed_refined(encoder, graphs, refine_steps=online.refine_steps, refine_lr=online.refine_lr)
    full = time.perf_counter() - start
    return {"T": T, "online_update_s": one, "reencode_history_s": full, "speedup": full / one}


def training_slowdown(widths: list[int], steps: int, every: int = 10) -> dict:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, widths[0], generator=g)
    y = torch.randint(0, widths[-1], (512,), generator=g)

    def loop(with_report: bool) -> dict:
        model = _mlp(widths, seed=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with tempfile.TemporaryDirectory() as tmp:
            live = LiveReport(Path(tmp) / "r", model=model, quiet=True, plots=False,
                              geometry_every=0) if with_report else None
            start = time.perf_counter()
            rec = TrajectoryRecorder(Path(tmp) / "run.zarr", model, every=every, report=live)
            rec.attach(opt)
            for i in range(steps):
                idx = slice((i * 128) % 512, (i * 128) % 512 + 128)
                opt.zero_grad()
                nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
                opt.step()
            train_s = time.perf_counter() - start
            rec.close()  # with a report: also waits for the queued snapshots and the page
            total_s = time.perf_counter() - start
            reported = len(live.reports) if live else None
            dropped = live.dropped if live else None
        return {"train_loop_s": train_s, "until_closed_s": total_s, "reported": reported,
                "dropped": dropped}

    loop(False)  # warm-up (first-call costs of torch and zarr)
    base = loop(False)
    live = loop(True)
    return {
        "steps": steps,
        "every": every,
        "without_report": base,
        "with_live_report": live,
        "slowdown_train_loop": live["train_loop_s"] / base["train_loop_s"],
    }


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds: small size, T <= 6")
    parser.add_argument("--out", default=None, help="results JSON (default: "
                        "benchmarks/results/online_scaling.json; --quick: not written)")
    parser.add_argument("--max-t", type=int, default=1000, help="largest T (default: 1000)")
    args = parser.parse_args(argv)
    results: dict = {"machine": machine(), "quick": args.quick, "sizes": {}}
    if args.quick:
        results["sizes"]["64-64-32-10"] = {
            "per_snapshot": per_snapshot(SIZES["64-64-32-10"], [3, 6]),
            "reencode": reencode(SIZES["64-64-32-10"], 4),
        }
        results["training_slowdown"] = training_slowdown(SIZES["64-64-32-10"], 20)
    else:
        milestones = [m for m in (10, 100, 1000) if m <= args.max_t] or [10]
        for name, widths in SIZES.items():
            print(f"{name}: per-snapshot cost up to T={milestones[-1]} ...", flush=True)
            results["sizes"][name] = {
                "per_snapshot": per_snapshot(widths, milestones),
                "reencode": reencode(widths, 100),
                "geometry": geometry_cost(widths),
            }
            print(json.dumps(results["sizes"][name], indent=1), flush=True)
        results["training_slowdown"] = {
            name: training_slowdown(widths, 300 if name.startswith("784") else 1000)
            for name, widths in SIZES.items()
        }
    out = args.out or (None if args.quick else "benchmarks/results/online_scaling.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
