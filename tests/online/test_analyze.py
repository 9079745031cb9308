from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch
import zarr
from torch import nn

from hyperlapse import TrajectoryRecorder
from hyperlapse.cli import main
from hyperlapse.errors import HyperlapseWarning
from hyperlapse.online import analyze as analyze_mod
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
    assert out[0] == out[1]
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


def test_watch_stops_cleanly_on_ctrl_c(store, tmp_path, monkeypatch):
    # the store is closed already: make it look open, then interrupt the first wait
    real_refresh = type(analyze_mod._open(store)).refresh

    def refresh(self):
        n = real_refresh(self)
        self.attrs = dict(self.attrs, closed=False)
        return n

    def interrupt(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(analyze_mod._open(store)), "refresh", refresh)
    monkeypatch.setattr(analyze_mod.time, "sleep", interrupt)
    res = watch_store(store, tmp_path / "w", quiet=True, plots=False, **FAST)
    assert res["interrupted"] and res["snapshots"] == 5
    assert len(read_reports(res["reports"])) == 5
