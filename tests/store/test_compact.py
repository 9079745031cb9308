"""hyperlapse compact: a closed store rewritten compressed, bit-exact, crash-safe."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import StoreError
from hyperlapse.store.compact import compact_store, finish_interrupted_compaction


def _record(path, compression="none", close=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = TrajectoryRecorder(path, model, every=2, compression=compression,
                             probes=torch.randn(8, 32), snapshots_per_chunk=4)
    rec.attach(opt)
    for step in range(30):
        opt.zero_grad()
        model(torch.randn(16, 32)).pow(2).mean().backward()
        opt.step()
        rec.log(loss=float(step) if step % 3 else float("nan"))
    if close:
        rec.close()
    return rec


def _snapshot(path):
    traj = open_trajectory(path)
    return ({n: np.asarray(traj.weights(n)).copy() for n in traj.param_names},
            traj.steps.copy(), traj.metrics["loss"].copy(), traj.probes)


def test_compact_is_lossless_and_smaller(tmp_path, capsys):
    path = tmp_path / "run.zarr"
    _record(path)
    weights, steps, loss, probes = _snapshot(path)
    assert main(["compact", str(path)]) == 0
    assert "with zstd" in capsys.readouterr().out
    after = _snapshot(path)
    for name, w in weights.items():
        assert w.tobytes() == after[0][name].tobytes(), name
    assert np.array_equal(steps, after[1]) and np.array_equal(loss, after[2], equal_nan=True)
    assert torch.equal(probes, after[3])
    inner = zarr.open_group(path, mode="r")["params/0.weight"].metadata.codecs[0].codecs
    assert type(inner[1]).__name__ == "ZstdCodec"
    assert main(["info", "--verify", str(path)]) == 0
    assert not list(tmp_path.glob("run.zarr.*"))  # nothing left beside it


def test_compact_refuses_a_store_still_being_written(tmp_path):
    path = tmp_path / "run.zarr"
    rec = _record(path, close=False)
    rec.flush()
    with pytest.raises(StoreError, match="closed"):
        compact_store(path)
    rec.close()
    assert compact_store(path)["snapshots"] == 16


def test_an_interrupted_compaction_is_tidied(tmp_path):
    path = tmp_path / "run.zarr"
    _record(path)
    weights = _snapshot(path)[0]
    # crashed between the renames: the original sits at .pre-compact, a copy half-written
    path.rename(tmp_path / "run.zarr.pre-compact")
    (tmp_path / "run.zarr.compacting").mkdir()
    assert "restored" in finish_interrupted_compaction(path)
    assert not (tmp_path / "run.zarr.compacting").exists()
    for name, w in weights.items():
        assert np.asarray(open_trajectory(path).weights(name)).tobytes() == w.tobytes()
    # crashed after the swap: the replaced original still waits to be deleted
    shutil.copytree(path, tmp_path / "run.zarr.pre-compact")
    res = compact_store(path, compression="auto")
    assert "removed the replaced original" in res["tidied"]
    assert not (tmp_path / "run.zarr.pre-compact").exists()


def test_compact_refuses_urls(tmp_path):
    with pytest.raises(StoreError, match="local"):
        compact_store("memory://x/run.zarr")


def test_compact_reports_bytes_and_keeps_created(tmp_path, capsys):
    from hyperlapse.store.info import disk_usage, human_size

    path = tmp_path / "run.zarr"
    _record(path)
    created = open_trajectory(path).attrs["created"]
    files, before = disk_usage(path)
    assert before > 10 * files  # bytes, not the file count (the old output showed "23 B")
    res = compact_store(path, compression="zstd")
    assert res["bytes_before"] == before
    assert res["bytes_after"] == disk_usage(path)[1] < before
    assert res["ratio"] == pytest.approx(res["bytes_after"] / before)
    assert open_trajectory(path).attrs["created"] == created
    assert open_trajectory(path).attrs["version"] == 3 and open_trajectory(path).verify() == []
    again = compact_store(path, compression="lz4")
    assert main(["compact", str(path), "--compression", "zstd"]) == 0
    out = capsys.readouterr().out
    assert f"{human_size(disk_usage(path)[1])} (" in out and human_size(again["bytes_after"]) in out
