"""``hyperlapse demo``: record two small MLPs training and report on their structure.

1. **digits** (scikit-learn's bundled 8x8 digits, 64-64-32-10 ReLU MLP): trained with a
   :class:`~hyperlapse.TrajectoryRecorder` and a :class:`~hyperlapse.LiveReport` attached, so the
   structure report is written while it trains (``OUT/digits/report.html``); the probe inputs
   of the input-space geometry are held-out digits.
2. **moons** (2-D, 2-32-32-2 sigmoid MLP): recorded, then analysed post hoc with
   :func:`~hyperlapse.online.analyze.analyze_store` (``OUT/moons/report.html``), whose page shows
   the volume element of the input plane at the start and the end of training: training
   magnifies space along the decision boundary.

Needs no download; about a minute on 2 CPU cores (``fast=True``: a few seconds, for tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["run_demo"]


def _say(quiet: bool, *lines: str) -> None:
    if not quiet:
        for line in lines:
            print(line, flush=True)


def _digits(seed: int, fast: bool):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=g)
    X = torch.tensor(X, dtype=torch.float32)[perm]
    y = torch.tensor(y)[perm]
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    n_train = 1400
    if fast:
        n_train = 400
        X, y = X[:600], y[:600]
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def _moons(seed: int, fast: bool):
    from sklearn.datasets import make_moons

    X, y = make_moons(200 if fast else 400, noise=0.1, random_state=seed)
    X = torch.tensor(X, dtype=torch.float32)
    X = (X - X.mean(0)) / X.std(0)
    return X, torch.tensor(y)


def _grid(n: int) -> torch.Tensor:
    from .geometry.pullback import grid_probes

    return grid_probes((-3.0, -3.0), (3.0, 3.0), n)[0]


def _train(model, opt, X, y, steps, batch, seed, recorder=None):
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(0, len(X), (batch,), generator=g) if batch < len(X) else slice(None)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        if recorder is not None:
            recorder.log(loss=loss.detach())
    return float(loss.detach())


def run_demo(
    out: str | Path = "hyperlapse-demo", seed: int = 0, quiet: bool = False, *, fast: bool = False
) -> dict[str, Any]:
    """Run the demo into ``out``; returns the paths and headline numbers.

    Args:
        out: output folder (created).
        seed: seeds data splits, models and encoders.
        quiet: print nothing.
        fast: a much smaller run (seconds), for tests.

    Returns:
        ``{"digits": {...}, "moons": {...}}`` each with ``store``, ``html``, ``reports`` and
        the test accuracy / final loss.
    """
    from . import TrajectoryRecorder
    from .online.analyze import analyze_store
    from .online.live import LiveReport
    from .store.info import format_info, store_info

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    result: dict[str, Any] = {}

    # ---- digits, live report while training ------------------------------------------------
    Xtr, ytr, Xte, yte = _digits(seed, fast)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps, every = (60, 10) if fast else (400, 20)
    store = out / "digits.zarr"
    _say(quiet, f"[1/2] digits: training a 64-64-32-10 MLP for {steps} steps, recording every "
         f"{every} with a live report in {out / 'digits'}")
    live = LiveReport(
        out / "digits",
        model=model,
        quiet=quiet,
        verbose=not quiet,
        seed=seed,
        probes=Xte[:64].double(),
        title="hyperlapse demo: digits (live)",
    )
    # the demo owns its output folder: a rerun replaces its stores instead of appending
    with TrajectoryRecorder(store, model, every=every, report=live, mode="overwrite") as rec:
        rec.attach(opt)
        loss = _train(model, opt, Xtr, ytr, steps, 64, seed, rec)
    with torch.no_grad():
        acc = float((model(Xte).argmax(1) == yte).float().mean())
    info = store_info(store)
    result["digits"] = {
        "store": str(store),
        "html": None if live.html is None else str(live.html),
        "reports": len(live.reports),
        "test_accuracy": acc,
        "final_loss": loss,
        "report_dropped": info.get("report_dropped", 0),
    }
    _say(quiet, "", format_info(info), "",
         f"digits: test accuracy {acc:.3f}; live report on {len(live.reports)} of "
         f"{info['snapshots']} snapshots (never blocking training; snapshots it was "
         f"not handed are read back from the store)")

    # ---- moons, analysed after training --------------------------------------------------
    X, y = _moons(seed, fast)
    model = nn.Sequential(
        nn.Linear(2, 32), nn.Sigmoid(), nn.Linear(32, 32), nn.Sigmoid(), nn.Linear(32, 2)
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    steps, every = (100, 20) if fast else (800, 40)
    store = out / "moons.zarr"
    _say(quiet, "", f"[2/2] moons: training a 2-32-32-2 sigmoid MLP for {steps} steps, then "
         f"`hyperlapse analyze` into {out / 'moons'}")
    with TrajectoryRecorder(store, model, every=every, mode="overwrite") as rec:
        rec.attach(opt)
        loss = _train(model, opt, X, y, steps, len(X), seed, rec)
    with torch.no_grad():
        acc = float((model(X).argmax(1) == y).float().mean())
    extra = {"volume_grid": 24, "probes": _grid(12)} if fast else {}
    res = analyze_store(
        store, out / "moons", seed=seed, quiet=quiet, points=X, labels=y, **extra
    )
    result["moons"] = {
        "store": str(store),
        "html": res["html"],
        "reports": res["snapshots"],
        "train_accuracy": acc,
        "final_loss": loss,
        "embeddings": res["embeddings"],
    }
    _say(quiet, "", format_info(store_info(store)), "",
         f"moons: train accuracy {acc:.3f}; {res['snapshots']} snapshots analysed", "",
         "Open the reports in a browser:",
         f"  {result['digits']['html']}",
         f"  {result['moons']['html']}")
    return result
