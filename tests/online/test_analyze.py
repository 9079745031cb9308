from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch
import zarr
from online_helpers import assert_json_close
from torch import nn

from hyperlapse import TrajectoryRecorder
from hyperlapse.cli import main
from hyperlapse.errors import ConfigError, EmptyStoreError, HyperlapseWarning, NotAStoreError
from hyperlapse.online import analyze as analyze_mod
from hyperlapse.online import sources as sources_mod
from hyperlapse.online.analyze import analyze_store, read_embeddings, watch_store
from hyperlapse.report.jsonl import read_reports

FAST = dict(refine_steps=2, geometry_every=3)


def _record(path, steps=20, every=5, sleep=0.0, flush=None, widths=(3, 6, 2), started=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(widths[0], widths[1]), nn.Tanh(),
                          nn.Linear(widths[1], widths[2]))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    X = torch.randn(32, widths[0])
    y = (X[:, 0] > 0).long()
    kwargs = {} if flush is None else {"flush_every_s": flush}
    with TrajectoryRecorder(path, model, every=every, **kwargs) as rec:
        rec.attach(opt)
        if started is not None:
            started.set()  # the store exists and is open for writing
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            loss.backward()
            opt.step()
            rec.log(loss=loss.detach())
            if sleep:
                import time

                time.sleep(sleep)
    return model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "run.zarr"
    _record(path)
    return path


def test_analyze_writes_reports_embeddings_and_page(store, tmp_path):
    res = analyze_store(store, tmp_path / "a", quiet=True, d=3, **FAST)
    reports = read_reports(res["reports"])
    emb = read_embeddings(res["embeddings"])
    assert res["snapshots"] == len(reports) == 5
    assert emb["z"].shape == (5, 3 + 6 + 2, 3)
    assert emb["step"].tolist() == [r["step"] for r in reports] == [0, 5, 10, 15, 20]
    assert emb["node_layer"].tolist() == [0] * 3 + [1] * 6 + [2] * 2
    assert emb["node_type"].tolist() == [0] * 3 + [1] * 6 + [2] * 2
    assert emb["attrs"]["manifold"] == "poincare" and emb["attrs"]["d"] == 3
    # embeddings are the ones the reports were computed from: radius of layer 1
    c = emb["attrs"]["c"]
    r = 2 / c**0.5 * torch.atanh(c**0.5 * emb["z"][-1].double().norm(dim=-1))
    assert r[3:9].mean().item() == pytest.approx(reports[-1]["layers"][1]["radius_mean"],
                                                 rel=1e-4)
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # radius, drift, scores, disk (3-D input)
    assert "<script" not in html and "src=\"http" not in html and "href=" not in html


def test_cli_analyze_is_deterministic_across_processes(store, tmp_path):
    out = []
    for name in ("x", "y"):
        cmd = [sys.executable, "-m", "hyperlapse.cli", "analyze", str(store), "--out",
               str(tmp_path / name), "--quiet", "--no-plots", "--refine-steps", "2",
               "--geometry-every", "3"]
        subprocess.run(cmd, check=True, capture_output=True)
        out.append([{k: v for k, v in r.items() if k != "timing"}
                    for r in read_reports(tmp_path / name / "reports.jsonl")])
    # the embeddings are bit-exact (below); report statistics computed with LAPACK (the partial
    # Spearman's least squares) may differ in the last bit with memory alignment
    assert_json_close(out[0], out[1], tol=1e-12, abs_tol=1e-15)
    a = zarr.open_array(str(tmp_path / "x" / "embeddings.zarr" / "z"), mode="r")[...]
    b = zarr.open_array(str(tmp_path / "y" / "embeddings.zarr" / "z"), mode="r")[...]
    assert (a == b).all()


def test_cli_errors(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing.zarr"), "--out", str(tmp_path)]) == 1
    assert "error" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {}}))
    assert main(["watch", str(tmp_path / "junk"), "--out", str(tmp_path / "o")]) == 1


def test_analyze_rejects_a_non_mlp(tmp_path, capsys):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x * self.scale)

    model = Odd()
    with pytest.warns(HyperlapseWarning, match="not an MLP"):
        with TrajectoryRecorder(tmp_path / "odd.zarr", model, every=1) as rec:
            rec.capture()
    assert main(["analyze", str(tmp_path / "odd.zarr"), "--out", str(tmp_path / "o")]) == 1
    assert "MLP" in capsys.readouterr().err


