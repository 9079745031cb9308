from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from hyperlapse import LiveReport, TrajectoryRecorder, describe_mlp, open_trajectory
from hyperlapse.errors import ArchitectureError, ConfigError
from hyperlapse.online import session as session_mod
from hyperlapse.online.live import architecture_from_state
from hyperlapse.report.jsonl import read_reports

FAST = dict(d=4, refine_steps=2, geometry_every=2)


def _train(model, rec, steps, sleep=0.0):
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    rec.attach(opt)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(32, model[0].in_features, generator=g)
    y = (X[:, 0] > 0).long()
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        rec.log(loss=loss.detach())
        if sleep:
            time.sleep(sleep)


@pytest.mark.slow
def test_live_report_in_process(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    live = LiveReport(tmp_path / "live", model=model, quiet=True, **FAST)
    with TrajectoryRecorder(tmp_path / "run.zarr", model, every=5, report=live) as rec:
        _train(model, rec, 30)
    traj = open_trajectory(tmp_path / "run.zarr")
    reports = read_reports(tmp_path / "live" / "reports.jsonl")
    # nothing dropped (the worker queue holds them), every snapshot reported once, in order
    assert live.dropped == 0
    assert [r["step"] for r in reports] == traj.steps.tolist() == [0, 5, 10, 15, 20, 25, 30]
    # the recorder hands over the metrics logged with the snapshot
    assert reports[-1]["metrics"]["loss"] == pytest.approx(traj.metrics["loss"][-1])
    assert reports[0]["geometry"] is not None and reports[1]["geometry"] is None
    for name in ("report.html", "radius.png", "drift.png", "scores.png", "disk.png",
                 "volume.png"):
        assert (tmp_path / "live" / name).stat().st_size > 1000, name
    assert live.html == tmp_path / "live" / "report.html"


@pytest.mark.parametrize("max_pending", [1, 0])
def test_live_report_catches_up_from_the_store_instead_of_dropping(
    tmp_path, monkeypatch, max_pending
):
    """Both hand-over queues overflow (a listener slower than training): every snapshot is
    still reported, in order, the missing ones read back from the store; the counts add up."""
    import hyperlapse.record.pipeline as recorder_module

    monkeypatch.setattr(recorder_module, "_REPORT_QUEUE", 1)
    original = session_mod.ReportSession.process

    def slow_process(self, *args, **kwargs):
        time.sleep(0.02)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(session_mod.ReportSession, "process", slow_process)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
    path = tmp_path / "run.zarr"
    with TrajectoryRecorder(path, model, every=1, flush_every_s=0.2) as rec:  # a first session
        _train(model, rec, 3)
    live = LiveReport(
        tmp_path / "live", model=model, quiet=True, plots=False, max_pending=max_pending, **FAST
    )
    with TrajectoryRecorder(path, model, every=1, report=live, flush_every_s=0.2) as rec:
        _train(model, rec, 30)  # resumed: this session's snapshots only
    traj = open_trajectory(path)
    reports = read_reports(tmp_path / "live" / "reports.jsonl")
    ours = traj.steps[4:].tolist()
    assert [r["step"] for r in reports] == [r["step"] for r in live.reports] == ours
    assert ours == list(range(4, 34))
    assert live.dropped == 0 and live.from_store > 0  # the queues did overflow
    handed_over = live.received + traj.attrs["report_dropped"]
    assert handed_over == len(ours)  # every snapshot was handed over or counted as not
    assert live.from_store <= len(ours) - 1  # the first one is always handed over
    for r in reports[-3:]:
        assert r["metrics"]["loss"] == pytest.approx(traj.metrics["loss"][4 + r["index"]])


def test_live_report_without_catch_up_drops_and_counts(tmp_path, monkeypatch):
    import hyperlapse.record.pipeline as recorder_module

    # the recorder's hand-over queue holds every snapshot, so the drops are the LiveReport's
    # own (with a short queue, a loaded machine could drop them all before the LiveReport)
    monkeypatch.setattr(recorder_module, "_REPORT_QUEUE", 64)
    gate = threading.Event()
    original = session_mod.ReportSession.process

    def held_process(self, *args, **kwargs):
        gate.wait(10)  # held until every snapshot was handed over: max_pending overflows
        return original(self, *args, **kwargs)

    monkeypatch.setattr(session_mod.ReportSession, "process", held_process)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
    live = LiveReport(tmp_path / "live", model=model, quiet=True, plots=False, max_pending=2,
                      catch_up=False, **FAST)
    with TrajectoryRecorder(tmp_path / "r.zarr", model, every=1, report=live) as rec:
        _train(model, rec, 20)
        deadline = time.monotonic() + 10
        while live.received < 21 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.attrs["report_dropped"] == 0
    assert live.from_store == 0 and live.dropped >= 21 - 1 - 2  # one in process, two pending
    # every snapshot was reported, dropped by the LiveReport, or not handed over
    assert len(live.reports) + live.dropped + traj.attrs["report_dropped"] == len(traj) == 21
    steps = [r["step"] for r in live.reports]
    assert steps == sorted(steps) and set(steps) < set(traj.steps.tolist())


def test_on_snapshot_never_waits_for_the_encoder(tmp_path, monkeypatch):
    gate = threading.Event()
    calls = []

    def slow_process(self, index, step, state, metrics=None):
        gate.wait(10)
        calls.append(index)

    monkeypatch.setattr(session_mod.ReportSession, "process", slow_process)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    live = LiveReport(tmp_path, model=model, quiet=True, plots=False, max_pending=3)
    state = model.state_dict()
    start = time.perf_counter()
    for i in range(6):
        live.on_snapshot(i, i, state, {})
    assert time.perf_counter() - start < 1.0
    # one taken by the (blocked) worker, three queued, the rest dropped and counted
    assert live.dropped >= 2
    gate.set()
    live.close()
    assert len(calls) + live.dropped == 6 and calls == sorted(calls)
    live.close()  # idempotent


def test_worker_errors_surface(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    live = LiveReport(tmp_path, model=model, quiet=True, plots=False, **FAST)
    live.on_snapshot(0, 0, {"0.weight": torch.zeros(3, 2)}, {})  # missing parameters
    with pytest.raises(ArchitectureError):
        live.close()


def test_architecture_guess_and_errors(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    arch = architecture_from_state(model.state_dict())
    ref = describe_mlp(model)
    assert arch["widths"] == ref["widths"]
    assert [layer["weight"] for layer in arch["layers"]] == [
        layer["weight"] for layer in ref["layers"]
    ]
    bad = {"a.weight": torch.zeros(4, 3), "b.weight": torch.zeros(2, 5)}
    with pytest.raises(ArchitectureError, match="chain"):
        architecture_from_state(bad)
    with pytest.raises(ConfigError, match="max_pending"):
        LiveReport(tmp_path, max_pending=-1)


def test_live_report_is_quiet_in_stdout_unless_verbose(tmp_path, capsys):
    import torch
    from torch import nn

    from hyperlapse import LiveReport, TrajectoryRecorder

    for verbose, quiet in ((False, False), (True, False), (False, True)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        live = LiveReport(tmp_path / f"r{verbose}{quiet}", model=model, plots=False,
                          verbose=verbose, quiet=quiet, refine_steps=1, geometry_every=0)
        with TrajectoryRecorder(tmp_path / f"s{verbose}{quiet}.zarr", model, every=1,
                                report=live) as rec:
            for step in range(3):
                rec.capture(step=step)
        out, err = capsys.readouterr()
        assert len(live.reports) == 3
        assert (out.count("step") >= 3) == verbose  # a line per snapshot only when asked
        assert ("verbose=True" in err) == (not verbose and not quiet)  # said once, on stderr
        assert err.count("hyperlapse LiveReport") <= 1
