"""A short recorded training run, shared by the analysis benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hyperlapse import TrajectoryRecorder


def record_run(
    path: Path, widths: list[int], snapshots: int, *, seed: int = 0, every: int = 5,
    activation: type[nn.Module] = nn.ReLU, batch: int = 128,
) -> None:
    """Train an MLP of ``widths`` on random data, recording ``snapshots`` snapshots."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([activation()] if i < len(widths) - 2 else [])
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    X, y = torch.randn(batch, widths[0]), torch.randint(0, widths[-1], (batch,))
    with TrajectoryRecorder(path, model, every=every) as rec:
        rec.attach(opt)
        for _ in range(every * (snapshots - 1)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            opt.step()
