"""``hyperlapse info STORE [--json]`` through ``hyperlapse.cli.main``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder
from hyperlapse.cli import main
from hyperlapse.store.writer import StoreWriter


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("info") / "run.zarr")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrajectoryRecorder(path, model, every=2, snapshots_per_chunk=4) as rec:
        rec.attach(opt)
        for _ in range(9):
            opt.zero_grad()
            loss = model(torch.randn(8, 64)).pow(2).mean()
            loss.backward()
            opt.step()
            rec.log(loss=loss.detach(), lr=0.1)
    return path


def test_info_json(store: str, capsys) -> None:
    assert main(["info", store, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["snapshots"] == 6 and info["steps"] == [0, 9]  # 0, 2, 4, 6, 8 + final 9
    assert info["widths"] == [64, 32, 4]
    assert [p["name"] for p in info["parameters"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert info["parameters"][0]["shape"] == [32, 64]
    assert info["numel"] == 64 * 32 + 32 + 32 * 4 + 4
    assert info["raw_bytes"] == info["numel"] * 4 * 6
    assert 0 < info["stored_bytes"] < 2 * info["raw_bytes"]
    assert info["files"] >= 10 and info["total_bytes"] >= info["stored_bytes"]
    assert sorted(info["metrics"]) == ["loss", "lr"]
    assert info["closed"] is True and info["dropped"] == 0 and info["nonfinite"] == 0


def test_info_text(store: str, capsys) -> None:
    assert main(["info", store]) == 0
    out = capsys.readouterr().out
    assert "snapshots    6  steps 0..9" in out
    assert "MLP 64-32-4 (activations: tanh, -)" in out
    assert "closed       yes" in out


@pytest.mark.parametrize("case", ["missing", "not_a_store"])
def test_info_errors(case: str, tmp_path, capsys) -> None:
    path = tmp_path / "x.zarr"
    if case == "not_a_store":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hyperlapse info: error: ")
    assert {"missing": "nothing exists", "not_a_store": "no zarr.json"}[case] in err


def test_info_on_a_store_with_no_snapshot_yet(tmp_path, capsys) -> None:
    # healthy, nothing committed yet: said so, exit 0 (it used to be an error, like damage)
    path = tmp_path / "x.zarr"
    writer = StoreWriter(path, [{"name": "w", "shape": [2], "dtype": "float32"}])
    assert main(["info", "--verify", str(path)]) == 0
    assert "no snapshot committed yet (its writer is running" in capsys.readouterr().out
    writer.close()
    assert main(["info", str(path)]) == 0
    assert "no snapshot committed yet (closed without any)" in capsys.readouterr().out


def test_info_verify_intact_store(store: str, capsys) -> None:
    assert main(["info", store, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "integrity    verified: all 6 snapshots intact" in out
    assert main(["info", store]) == 0
    assert "not verified" in capsys.readouterr().out
