"""The board's JSON API, without a browser: statuses, series, frames, bounded memory."""

from __future__ import annotations

import gc
import json
import os
import socket
import tracemalloc

import pytest
import torch
from board_helpers import FAST, record
from starlette.testclient import TestClient
from torch import nn

from hyperlapse import TrajectoryRecorder
from hyperlapse.board.analysis import Analyser
from hyperlapse.board.app import create_app
from hyperlapse.board.data import _scores, report_series
from hyperlapse.board.runs import RunIndex, count_lines
from hyperlapse.cli import main


def _board(root, analyse=False):
    index = RunIndex(root, rescan_s=0.0)
    analyser = Analyser(index, analyse=analyse, **FAST)
    return index, analyser, TestClient(create_app(index, analyser))


def _runs(client):
    r = client.get("/api/runs")
    assert r.status_code == 200
    return {run["name"]: run for run in r.json()}


def _edit_attrs(store, **changes):
    path = store / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"].update(changes)
    path.write_text(json.dumps(meta))


def test_runs_and_their_states(tmp_path):
    record(tmp_path / "closed.zarr", snapshots=5)
    live = record(tmp_path / "live.zarr", snapshots=3, close=False, snapshots_per_chunk=1)
    try:
        record(tmp_path / "crashed.zarr", snapshots=4)
        dead_pid = 2 ** 22 + 7  # above the default pid_max: no such process
        _edit_attrs(tmp_path / "crashed.zarr", closed=False,
                    writer={"host": socket.gethostname(), "pid": dead_pid})
        record(tmp_path / "damaged.zarr", snapshots=3)
        (tmp_path / "damaged.zarr" / "zarr.json").write_text("{not json")
        (tmp_path / "creating.zarr").mkdir()  # a writer has made the folder, no metadata yet
        torch.manual_seed(0)
        conv = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2))
        with pytest.warns(Warning):
            _record_conv(tmp_path / "sub" / "conv.zarr", conv)
        (tmp_path / "notes").mkdir()  # not a store, not listed
        _, _, client = _board(tmp_path)
        runs = _runs(client)
        assert set(runs) == {"closed.zarr", "live.zarr", "crashed.zarr", "damaged.zarr",
                             "creating.zarr", "sub/conv.zarr"}
        assert runs["closed.zarr"]["status"] == "closed"
        assert runs["closed.zarr"]["snapshots"] == 5 and runs["closed.zarr"]["last_step"] == 8
        assert runs["closed.zarr"]["recording_cost"]["training_blocked_fraction"] >= 0
        assert runs["live.zarr"]["status"] == "recording"
        assert runs["crashed.zarr"]["status"] == "crashed-uncommitted"
        assert runs["damaged.zarr"]["status"] == "damaged"
        assert "JSON" in runs["damaged.zarr"]["detail"]
        assert runs["creating.zarr"]["status"] == "not-ready"
        assert runs["sub/conv.zarr"]["mlp"] is False
        assert "not an MLP" in runs["sub/conv.zarr"]["detail"]
        # a run that appears later is listed at the next request
        record(tmp_path / "later.zarr", snapshots=2)
        assert "later.zarr" in _runs(client)
    finally:
        live.close()
    assert _runs(client)["live.zarr"]["status"] == "closed"


def _record_conv(path, model):
    from hyperlapse import TrajectoryRecorder

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrajectoryRecorder(path, model, every=1) as rec:
        rec.attach(opt)
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 1, 4)).sum().backward()
            opt.step()


def test_metrics_series_and_decimation(tmp_path):
    record(tmp_path / "a.zarr", snapshots=41, every=1)
    _, _, client = _board(tmp_path)
    full = client.get("/api/runs/a.zarr/metrics").json()
    assert full["snapshot_steps"] == list(range(41))
    loss = full["metrics"]["loss"]
    assert loss["step"] == list(range(1, 41)) and loss["stride"] == 1  # logged from step 1
    val = full["metrics"]["val"]
    assert val["step"] == list(range(1, 41, 2))  # logged every other snapshot: no NaN sent
    small = client.get("/api/runs/a.zarr/metrics?max_points=10").json()
    assert small["snapshots"] == {"total": 41, "shown": 9, "stride": 5}
    assert small["snapshot_steps"][0] == 0 and small["snapshot_steps"][-1] == 40
    assert small["metrics"]["loss"]["value"][-1] == loss["value"][-1]  # the last point kept
    assert client.get("/api/runs/nope.zarr/metrics").status_code == 404