@pytest.mark.slow
def test_watch_follows_a_store_being_written(tmp_path):
    path = tmp_path / "live.zarr"
    started = threading.Event()

    def writer():
        _record(path, steps=40, every=5, sleep=0.02, flush=0.1, started=started)

    thread = threading.Thread(target=writer)
    thread.start()
    started.wait()
    res = watch_store(path, tmp_path / "w", quiet=True, poll_s=0.05, timeout_s=120, d=3,
                      **FAST)
    thread.join()
    assert res["closed"] and not res["timed_out"] and not res["interrupted"]
    reports = read_reports(res["reports"])
    assert [r["step"] for r in reports][-1] == 40
    assert res["snapshots"] == len(reports)
    assert res["html"] is not None


@pytest.mark.parametrize("command", ["analyze", "watch"])
def test_terminal_shows_one_line_per_snapshot_above_the_bar(store, tmp_path, terminal, command):
    run = analyze_store if command == "analyze" else watch_store
    run(store, tmp_path / command, quiet=False, plots=False, d=3, **FAST)
    screen = terminal.screen()
    # the per-snapshot lines stay whole above the bar, which ends on the last line
    assert len(screen) == 6 and all("step" in line for line in screen[:5])
    assert [line.split()[0] for line in screen[:5]] == (
        [f"[{i}/5]" for i in range(1, 6)] if command == "analyze" else [f"#{i}" for i in range(5)]
    )
    bar = screen[-1].split()
    assert bar[:4] == [command, "100%|####################|", "5/5", "snap"]
    assert (bar[-1] == "lag=0") == (command == "watch")


def test_watch_stops_cleanly_on_ctrl_c(store, tmp_path, monkeypatch):
    # the store is closed already: make it look open, then interrupt the first wait
    real_refresh = type(sources_mod.open_mlp_store(store)).refresh

    def refresh(self):
        n = real_refresh(self)
        self.attrs = dict(self.attrs, closed=False)
        return n

    def interrupt(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(sources_mod.open_mlp_store(store)), "refresh", refresh)
    monkeypatch.setattr(sources_mod.time, "sleep", interrupt)
    res = watch_store(store, tmp_path / "w", quiet=True, plots=False, **FAST)
    assert res["interrupted"] and res["snapshots"] == 5
    assert len(read_reports(res["reports"])) == 5


def test_analyze_stride_and_step_range_select_snapshots(store, tmp_path):
    # store steps: 0, 5, 10, 15, 20
    res = analyze_store(store, tmp_path / "s", quiet=True, plots=False, d=3, stride=2,
                        steps="5:", **FAST)
    reports = read_reports(res["reports"])
    assert [r["step"] for r in reports] == [5, 15, 20]  # every 2nd from step 5, plus the last
    assert [r.get("source_index", r["index"]) for r in reports] == [1, 3, 4]
    emb = read_embeddings(res["embeddings"])
    assert emb["step"].tolist() == [5, 15, 20] and emb["z"].shape[0] == 3
    with pytest.raises(EmptyStoreError, match="Widen --steps"):
        analyze_store(store, tmp_path / "e", quiet=True, plots=False, steps="100:", **FAST)
    for bad in ("5", "a:b", "9:3", "1:2:3"):
        with pytest.raises(ConfigError, match="step range"):
            analyze_store(store, tmp_path / "e", quiet=True, steps=bad, **FAST)
    with pytest.raises(ConfigError, match="stride"):
        analyze_store(store, tmp_path / "e", quiet=True, stride=0, **FAST)


