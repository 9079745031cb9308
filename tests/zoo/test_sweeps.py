"""Sweep zoos: random-search sweeps recorded as populations, with diverging runs handled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperlapse.zoo import ZOOS, build_zoo, open_zoo, sweep_hparams
from hyperlapse.zoo.builders import ZooSpec
from hyperlapse.zoo.sweeps import SWEEP_LOG_LR, SWEEP_TASKS, _train_sweep_population, sweep_split


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    out = tmp_path_factory.mktemp("z") / "cancer"
    return build_zoo("sweep-cancer", out, runs=8, block_size=4, scale=0.1, quiet=True)


def test_sweep_zoos_are_registered():
    assert set(SWEEP_TASKS) <= set(ZOOS)


def test_hyperparameters_span_the_search_space():
    hp = sweep_hparams(0, range(400))
    assert set(hp["optimizer"]) == {"sgd", "adam"}
    for opt, (lo, hi) in SWEEP_LOG_LR.items():
        lr = np.log10(hp["lr"][hp["optimizer"] == opt])
        assert lo <= lr.min() < lo + 0.5 and hi - 0.5 < lr.max() <= hi
    assert set(hp["batch_size"]) == {16, 32, 64, 128} and set(hp["depth"]) == {1, 2, 3}
    # a run's draw depends on its seed and index only
    again = sweep_hparams(0, range(10, 12))
    assert again["lr"].tolist() == hp["lr"][10:12].tolist()


def test_sweep_zoo_labels_and_curves(cancer):
    zoo = open_zoo(cancer.folder)
    assert len(zoo) == 8 and zoo.complete
    planned = 40  # scale 0.1 of 400 steps, at least four snapshots apart
    for run in zoo:
        a = run.attrs
        assert a["planned_steps"] == planned and a["sweep_metric"] == "val_metric"
        assert a["task"] == "sweep-cancer" and a["sweep_goal"] == "max"
        assert run.steps.tolist() == list(range(0, planned + 1, 10))
        m = run.metrics
        assert set(m) >= {"train_loss", "val_loss", "val_metric"}
        assert np.all((m["val_metric"] >= 0) & (m["val_metric"] <= 1))
        assert 0 <= a["final_metric"] <= 1
        assert a["final_val_metric"] == pytest.approx(m["val_metric"][-1])


def test_a_diverging_run_reads_chance_and_spares_the_others(tmp_path):
    data = sweep_split("sweep-cancer", 0)
    hp = {"optimizer": np.asarray(["sgd", "sgd"]), "lr": np.asarray([1e4, 0.05]),
          "batch_size": np.asarray([32, 32]), "weight_decay": np.asarray([0.0, 0.0]),
          "init_scale": np.asarray([1.0, 1.0]), "label_noise": np.asarray([0.0, 0.0])}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as build_zoo trains: tiny matmuls
    try:
        labels = _train_sweep_population(
            tmp_path / "p.zarr", [0, 1], hp, data, widths=[30, 16, 2], kind="classify",
            steps=40, seed=0, shared_init=False, progress=lambda f: None)
    finally:
        torch.set_num_threads(threads)
    assert labels["diverged_at"][0] > 0 and labels["diverged_at"][1] == -1
    assert labels["final_metric"][0] == 0.5  # chance for two classes
    assert labels["final_metric"][1] > 0.85
    from hyperlapse import open_trajectory

    traj = open_trajectory(tmp_path / "p.zarr")
    w = np.asarray(traj.weights("0.weight"))
    assert np.isfinite(w).all()  # the diverged run keeps its last finite weights
    val = np.asarray(traj.weights("curve_val_metric"))
    after = traj.steps >= labels["diverged_at"][0]
    assert np.all(val[after, 0] == 0.5)


def test_regression_metric_is_clipped(tmp_path):
    zoo = build_zoo("sweep-friedman", tmp_path / "f", runs=6, scale=0.1, quiet=True)
    fin = zoo.labels("final_metric")
    assert fin.min() >= -1.0 and fin.max() <= 1.0 and fin.max() > 0.0


def test_killed_sweep_build_resumes_identically(tmp_path, monkeypatch):
    real = ZOOS["sweep-cancer"]
    calls = []

    def dying(folder, block, runs, seed, shared, progress, scale):
        calls.append(block)
        out = real.train_block(folder, block, runs, seed, shared, progress, scale)
        if block == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt
        return out

    monkeypatch.setitem(ZOOS, "sweep-cancer", ZooSpec(**{**real.__dict__, "train_block": dying}))
    with pytest.raises(KeyboardInterrupt):
        build_zoo("sweep-cancer", tmp_path / "z", runs=6, block_size=3, scale=0.1, quiet=True)
    zoo = build_zoo("sweep-cancer", tmp_path / "z", runs=6, block_size=3, scale=0.1, quiet=True)
    assert calls == [0, 1, 1]
    monkeypatch.setitem(ZOOS, "sweep-cancer", real)
    ref = build_zoo("sweep-cancer", tmp_path / "r", runs=6, block_size=3, scale=0.1, quiet=True)
    for a, b in zip(zoo, ref, strict=True):
        assert a.attrs == b.attrs and len(a) == len(b)
        np.testing.assert_allclose(a.weights("0.weight"), b.weights("0.weight"), atol=1e-6)


def test_cli_builds_a_sweep_zoo(tmp_path, capsys):
    from hyperlapse.cli import main

    assert main(["zoo", "sweep-cancer", "--out", str(tmp_path / "z"), "--runs", "2",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "sweep-cancer: 2 runs" in out and "final test metric median" in out
    assert open_zoo(tmp_path / "z")[0].attrs["planned_steps"] == 400