def test_analyser_embedding_volume_and_reader_board(tmp_path):
    record(tmp_path / "a.zarr", snapshots=5)
    index, analyser, client = _board(tmp_path, analyse=True)
    assert analyser.role == "analyser"
    second = Analyser(RunIndex(tmp_path), **FAST)
    assert second.role == "reader"  # the first board's lock: this one only reads
    second.stop()
    try:
        for _ in range(6):
            analyser.step_once()
        run = _runs(client)["a.zarr"]
        assert run["analysed"] == 5 and run["analysis"]["state"] == "up to date"
        assert (index.analysis_dir("a.zarr") / "report.html").is_file()  # closed run: page
        frame = client.get("/api/runs/a.zarr/embedding?i=2").json()
        n = 2 + 6 + 2
        assert len(frame["x"]) == len(frame["radius"]) == len(frame["layer"]) == n
        assert frame["step"] == 4 and frame["layer"] == [0] * 2 + [1] * 6 + [2] * 2
        # the disk keeps the exact hyperbolic radius: |xy| = tanh(r / 2) for c = 1
        for x, y, r in zip(frame["x"], frame["y"], frame["radius"], strict=True):
            assert abs((x * x + y * y) ** 0.5 - torch.tanh(torch.tensor(r / 2)).item()) < 1e-5
        from hyperlapse import open_trajectory

        state = open_trajectory(tmp_path / "a.zarr")[2]
        assert frame["in_norm"][2:8] == pytest.approx(state["0.weight"].norm(dim=1).tolist())
        other = client.get("/api/runs/a.zarr/embedding?i=4").json()
        assert other["x"] != frame["x"]
        assert client.get("/api/runs/a.zarr/embedding?i=9").status_code == 404
        vol = client.get("/api/runs/a.zarr/volume?i=4").json()
        assert len(vol["log_volume"]) == len(vol["y"])
        assert len(vol["log_volume"][0]) == len(vol["x"])
        assert {c for row in vol["cls"] for c in row} <= {0, 1}
        rep = client.get("/api/runs/a.zarr/reports").json()
        assert rep["analysed"] == 5 and rep["step"] == [0, 2, 4, 6, 8]
    finally:
        analyser.stop()
    third = Analyser(RunIndex(tmp_path), **FAST)  # the lock is free again after stop()
    assert third.role == "analyser"
    third.stop()


def test_scores_are_shown_only_beside_baselines():
    scores = {"link_auc": 0.99, "link_ap": 0.9, "sign_acc": 0.65, "new_link_ap": 0.4,
              "head_link_auc": 0.7,
              "baselines": {"persistence": {"link_auc": 0.999, "link_ap": 0.95},
                            "edgebank": {"link_auc": 0.98}},
              "base_rate": {"link": 0.2}}
    out = _scores(scores)
    assert set(out) == {"link_auc", "link_ap", "head_link_auc"}  # no sign_acc, no new_link
    assert out["link_auc"]["best"] == "persistence"
    assert out["link_auc"]["margin"] == pytest.approx(0.99 - 0.999)
    assert out["head_link_auc"]["margin"] == pytest.approx(0.7 - 0.999)
    assert out["link_ap"]["base_rate"] == 0.2
    assert _scores({"link_auc": 0.99}) == {}  # a number without its baseline is not shown


def _report(step, drift, noise):
    return {"step": step, "layers": [{"layer": 1, "type": "hidden", "radius_mean": 1.0,
                                      "drift_mean": drift, "drift_noise": noise}]}


def test_drift_only_against_its_noise_floor(tmp_path):
    reports = [_report(0, None, None), _report(10, 0.02, 0.035), _report(20, 0.03, None),
               _report(30, 0.2, None), _report(50, 0.5, 0.1)]
    (tmp_path / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reports)
                                            + '{"torn')
    s = report_series(tmp_path)
    assert s["analysed"] == 5  # the torn last line is not a report
    assert s["noise"]["1"] == [None, 0.035, 0.035, 0.035, 0.1]  # carried forward
    excess = s["excess_per_step"]["1"]
    assert excess[:3] == [None, 0.0, 0.0]  # under the floor: noise, not change
    assert excess[3] == pytest.approx((0.2 - 0.035) / 10)
    assert excess[4] == pytest.approx((0.5 - 0.1) / 20)  # per step: interval-independent
    assert [f["step"] for f in s["fastest"]] == [50, 30]  # only above the floor, fastest first
    dec = report_series(tmp_path, max_points=2)
    assert dec["decimation"] == {"total": 5, "shown": 3, "stride": 3}
    assert dec["step"] == [0, 30, 50]
    assert [f["step"] for f in dec["fastest"]] == [50, 30]  # found over every report


