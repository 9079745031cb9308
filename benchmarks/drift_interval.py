"""How drift per optimizer step depends on the recording interval (docs/reports.md).

One small training run (a 2-12-2 tanh MLP, full-batch SGD on an XOR-like 2-D task, seed 0) is
recorded in memory at every step; the online analyzer then reads it every 2 and every 20 steps
(the same weights, two recording intervals) with the noise floor measured at every snapshot.
Reported per interval (medians over the intervals between snapshots): drift per snapshot, its
noise floor, raw drift per step, and ``drift_rate`` (drift above the floor per step), plus the
ratios short/long. Equal ratios of 1 would mean the rates compare across intervals.

Usage: ``python benchmarks/drift_interval.py [--steps 200] [--quick] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hyperlapse import describe_mlp  # noqa: E402
from hyperlapse.online.analyzer import OnlineEncoder  # noqa: E402
from hyperlapse.report.summary import structure_change  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="smoke setting (40 steps)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "drift_interval.json"))
    args = parser.parse_args(argv)
    steps = 40 if args.quick else args.steps
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 12), nn.Tanh(), nn.Linear(12, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    X = torch.randn(128, 2)
    y = (X[:, 0] * X[:, 1] > 0).long()
    states = {}
    for i in range(steps + 1):
        states[i] = {k: v.clone() for k, v in model.state_dict().items()}
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    out: dict = {"steps": steps, "intervals": {}}
    for every in (2, 20):
        online = OnlineEncoder(describe_mlp(model), geometry_every=0, noise_every=1,
                               refine_steps=4)
        reports = [online.update(states[s], s) for s in range(0, steps + 1, every)]
        change = structure_change(reports)
        out["intervals"][str(every)] = {
            key: statistics.median(c[key] for c in change)
            for key in ("drift", "noise", "raw_rate", "rate")
        } | {"under_floor": sum(bool(c["noisy"]) for c in change), "snapshots": len(reports)}
    short, long = out["intervals"]["2"], out["intervals"]["20"]
    out["raw_rate_ratio"] = short["raw_rate"] / long["raw_rate"]
    out["rate_ratio"] = short["rate"] / max(long["rate"], 1e-12)
    out["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                      "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
