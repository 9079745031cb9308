"""The sweep forecaster: curve extrapolation, features, forecast_sweep and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import ConfigError
from hyperlapse.predict import SweepForecaster, TooFewFinishedRunsError, forecast_sweep
from hyperlapse.predict.features import PermutedRun
from hyperlapse.predict.sweep_forecast import (
    curve_features,
    cut_length,
    extrapolate_curve,
    sweep_info,
    trajectory_features,
)

PLANNED = 40


def _record_run(path, seed: int, steps: int, planned: int = PLANNED, every: int = 5) -> None:
    """A tiny sweep run: lr from the seed, logs val_acc and planned_steps at every snapshot."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    lr = 10 ** (-2.5 + 2.0 * (seed % 7) / 6)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with TrajectoryRecorder(str(path), model, every=every, fsync=False) as rec:
        rec.attach(opt)
        rec.log(val_acc=0.5, planned_steps=planned)
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            with torch.no_grad():
                acc = (model(x).argmax(1) == y).float().mean()
            rec.log(val_acc=acc, train_loss=loss.detach(), planned_steps=planned)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only spin on a busy machine
    try:
        _record_sweep(folder)
    finally:
        torch.set_num_threads(threads)
    return folder


def _record_sweep(folder) -> None:
    for s in range(12):  # finished
        _record_run(folder / f"done-{s:02d}.zarr", s, PLANNED)
    for s in range(12, 15):  # in progress, past the 20 % cut
        _record_run(folder / f"live-{s:02d}.zarr", s, 15)
    _record_run(folder / "early.zarr", 15, 5)  # in progress, before the 20 % cut (step 8)


def test_extrapolate_recovers_a_pow3_curve():
    steps = np.arange(0, 81, 10.0)
    c, a, alpha = 0.9, 0.3, 0.7
    y = c - a * np.power(np.maximum(steps, 1) / 400, -alpha) * 0.05
    pred = extrapolate_curve(steps, y, 400)
    truth = c - a * 0.05
    # the observed curve ends well below the truth; the average of the three families (pow3
    # exact, exp3 and log-power saturating earlier) moves more than half of the way there
    assert y[-1] < pred < truth
    assert abs(pred - truth) < 0.5 * abs(y[-1] - truth)


def test_extrapolate_falls_back_to_the_last_value():
    assert extrapolate_curve(np.asarray([0, 10.0]), np.asarray([0.2, 0.4]), 100) == 0.4
    assert extrapolate_curve(np.asarray([0, 10, 20.0]), np.asarray([0.3, 0.3, 0.3]), 100) == 0.3
    # a loss (goal min) that falls keeps falling: the forecast is below the last value
    steps = np.arange(0, 101, 10.0)
    loss = 1.0 / (1 + steps / 20)
    assert extrapolate_curve(steps, loss, 500, goal="min") < loss[-1]


def test_sweep_info_reads_the_stores(sweep_dir):
    done = sweep_info(open_trajectory(sweep_dir / "done-00.zarr"))
    assert done["metric"] == "val_acc" and done["planned_steps"] == PLANNED
    assert done["finished"] and 0 <= done["final"] <= 1
    live = sweep_info(open_trajectory(sweep_dir / "live-12.zarr"))
    assert not live["finished"] and live["final"] is None and live["step"] == 15


class _Prefix:
    """The first ``m`` snapshots of a run: the same run seen while it was in progress."""

    def __init__(self, run, m: int) -> None:
        self._run, self._m = run, m
        self.steps = np.asarray(run.steps)[:m]
        self.metrics = {k: np.asarray(v)[:m] for k, v in run.metrics.items()}
        self.architecture, self.attrs = run.architecture, run.attrs

    def __len__(self) -> int:
        return self._m

    def weights(self, name):
        return np.asarray(self._run.weights(name))[: self._m]


def test_features_have_fixed_length_and_ignore_the_future(sweep_dir):
    run = open_trajectory(sweep_dir / "done-03.zarr")
    n = cut_length(run, 0.2, PLANNED)
    assert n == 2  # snapshots at steps 0 and 5 lie before the cut at step 8
    full = curve_features(run, n, PLANNED, "val_acc")
    # val_acc and train_loss: 5 resampled values, last, best, change; then the extrapolation
    assert full.shape == (2 * 8 + 1,)
    prefix = _Prefix(run, 3)
    np.testing.assert_array_equal(curve_features(prefix, n, PLANNED, "val_acc"), full)
    np.testing.assert_array_equal(trajectory_features(prefix, n), trajectory_features(run, n))
    n5 = cut_length(run, 0.5, PLANNED)
    assert n5 == 5 and trajectory_features(run, n5).shape == trajectory_features(run, n).shape


