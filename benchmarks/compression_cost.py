"""What each ``compression=`` choice costs: CPU per MB to encode a snapshot, and the stored size.

Encodes every parameter of a briefly trained 784-256-256-10 MLP (float32, and float16 for the
16-bit default) with the writer's own chunk encoder (compressor + crc32c), interleaving the
choices, and reports median wall and process-CPU milliseconds per MB of raw weights (CPU
includes blosc's threads) with the spread, and the ratio of stored to raw bytes. The encoding
runs on the writer thread, competing with training on small machines: this is the CPU a choice
adds per snapshot.

    python benchmarks/compression_cost.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hyperlapse.store import format as fmt
from hyperlapse.store.shards import ChunkEncoder

RESULTS = Path(__file__).resolve().parent / "results" / "compression_cost.json"


def trained_weights(widths: list[int], steps: int) -> list[np.ndarray]:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X, y = torch.randn(256, widths[0]), torch.randint(0, widths[-1], (256,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return [p.detach().numpy().copy() for p in model.parameters()]


def encoders(dtype: str, compression: str) -> ChunkEncoder:
    codecs = fmt.param_compressors(dtype, compression)
    return ChunkEncoder(codecs[0] if len(codecs) == 2 else None, crc=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small MLP, 3 repeats")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    widths = [64, 32, 10] if args.quick else [784, 256, 256, 10]
    repeats = 3 if args.quick else args.repeats
    weights = trained_weights(widths, 20)
    out: dict = {"widths": widths, "repeats": repeats, "choices": {}}
    for dtype in ("float32", "float16"):
        arrays = [w.astype(dtype) for w in weights]
        raw = sum(a.nbytes for a in arrays)
        times: dict[str, list[float]] = {c: [] for c in fmt.COMPRESSIONS}
        cpu: dict[str, list[float]] = {c: [] for c in fmt.COMPRESSIONS}
        sizes: dict[str, int] = {}
        for _ in range(repeats):
            for choice in fmt.COMPRESSIONS:  # interleaved
                encs = [encoders(dtype, choice) for _ in arrays]
                start, start_cpu = time.perf_counter(), time.process_time()
                chunks = [enc(a) for enc, a in zip(encs, arrays, strict=True)]
                times[choice].append((time.perf_counter() - start) * 1e3 / (raw / 2**20))
                # process CPU includes blosc's own threads
                cpu[choice].append((time.process_time() - start_cpu) * 1e3 / (raw / 2**20))
                sizes[choice] = sum(len(c) for c in chunks)
        out["choices"][dtype] = {
            c: {
                "ms_per_mb": {"median": statistics.median(t), "min": min(t), "max": max(t)},
                "cpu_ms_per_mb": {"median": statistics.median(cpu[c]), "min": min(cpu[c]),
                                  "max": max(cpu[c])},
                "stored_over_raw": sizes[c] / raw,
                "codecs": [type(x).__name__ for x in fmt.param_compressors(dtype, c)],
            }
            for c, t in times.items()
        }
        out["choices"][dtype]["raw_mb"] = raw / 2**20
    out["machine"] = {
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
        "threads": 1, "note": "shared 2-core machine; medians of interleaved repeats",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for dtype, rows in out["choices"].items():
        for c, r in rows.items():
            if c != "raw_mb":
                print(f"{dtype:8s} {c:5s} wall {r['ms_per_mb']['median']:6.2f} ms/MB  cpu "
                      f"{r['cpu_ms_per_mb']['median']:6.2f} ms/MB  ratio "
                      f"{r['stored_over_raw']:.3f}")
    return out


if __name__ == "__main__":
    main()