def test_count_lines_reads_only_new_bytes(tmp_path):
    path = tmp_path / "r.jsonl"
    cache: dict = {}
    assert count_lines(path, cache) == 0
    path.write_text('{"a": 1}\n{"a": 2}\n{"a"')
    assert count_lines(path, cache) == 2 and cache["offset"] == 18
    with open(path, "a") as f:
        f.write(': 3}\n')
    assert count_lines(path, cache) == 3


def test_server_memory_does_not_grow_with_requests_or_snapshots(tmp_path):
    record(tmp_path / "a.zarr", snapshots=30, every=1)
    index, analyser, client = _board(tmp_path, analyse=True)
    try:
        while analyser.step_once():
            pass
    finally:
        analyser.stop()

    def requests():
        client.get("/api/runs")
        client.get("/api/runs/a.zarr/metrics")
        client.get("/api/runs/a.zarr/reports")
        client.get("/api/runs/a.zarr/embedding?i=29")

    for _ in range(3):
        requests()  # warm caches (imports, zarr metadata)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(30):
            requests()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, f"{grown} bytes retained after 30 rounds of requests"


def test_cli_board_errors(tmp_path, capsys):
    assert main(["board", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "Expected a folder of runs" in err and "missing" in err


def test_write_comparison_is_self_contained(tmp_path):
    from hyperlapse.board import write_comparison

    record(tmp_path / "a.zarr", snapshots=4)
    record(tmp_path / "b.zarr", snapshots=4, seed=1)
    out = write_comparison([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "c.html")
    text = out.read_text()
    assert "<script src=" not in text and 'rel="stylesheet" href=' not in text  # all inline
    assert "window.HYPERLAPSE_STATIC" in text and "Plotly" in text
    assert '"a.zarr"' in text and '"b.zarr"' in text
    assert not os.path.exists(str(out) + ".partial")


def test_ctrl_c_stops_the_board_cleanly(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    record(tmp_path / "a.zarr", snapshots=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "board.log"
    with open(log, "w") as err:
        board = subprocess.Popen([sys.executable, "-m", "hyperlapse.cli", "board", str(tmp_path),
                                  "--port", str(port)], stdout=subprocess.DEVNULL, stderr=err)
        try:
            end = time.monotonic() + 60
            while True:
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs").read()
                    break
                except OSError:
                    assert board.poll() is None and time.monotonic() < end, log.read_text()
                    time.sleep(0.1)
            assert json.loads(body)[0]["name"] == "a.zarr"
            assert Analyser(RunIndex(tmp_path)).role == "reader"  # the board holds the lock
        finally:
            board.send_signal(signal.SIGINT)
            code = board.wait(timeout=60)
    text = log.read_text()
    assert code == 130 and "Traceback" not in text, text
    assert "hyperlapse board: interrupted" in text
    again = Analyser(RunIndex(tmp_path))
    assert again.role == "analyser"  # released by the stopped board
    again.stop()


def _sweep_run(path, seed: int, steps: int, planned: int = 40) -> None:
    """A tiny sweep run logging val_acc and its planned length (what forecast_sweep reads)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=10 ** (-2.5 + 2.0 * (seed % 7) / 6))
    with TrajectoryRecorder(str(path), model, every=5, fsync=False) as rec:
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


def test_forecast_beside_each_live_run_with_its_current_value(tmp_path):
    pytest.importorskip("sklearn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _sweep_run(tmp_path / "live-0.zarr", 20, 15)
        _, _, client = _board(tmp_path)
        few = client.get("/api/forecast").json()  # one unfinished run: nothing to fit on
        assert few["available"] is False and "finished" in few["reason"] and few["runs"] == {}
        for s in range(12):
            _sweep_run(tmp_path / f"done-{s:02d}.zarr", s, 40)
        _, _, client = _board(tmp_path)
        res = client.get("/api/forecast").json()
    finally:
        torch.set_num_threads(threads)
    assert res["available"] is True and res["metric"] == "val_acc" and res["finished"] == 12
    assert list(res["runs"]) == ["live-0.zarr"]
    live = res["runs"]["live-0.zarr"]
    assert live["rank"] == 1 and live["low"] <= live["predicted"] <= live["high"]
    # the comparison shown beside it: the run's own last logged val_acc
    from hyperlapse import open_trajectory

    assert live["current"] == pytest.approx(float(open_trajectory(
        tmp_path / "live-0.zarr").metrics["val_acc"][-1]))