def test_trajectory_features_invariant_to_hidden_permutations(sweep_dir):
    run = open_trajectory(sweep_dir / "done-05.zarr")
    perm = PermutedRun(run, torch.Generator().manual_seed(0))
    n = len(run)
    a, b = trajectory_features(run, n), trajectory_features(perm, n)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_forecast_ranks_the_runs_in_progress(sweep_dir, tmp_path):
    res = forecast_sweep(str(sweep_dir / "*.zarr"), at=0.2)
    assert res.finished == 12 and res.metric == "val_acc"
    assert [r["rank"] for r in res.rows] == [1, 2, 3]
    assert {r["run"].rsplit("/", 1)[-1] for r in res.rows} == {
        "live-12.zarr", "live-13.zarr", "live-14.zarr"}
    preds = [r["predicted"] for r in res.rows]
    assert preds == sorted(preds, reverse=True)
    for r in res.rows:
        assert r["low"] <= r["predicted"] <= r["high"] <= 1.0  # accuracy: capped at 1
    assert [w.rsplit("/", 1)[-1] for w in res.waiting] == ["early.zarr"]
    assert "rank" in res.table()
    # a saved forecaster gives the same forecast without any finished run
    path = tmp_path / "f.pkl"
    res.forecaster.save(path)
    live = [str(sweep_dir / f"live-{s}.zarr") for s in (12, 13, 14)]
    again = forecast_sweep(live, predictor=path)
    assert again.finished == 0
    assert sorted(r["predicted"] for r in again.rows) == pytest.approx(sorted(preds))
    assert isinstance(SweepForecaster.load(path), SweepForecaster)


def test_forecast_refuses_with_too_few_finished_runs(sweep_dir):
    stores = [str(sweep_dir / f"done-{s:02d}.zarr") for s in range(4)] + [
        str(sweep_dir / "live-12.zarr")]
    with pytest.raises(TooFewFinishedRunsError, match="at least 10 finished runs.*4 of the 5"):
        forecast_sweep(stores)
    with pytest.raises(ConfigError, match="Expected at in"):
        forecast_sweep(stores, at=1.5)


def test_forecast_needs_the_planned_length(tmp_path):
    path = tmp_path / "run.zarr"
    model = nn.Sequential(nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrajectoryRecorder(str(path), model, every=1) as rec:
        rec.attach(opt)
        opt.step()
        rec.log(val_acc=0.5)
    with pytest.raises(ConfigError, match="planned length"):
        forecast_sweep([str(path)])
    with pytest.raises(ConfigError, match="log the metric 'val_loss'"):
        forecast_sweep([str(path)], metric="val_loss", planned_steps=10)


def test_cli_sweep_forecast(sweep_dir, capsys):
    assert main(["sweep", str(sweep_dir / "*.zarr"), "--forecast", "--at", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "live-12.zarr" in out and "fitted on 12 finished runs" in out
    stores = [str(sweep_dir / f"done-{s:02d}.zarr") for s in range(3)]
    assert main(["sweep", *stores, "--forecast"]) == 1
    assert "at least 10 finished runs" in capsys.readouterr().err
    assert main(["sweep", *stores]) == 1
    assert "--out" in capsys.readouterr().err


class _Edited:
    """A run whose logged metrics are edited (a diverged run's NaN, a metric it never logged)."""

    def __init__(self, run, **metrics) -> None:
        self._run = run
        self.metrics = {k: np.asarray(v) for k, v in run.metrics.items()}
        for k, v in metrics.items():
            if v is None:
                del self.metrics[k]
            else:
                self.metrics[k] = v

    def __len__(self) -> int:
        return len(self._run)

    def __getattr__(self, name):
        return getattr(self._run, name)


def test_a_finished_run_ending_in_nan_counts_as_the_worst(sweep_dir):
    runs = [open_trajectory(p) for p in sorted(sweep_dir.glob("*.zarr"))]
    first = runs[0]
    acc = np.asarray(first.metrics["val_acc"]).copy()
    acc[-1] = np.nan
    runs[0] = _Edited(first, val_acc=acc)
    res = forecast_sweep(runs)  # a NaN target would stop the regressor
    assert res.finished == 12 and len(res.rows) == 3


def test_a_run_without_the_fitted_losses_is_refused(sweep_dir):
    runs = [open_trajectory(p) for p in sorted(sweep_dir.glob("*.zarr"))]
    live = [i for i, r in enumerate(runs) if "live-12" in str(r.location)][0]
    runs[live] = _Edited(runs[live], train_loss=None)
    with pytest.raises(ConfigError, match=r"lacks \['train_loss'\]"):
        forecast_sweep(runs)
