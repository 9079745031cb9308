"""Tiny recorded runs for the board's tests (and the browser test's recorder process)."""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from hyperlapse import TrajectoryRecorder

#: RunAnalysis options that keep a test's analysis to a few milliseconds per snapshot.
FAST = dict(d=3, refine_steps=1, geometry_every=0, noise_every=2)


def mlp(inputs: int = 2, hidden: int = 6, outputs: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, outputs))


def record(path, *, snapshots: int = 6, every: int = 2, model: nn.Module | None = None,
           seed: int = 0, close: bool = True, pause_s: float = 0.0, **kwargs):
    """Train ``model`` (default: a 2-6-2 tanh MLP) recording ``snapshots`` snapshots and
    logging ``loss`` every step and ``val`` every other snapshot. Returns the recorder (open
    when ``close=False``: the caller closes it)."""
    model = model if model is not None else mlp(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, next(model.parameters()).shape[1], generator=g)
    y = (x[:, 0] > 0).long()
    rec = TrajectoryRecorder(path, model, every=every, **kwargs)
    rec.attach(opt)
    for step in range((snapshots - 1) * every):
        opt.zero_grad()
        out = model(x)
        loss = nn.functional.cross_entropy(out.reshape(len(x), -1)[:, :2], y)
        loss.backward()
        opt.step()
        metrics = {"loss": loss.item()}
        if step % (2 * every) == 0:
            metrics["val"] = 1.0 - loss.item() / 2
        rec.log(**metrics)
        if pause_s:
            time.sleep(pause_s)
    if close:
        rec.close()
    return rec


if __name__ == "__main__":  # python board_helpers.py STORE SNAPSHOTS PAUSE_S (a live writer)
    record(sys.argv[1], snapshots=int(sys.argv[2]), every=1, pause_s=float(sys.argv[3]),
           flush_every_s=0.2, seed=int(sys.argv[4]) if len(sys.argv) > 4 else 0)
