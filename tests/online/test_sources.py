"""One snapshot source: analyze, watch, LiveReport and RunAnalysis see the same snapshots, the
same metrics, skip the same non-finite snapshots, and say what a reader must know."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, describe_mlp
from hyperlapse.arch import UNKNOWN_ACTIVATION
from hyperlapse.errors import HyperlapseWarning
from hyperlapse.online import analyze as analyze_mod
from hyperlapse.online.analyze import analyze_store, watch_store
from hyperlapse.online.live import LiveReport
from hyperlapse.online.runner import RunAnalysis
from hyperlapse.online.sources import StoreSnapshots, open_mlp_store, writing_state
from hyperlapse.report.jsonl import read_reports

FAST = dict(d=3, refine_steps=1, geometry_every=2, noise_every=0)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))


def _train(rec, model, steps=12, nan_at=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    rec.attach(opt)
    X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    for i in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        if nan_at == i:
            with torch.no_grad():
                saved = model[0].weight.clone()
                model[0].weight[0, 0] = float("nan")
            rec.capture()
            with torch.no_grad():
                model[0].weight.copy_(saved)
        opt.step()
        rec.log(loss=loss.item())
        if i % 4 == 0:
            rec.log(val=loss.item() / 2)  # logged only at some snapshots: NaN elsewhere


def test_every_consumer_sees_the_same_snapshots_and_metrics(tmp_path):
    store = tmp_path / "run.zarr"
    model = _model()
    live = LiveReport(tmp_path / "live", model=model, quiet=True, plots=False, **FAST)
    with TrajectoryRecorder(store, model, every=2, report=live) as rec:
        _train(rec, model)
    a = analyze_store(store, tmp_path / "a", quiet=True, plots=False, **FAST)
    w = watch_store(store, tmp_path / "w", quiet=True, plots=False, **FAST)
    run = RunAnalysis(store, tmp_path / "r", **FAST)
    run.advance()
    run.close(page=False)
    got = {
        name: [(r["step"], r["metrics"]) for r in read_reports(path / "reports.jsonl")]
        for name, path in (("analyze", tmp_path / "a"), ("watch", tmp_path / "w"),
                           ("run", tmp_path / "r"), ("live", tmp_path / "live"))
    }
    assert a["snapshots"] == w["snapshots"] == len(got["live"]) == 7
    assert got["analyze"] == got["watch"] == got["run"] == got["live"]
    # a scalar not logged at a snapshot is absent, never None or NaN
    assert any("val" not in m for _, m in got["analyze"])
    assert all(v is not None for _, m in got["analyze"] for v in m.values())


def test_nonfinite_snapshots_are_skipped_with_a_note(tmp_path, capsys):
    store = tmp_path / "run.zarr"
    model = _model()
    with pytest.warns(HyperlapseWarning, match="NaN or infinite"):
        with TrajectoryRecorder(store, model, every=4) as rec:
            _train(rec, model, nan_at=5)
    traj = open_mlp_store(store)
    source = StoreSnapshots(traj)
    given = [s.index for s in source.take()]
    assert len(given) == len(traj) - 1 and len(source.skipped) == 1
    bad = source.skipped[0][0]
    assert bad not in given and "non-finite" in source.skipped[0][1]
    res = analyze_store(store, tmp_path / "a", **FAST)  # was LinAlgError
    assert res["snapshots"] == len(traj) - 1 and len(res["skipped"]) == 1
    assert "skipped" in capsys.readouterr().err
    assert "non-finite" in (tmp_path / "a" / "report.html").read_text()
    run = RunAnalysis(store, tmp_path / "r", **FAST)
    assert run.advance() == len(traj) - 1 and run.status()["skipped"]
    run.close(page=False)


def test_analyze_says_a_run_is_still_being_written(tmp_path, capsys):
    store = tmp_path / "run.zarr"
    model = _model()
    rec = TrajectoryRecorder(store, model, every=2)
    try:
        _train(rec, model, steps=6)
        rec.flush()
        traj = open_mlp_store(store)
        assert writing_state(traj) == "writing"
        res = analyze_store(store, tmp_path / "a", **FAST)
        err = capsys.readouterr().err
        assert f"still being written: {len(traj)} committed" in err
        assert "hyperlapse watch" in err
        assert res["still_being_written"]
        page = (tmp_path / "a" / "report.html").read_text()
        assert "still being written" in page and "hyperlapse watch" in page
    finally:
        rec.close()
    assert writing_state(open_mlp_store(store)) == "closed"
    res = analyze_store(store, tmp_path / "b", quiet=True, plots=False, **FAST)
    assert not res["still_being_written"]


def test_unknown_activations_are_said_and_geometry_skipped(tmp_path, capsys):
    model = _model()
    arch = copy.deepcopy(describe_mlp(model))
    arch["layers"][0]["activation"] = UNKNOWN_ACTIVATION
    store = tmp_path / "run.zarr"
    with TrajectoryRecorder(store, model, every=2, architecture=arch) as rec:
        _train(rec, model, steps=4)
    res = analyze_store(store, tmp_path / "a", **{**FAST, "geometry_every": 1})
    assert "activations unknown" in capsys.readouterr().err
    reports = read_reports(res["reports"])
    assert all(r["geometry"] is None and r["neurons"] is None for r in reports)
    assert not reports[0]["activations_known"]
    assert "could not be determined" in (tmp_path / "a" / "report.html").read_text()


def test_watch_shows_no_eta_while_the_total_is_unknown(tmp_path, monkeypatch):
    store = tmp_path / "run.zarr"
    model = _model()
    totals = []
    real = analyze_mod.Progress.update

    def update(self, done, *, total=None, **postfix):
        totals.append(total)
        real(self, done, total=total, **postfix)

    monkeypatch.setattr(analyze_mod.Progress, "update", update)
    rec = TrajectoryRecorder(store, model, every=2)
    try:
        _train(rec, model, steps=6)
        rec.flush()
        res = watch_store(store, tmp_path / "w", plots=False, poll_s=0.05, timeout_s=0.3,
                          **FAST)
    finally:
        rec.close()
    assert res["timed_out"] and res["snapshots"] >= 3
    assert totals and all(t is None for t in totals)