def test_analyze_threads_are_set_and_restored(store, tmp_path, monkeypatch):
    seen = []
    real = analyze_mod.ReportSession.process

    def process(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(analyze_mod.ReportSession, "process", process)
    before = torch.get_num_threads()
    analyze_store(store, tmp_path / "t", quiet=True, plots=False, embeddings=False, d=3,
                  threads=1, **FAST)
    assert set(seen) == {1} and torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads"):
        analyze_store(store, tmp_path / "t", quiet=True, threads=0, **FAST)


def test_ctrl_c_during_analyze_writes_the_page_for_the_snapshots_done(store, tmp_path,
                                                                       monkeypatch, capsys):
    real = analyze_mod.ReportSession.process
    calls = []

    def process(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(analyze_mod.ReportSession, "process", process)
    res = analyze_store(store, tmp_path / "i", quiet=True, d=3, **FAST)
    assert res["interrupted"] and res["snapshots"] == 2 and res["selected"] == 5
    assert len(read_reports(res["reports"])) == 2
    emb = read_embeddings(res["embeddings"])
    assert emb["z"].shape[0] == 2 and emb["step"].tolist() == [0, 5]
    html = (tmp_path / "i" / "report.html").read_text()
    assert "interrupted" in html and "after 2 of 5" in html
    calls.clear()
    code = main(["analyze", str(store), "--out", str(tmp_path / "j"), "--quiet",
                 "--refine-steps", "2", "--geometry-every", "3"])
    assert code == 130 and "interrupted" in capsys.readouterr().out


def test_watch_waits_for_a_store_that_appears_later(tmp_path):
    path = tmp_path / "late.zarr"

    def writer():
        import time

        time.sleep(0.6)
        _record(path, steps=10, every=5)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        res = watch_store(path, tmp_path / "w", quiet=True, plots=False, poll_s=0.05,
                          timeout_s=120, d=3, **FAST)
    finally:
        thread.join()
    assert res["closed"] and not res["timed_out"]
    assert [r["step"] for r in read_reports(res["reports"])] == [0, 5, 10]


def test_watch_gives_up_on_a_store_that_never_appears(tmp_path, capsys):
    with pytest.raises(NotAStoreError, match="none appeared"):
        watch_store(tmp_path / "never.zarr", tmp_path / "w", quiet=True, poll_s=0.02,
                    timeout_s=0.1)
    assert main(["watch", str(tmp_path / "never.zarr"), "--out", str(tmp_path / "w"),
                 "--timeout", "0.1", "--poll", "0.02"]) == 1
    assert "raise --timeout" in capsys.readouterr().err


def test_probe_file_is_used_and_named_in_the_page(store, tmp_path):
    import numpy as np

    probes = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.save(tmp_path / "p.npy", probes.numpy())
    kw = dict(quiet=True, d=3, refine_steps=2, geometry_every=1)
    a = analyze_store(store, tmp_path / "a", embeddings=False, probes=tmp_path / "p.npy", **kw)
    b = analyze_store(store, tmp_path / "b", embeddings=False, plots=False, probes=probes, **kw)
    c = analyze_store(store, tmp_path / "c", embeddings=False, plots=False, **kw)

    def geometry(res):
        return [r.get("geometry") for r in read_reports(res["reports"])]

    assert geometry(a) == geometry(b) and geometry(a) != geometry(c)
    assert "16 inputs from" in (tmp_path / "a" / "report.html").read_text()
    np.save(tmp_path / "bad.npy", np.zeros((4, 5)))
    with pytest.raises(ConfigError, match=r"shape \[B, 3\]"):
        analyze_store(store, tmp_path / "d", probes=tmp_path / "bad.npy", **kw)
    with pytest.raises(ConfigError, match="does not exist"):
        analyze_store(store, tmp_path / "d", probes=tmp_path / "none.npy", **kw)


def test_embeddings_open_in_xarray(store, tmp_path):
    xr = pytest.importorskip("xarray")
    res = analyze_store(store, tmp_path / "x", quiet=True, plots=False, d=3, **FAST)
    ds = xr.open_zarr(res["embeddings"], consolidated=False)
    assert dict(ds["z"].sizes) == {"snapshot": 5, "node": 11, "dim": 3}
    assert ds["step"].values.tolist() == [0, 5, 10, 15, 20]
    assert ds["node_layer"].dims == ("node",)


def test_non_mlp_error_gives_advice_a_cli_user_can_follow(tmp_path, capsys):
    model = nn.Sequential(nn.Conv1d(1, 2, 3))
    with pytest.warns(HyperlapseWarning):
        with TrajectoryRecorder(tmp_path / "conv.zarr", model, every=1) as rec:
            rec.capture()
    assert main(["analyze", str(tmp_path / "conv.zarr"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "hyperlapse info" in err and "describe_mlp(model)" not in err


def _sweep_stores(tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "sub" / "a.zarr"
    _record(a, steps=10, every=5)
    _record(b, steps=15, every=5, widths=(2, 5, 2))
    return [a, b, tmp_path / "missing.zarr"]


def test_sweep_in_process_gathers_one_row_per_store(tmp_path, capsys):
    from hyperlapse.online.sweep import analyze_sweep

    stores = _sweep_stores(tmp_path)
    res = analyze_sweep(stores, tmp_path / "out", quiet=True, plots=False, embeddings=False,
                        d=3, **FAST)
    rows = res["rows"]
    assert [r["store"] for r in rows] == [str(s) for s in stores]
    assert rows[0]["error"] is None and rows[0]["snapshots"] == 3 and rows[1]["snapshots"] == 4
    assert "NotAStoreError" in rows[2]["error"]
    # the row is the run's own last report, not something recomputed
    last = read_reports(tmp_path / "out" / "a-1" / "reports.jsonl")[-1]
    assert rows[1]["final_radius_l1"] == last["layers"][1]["radius_mean"]
    assert rows[1]["last_step"] == 15
    # every score column has its baseline's beside it (same snapshots and candidates)
    assert rows[1]["mean_link_auc_baseline"] is not None and "mean_link_auc" in rows[1]
    assert (tmp_path / "out" / "sweep.csv").read_text().count("\n") == 4
    code = main(["sweep", *map(str, stores[:2]), "--out", str(tmp_path / "cli"), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "2 runs" in printed
    # the static comparison page names both runs and carries its JavaScript inline
    page = (tmp_path / "cli" / "comparison.html").read_text()
    assert "comparison page" in printed and "a-1" in page and "<script src=\"http" not in page
    assert main(["sweep", str(stores[2]), "--out", str(tmp_path / "cli2"), "--quiet"]) == 1


@pytest.mark.slow
def test_sweep_on_a_local_dask_cluster_matches_in_process(tmp_path):
    pytest.importorskip("distributed")
    from hyperlapse.online.sweep import analyze_sweep

    stores = _sweep_stores(tmp_path)[:2]
    kw = dict(quiet=True, plots=False, embeddings=False, d=3, **FAST)
    here = analyze_sweep(stores, tmp_path / "here", **kw)
    there = analyze_sweep(stores, tmp_path / "there", scheduler="local", workers=2, **kw)
    assert there["scheduler"].startswith("LocalCluster")
    assert {r["worker_pid"] for r in there["rows"]}.isdisjoint({r["worker_pid"]
                                                                for r in here["rows"]})
    drop = {"out", "seconds", "worker_pid"}
    for a, b in zip(here["rows"], there["rows"], strict=True):
        a = {k: v for k, v in a.items() if k not in drop}
        b = {k: v for k, v in b.items() if k not in drop}
        # float32 kernels may differ in the last bit with memory layout: tolerance, not equality
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
            else:
                assert a[k] == b[k], k


def test_probes_stored_by_the_recorder_are_the_analysis_default(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    probes = torch.randn(12, 3, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ConfigError, match=r"shape \[B, 3\]"):
        TrajectoryRecorder(tmp_path / "bad.zarr", model, probes=torch.zeros(4, 5))
    assert not (tmp_path / "bad.zarr").exists()  # refused before the store was touched
    path = tmp_path / "p.zarr"
    with TrajectoryRecorder(path, model, every=1, probes=probes) as rec:
        for step in range(3):
            with torch.no_grad():
                model[0].weight.mul_(1.1)
            rec.capture(step=step)
    with TrajectoryRecorder(path, model, every=1, probes=torch.ones(5, 3)) as rec:
        rec.capture(step=3)  # a resumed run keeps the first batch
    traj = sources_mod.open_mlp_store(path)
    assert torch.equal(traj.probes, probes.to(torch.float32))
    kw = dict(quiet=True, plots=False, embeddings=False, d=3, refine_steps=1, geometry_every=1)
    stored = analyze_store(path, tmp_path / "a", **kw)
    given = analyze_store(path, tmp_path / "b", probes=probes.double(), **kw)

    def geometry(res):
        return [r["geometry"] for r in read_reports(res["reports"])]

    assert geometry(stored) == geometry(given)
    res = analyze_store(path, tmp_path / "c", quiet=True, d=3, refine_steps=1, geometry_every=1)
    assert "12 inputs stored with the run" in (tmp_path / "c" / "report.html").read_text()
    assert res["snapshots"] == 4
    assert main(["info", "--verify", str(path)]) == 0
