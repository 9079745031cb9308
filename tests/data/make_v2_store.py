"""Regenerate ``tests/data/v2_mlp.zarr`` and ``v2_mlp_expected.npz`` (format version 2).

Run with the hyperlapse of commit 311ac8e (the last one writing version 2); the store and the
expected values are committed, so later readers are tested against real version-2 bytes.

    PYTHONPATH=<checkout of 311ac8e>/src .venv/bin/python tests/data/make_v2_store.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).parent
STORE = HERE / "v2_mlp.zarr"
EXPECTED = HERE / "v2_mlp_expected.npz"


def main() -> None:
    from hyperlapse import TrajectoryRecorder

    shutil.rmtree(STORE, ignore_errors=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected: dict[str, list] = {}
    steps, losses = [], []
    with TrajectoryRecorder(STORE, model, every=1, snapshots_per_chunk=4) as rec:
        for step in range(7):  # 7 snapshots: one full shard and a partial one
            if step:
                opt.zero_grad()
                loss = model(torch.randn(8, 5)).pow(2).mean()
                loss.backward()
                opt.step()
            with torch.no_grad():
                model[2].bias[0] = -0.0 if step % 2 else 1e-40  # -0.0 and a subnormal
            rec.capture(step=step * 3)
            if step:
                rec.log(loss=loss.item())
            steps.append(step * 3)
            losses.append(loss.item() if step else np.nan)
            for name, value in model.state_dict().items():
                expected.setdefault(name, []).append(value.detach().clone().numpy())
    np.savez(
        EXPECTED,
        steps=np.array(steps, dtype=np.int64),
        loss=np.array(losses, dtype=np.float64),
        **{f"param:{k}": np.stack(v) for k, v in expected.items()},
    )


if __name__ == "__main__":
    main()
