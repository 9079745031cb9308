"""RunAnalysis: the bounded, restartable analysis the board builds on (contract C3)."""

from __future__ import annotations

import threading
import time

import torch
from online_helpers import assert_json_close
from test_analyze import _record

from hyperlapse.online.runner import CHECKPOINT, RunAnalysis
from hyperlapse.report.jsonl import read_reports
from hyperlapse.store.embeddings import read_embeddings

FAST = dict(d=3, refine_steps=1, geometry_every=0, noise_every=0)


def test_advance_bounds_work_and_restarts_without_duplicates(tmp_path):
    store = tmp_path / "run.zarr"
    _record(store, steps=30, every=3)  # 11 snapshots
    out = tmp_path / "out"
    run = RunAnalysis(store, out, **FAST)
    assert run.advance(4) == 4
    assert run.status()["analysed"] == 4 and run.status()["pending"] == 7
    assert run.advance(3) == 3
    run.close(page=False)
    reports = read_reports(out / "reports.jsonl")
    assert [r["index"] for r in reports] == list(range(7))
    assert (out / CHECKPOINT).is_file()

    again = RunAnalysis(store, out, **FAST)
    assert again.advance() == 4
    assert again.advance() == 0
    st = again.status()
    assert st["analysed"] == st["committed"] == 11 and st["closed"] and st["error"] is None
    assert st["state"] == "closed" and st["last_step"] == 30
    again.close(page=False)
    resumed = read_reports(out / "reports.jsonl")
    assert [r["step"] for r in resumed] == list(range(0, 31, 3))

    # a restart is the same analysis as one uninterrupted pass
    whole = RunAnalysis(store, tmp_path / "whole", **FAST)
    assert whole.advance() == 11
    whole.close(page=False)
    straight = read_reports(tmp_path / "whole" / "reports.jsonl")
    for a, b in zip(resumed, straight, strict=True):
        a.pop("timing"), b.pop("timing")
        assert_json_close(a, b, tol=1e-5)  # float32 analyzer
    emb = read_embeddings(out / "embeddings.zarr")
    ref = read_embeddings(tmp_path / "whole" / "embeddings.zarr")
    assert emb["step"].tolist() == ref["step"].tolist()
    torch.testing.assert_close(emb["z"], ref["z"])


def test_restart_after_crash_cuts_back_to_checkpoint(tmp_path):
    store = tmp_path / "run.zarr"
    _record(store, steps=15, every=3)  # 6 snapshots
    out = tmp_path / "out"
    run = RunAnalysis(store, out, checkpoint_every_s=0, **FAST)
    run.advance(2)
    run.checkpoint_every_s = 1e9  # the next rows are written but never checkpointed: a crash
    run.advance(2)
    assert len(read_reports(out / "reports.jsonl")) == 4
    run.session.close_writer()  # the process dies here
    again = RunAnalysis(store, out, **FAST)
    assert again.advance() == 4
    again.close(page=False)
    assert [r["index"] for r in read_reports(out / "reports.jsonl")] == list(range(6))
    assert read_embeddings(out / "embeddings.zarr")["z"].shape[0] == 6


def test_other_options_start_over(tmp_path):
    store = tmp_path / "run.zarr"
    _record(store, steps=10, every=5)
    out = tmp_path / "out"
    run = RunAnalysis(store, out, **FAST)
    run.advance()
    run.close(page=False)
    other = RunAnalysis(store, out, seed=1, **FAST)
    assert other.advance() == 3
    other.close(page=False)
    assert len(read_reports(out / "reports.jsonl")) == 3


def test_follows_a_recorder_while_it_writes(tmp_path):
    store = tmp_path / "live.zarr"
    out = tmp_path / "out"
    run = RunAnalysis(store, out, **FAST)
    assert run.advance() == 0 and run.status()["committed"] == 0  # not there yet: no error
    assert run.status()["state"] == "absent" and run.status()["error"] is None
    started = threading.Event()
    writer = threading.Thread(
        target=_record, args=(store,),
        kwargs=dict(steps=40, every=2, sleep=0.02, flush=0.05, started=started),
    )
    writer.start()
    started.wait(30)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run.advance(3)
        seen.append(run.status()["analysed"])
        if run.status()["closed"] and not run.status()["pending"]:
            break
        time.sleep(0.02)
    writer.join()
    run.advance()
    html = run.close()
    st = run.status()
    assert st["analysed"] == st["committed"] == 21 and st["error"] is None
    assert len(set(seen)) > 2  # it advanced in several increments while the run was written
    assert html is not None and html.is_file()
    assert [r["step"] for r in read_reports(out / "reports.jsonl")] == list(range(0, 41, 2))


def test_a_store_that_cannot_be_analysed_is_a_status_not_an_exception(tmp_path):
    import warnings

    from torch import nn

    from hyperlapse import TrajectoryRecorder

    store = tmp_path / "conv.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recorder warns that this is not an MLP
        with TrajectoryRecorder(store, nn.Conv1d(2, 3, 3)) as rec:
            rec.capture(step=1)
    run = RunAnalysis(store, tmp_path / "out", **FAST)
    assert run.advance() == 0
    st = run.status()
    assert st["error"] is not None and "MLP" in st["error"]
    assert run.advance() == 0  # stays failed, never raises
    assert run.close() is None


def test_run_analysis_holds_no_report_in_memory_but_pages_them_all(tmp_path):
    """The board's follower: memory does not grow with the run, the page still has every
    report (read back from reports.jsonl at close)."""
    import torch
    from torch import nn

    from hyperlapse import TrajectoryRecorder
    from hyperlapse.online.runner import RunAnalysis
    from hyperlapse.report.jsonl import read_reports

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    store = tmp_path / "run.zarr"
    with TrajectoryRecorder(store, model, every=2, flush_every_s=None) as rec:
        rec.attach(opt)
        for _ in range(8):
            opt.zero_grad()
            model(torch.randn(16, 2)).pow(2).mean().backward()
            opt.step()
    run = RunAnalysis(store, tmp_path / "out", **FAST)
    done = run.advance()
    assert done == run.analysed == 5
    assert run.session.reports == []  # nothing held: the board's memory stays flat
    page = run.close(page=True)
    assert page is not None and page.is_file()
    assert len(read_reports(tmp_path / "out" / "reports.jsonl")) == 5
