"""Format version 2: checksummed inner chunks, xarray-compatible dimension names, geometric
growth while live and exact shapes once closed, O(1) refresh, dtypes, fsync, recording cost."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import torch
import zarr
from torch import nn
from zarr.codecs import Crc32cCodec

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import ConfigError
from hyperlapse.store import format as fmt
from hyperlapse.store.writer import StoreWriter

xr = pytest.importorskip("xarray")


def _record(path, steps: int = 7, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with TrajectoryRecorder(path, model, every=1, snapshots_per_chunk=4, **kwargs) as rec:
        for step in range(steps):
            with torch.no_grad():
                model[0].weight.add_(1.0)
            rec.capture(step=10 * step)
            rec.log(loss=float(step))
    return model


def test_inner_chunks_carry_crc32c(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _record(path)
    g = zarr.open_group(path, mode="r")
    assert g.attrs["version"] == 3
    for name in ("params/0.weight", "params/2.bias", "step", "wall_time", "metrics/loss"):
        arr = g[name]
        inner = arr.metadata.codecs[0].codecs if arr.shards else arr.metadata.codecs
        assert isinstance(inner[-1], Crc32cCodec), name
    # plain zarr decodes the writer's own chunk encoding (checksum included)
    w = g["params/0.weight"][:]
    assert w.shape == (7, 4, 5)
    np.testing.assert_allclose(np.diff(w[:, 0, 0]), 1.0, rtol=1e-6)
    ours = np.asarray(open_trajectory(path).weights("0.weight"))
    assert np.array_equal(w.view(np.uint32), ours.view(np.uint32))


def test_xarray_opens_closed_store(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _record(path)
    root = xr.open_zarr(path, consolidated=False)
    assert root.sizes["snapshot"] == 7
    assert "step" in root.coords and root["step"].values.tolist() == [0, 10, 20, 30, 40, 50, 60]
    params = xr.open_zarr(path, group="params", consolidated=False)
    assert params["0.weight"].dims == ("snapshot", "0_out", "0_in")
    assert params["0.bias"].dims == ("snapshot", "0_out")
    assert params["2.weight"].dims == ("snapshot", "2_out", "2_in")
    traj = open_trajectory(path)
    np.testing.assert_array_equal(params["0.weight"].values, np.asarray(traj.weights("0.weight")))
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    assert tree["params"]["2.bias"].shape == (7, 3)
    assert tree["metrics"]["loss"].values.tolist() == [float(s) for s in range(7)]
    assert "step" in tree.coords and tree["params"].sizes["snapshot"] == 7
    # non-index coordinates are not inherited by child nodes: attach step explicitly
    w = tree["params"].to_dataset().assign_coords(step=tree["step"])["0.weight"]
    assert w.sel(snapshot=w.step == 30).shape == (1, 4, 5)


def test_dimension_names_unique_where_sizes_differ() -> None:
    params = [
        {"name": "a", "shape": [3, 2], "dtype": "float32"},
        {"name": "b", "shape": [4], "dtype": "float32"},
        {"name": "a_out", "shape": [5], "dtype": "float32"},
        {"name": "c", "shape": [], "dtype": "float32"},
    ]
    dims = fmt.dimension_names(params, None)
    sizes: dict[str, int] = {}
    for p in params:
        d = dims[p["name"]]
        assert d[0] == "snapshot" and len(d) == len(p["shape"]) + 1
        for name, size in zip(d[1:], p["shape"], strict=True):
            assert sizes.setdefault(name, size) == size


def test_live_arrays_grow_geometrically_and_close_trims(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    writer = StoreWriter(path, [{"name": "w", "shape": [2], "dtype": "float32"}],
                         snapshots_per_chunk=4, flush_every_s=None)
    capacities = []
    for t in range(300):
        writer.append({"w": np.full(2, t, dtype=np.float32)}, t, 0.0, {"m": t})
        writer.flush()  # a commit per snapshot: the worst case for metadata writes
        capacities.append(writer.capacity)
    resizes = len(set(capacities))
    assert resizes <= int(np.log2(300 / 4)) + 2  # O(log T) array metadata writes
    live = zarr.open_array(path / "params/w", mode="r")
    assert live.shape[0] >= 300  # runs ahead while live; readers trust `committed`
    traj = open_trajectory(path)
    assert len(traj) == 300 and traj.weights("w")[299].tolist() == [299.0, 299.0]
    writer.close()
    for name in ("params/w", "step", "wall_time", "metrics/m"):
        assert zarr.open_array(path / name, mode="r").shape[0] == 300


def test_refresh_reads_only_the_group_metadata(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    writer = StoreWriter(path, [{"name": "w", "shape": [2], "dtype": "float32"}],
                         snapshots_per_chunk=4, flush_every_s=None)
    for t in range(40):
        writer.append({"w": np.zeros(2, dtype=np.float32)}, t, 0.0)
    writer.flush()
    traj = open_trajectory(path)
    assert traj.steps[-1] == 39
    calls: list[str] = []
    store = traj._store
    original_get = store.get

    async def counting_get(key, *args, **kwargs):
        calls.append(key)
        return await original_get(key, *args, **kwargs)

    store.get = counting_get
    assert traj.refresh() == 0
    assert calls == ["zarr.json"]
    writer.append({"w": np.zeros(2, dtype=np.float32)}, 40, 0.0)
    writer.flush()
    calls.clear()
    assert traj.refresh() == 1 and traj.steps[-1] == 40
    # group metadata + the one step chunk holding the new entry (not the 40 before it)
    assert calls == ["zarr.json", "step/c/0"]
    writer.close()


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_bool_int8_uint8_and_zero_size_tensors(kind: str, tmp_path) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.empty = nn.Parameter(torch.empty(0, 3))
            self.register_buffer("mask", torch.tensor([True, False, True]))
            self.register_buffer("q", torch.tensor([-128, 0, 127], dtype=torch.int8))
            self.register_buffer("u", torch.tensor([[0, 255]], dtype=torch.uint8))

    path = f"memory://v2-{uuid.uuid4().hex}" if kind == "memory" else str(tmp_path / "r.zarr")
    net = Net()
    with pytest.warns(UserWarning, match="not an MLP"):
        rec = TrajectoryRecorder(path, net, every=1, buffers=True, snapshots_per_chunk=4)
    with rec:
        for step in range(5):
            with torch.no_grad():
                net.q.add_(1)
                net.mask.logical_not_()
            rec.capture(step=step)
    traj = open_trajectory(path)
    assert len(traj) == 5
    last = traj[-1]
    assert last["mask"].dtype == torch.bool and torch.equal(last["mask"], net.mask)
    assert last["q"].dtype == torch.int8 and torch.equal(last["q"], net.q)
    assert torch.equal(last["u"], net.u) and last["empty"].shape == (0, 3)
    assert traj[0]["mask"].tolist() == [False, True, False]
    if kind == "local":
        g = zarr.open_group(path, mode="r")
        assert g["buffers" if "buffers" in g else "params/mask"][:].dtype == np.bool_
    assert traj.verify() == []


def test_failed_creation_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    path = tmp_path / "run.zarr"
    with pytest.raises(ConfigError, match="complex64"):
        StoreWriter(path, [{"name": "z", "shape": [2], "dtype": "complex64"}])
    assert not path.exists() or not any(path.iterdir())
    calls = {"n": 0}
    original = StoreWriter._create_scalar

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StoreWriter, "_create_scalar", failing)
    with pytest.raises(fmt.StoreError, match="No space left"):
        StoreWriter(path, [{"name": "w", "shape": [2], "dtype": "float32"}])
    assert calls["n"] == 1 and not any(path.iterdir())
    monkeypatch.setattr(StoreWriter, "_create_scalar", original)
    writer = StoreWriter(path, [{"name": "w", "shape": [2], "dtype": "float32"}])  # retry works
    writer.append({"w": np.ones(2, dtype=np.float32)}, 0, 0.0)
    writer.close()
    assert len(open_trajectory(path)) == 1


def test_resume_removes_stray_partial_files(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    model = _record(path, steps=3)
    stray = path / "params" / "0.weight" / "c" / "0" / "0" / "0.1234abcd.partial"
    stray.write_bytes(b"half a shard")
    # a true continuation (the model as last stored) reopens the store: the writer tidies it
    TrajectoryRecorder(path, model, every=1, snapshots_per_chunk=4).close()
    assert not stray.exists()


def test_fsync_data_before_commit(tmp_path, monkeypatch) -> None:
    from hyperlapse.store import writer as writer_mod

    synced: list[str] = []
    monkeypatch.setattr(writer_mod, "_fsync", lambda p: synced.append(os.fspath(p)))
    path = tmp_path / "run.zarr"
    writer = StoreWriter(path, [{"name": "w", "shape": [2], "dtype": "float32"}],
                         snapshots_per_chunk=4, fsync=True)
    synced.clear()
    writer.append({"w": np.ones(2, dtype=np.float32)}, 0, 0.0)
    writer.flush()
    shard = os.fspath(path / "params/w/c/0/0")
    commit = os.fspath(path / "zarr.json")
    assert shard in synced and commit in synced
    assert synced.index(shard) < synced.index(commit)  # data durable before the commit
    assert synced[-1] == os.fspath(path)  # the folder holding the renamed zarr.json
    writer.close()
    synced.clear()
    nosync = StoreWriter(tmp_path / "b.zarr", [{"name": "w", "shape": [2], "dtype": "float32"}],
                         fsync=False)
    nosync.append({"w": np.ones(2, dtype=np.float32)}, 0, 0.0)
    nosync.close()
    assert synced == []


def test_recording_cost_in_attrs_and_info(tmp_path, capsys) -> None:
    import json

    path = tmp_path / "run.zarr"
    writer = StoreWriter(path, [{"name": "w", "shape": [2], "dtype": "float32"}])
    writer.recording_cost = {"blocked_s": 0.0123, "writer_cpu_s": 1.5, "bytes_written": 4096,
                             "dropped": 0, "mean_snapshot_s": 0.0002, "max_snapshot_s": 0.004}
    writer.append({"w": np.ones(2, dtype=np.float32)}, 0, 0.0)
    writer.flush()
    assert zarr.open_group(path, mode="r").attrs["recording_cost"]["writer_cpu_s"] == 1.5
    writer.close()
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recording_cost"]["bytes_written"] == 4096
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "recording" in out and "blocked_s 12.3 ms" in out and "4.0 KB" in out


def test_documented_xarray_example_runs(tmp_path, monkeypatch) -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "store-format.md").read_text()
    section = doc.split("### Dimension names (xarray)", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    _record("runs/mlp.zarr")
    scope: dict = {}
    exec(compile(code, "store-format.md", "exec"), scope)  # noqa: S102 - the documented example
    assert scope["w"].dims == ("step", "0_out", "0_in")
    assert scope["w"]["step"].values.tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert scope["loss"].shape == (7,)


def test_short_flush_warning_text_and_amplification_is_counted(tmp_path) -> None:
    from hyperlapse.store.writer import short_flush_warning

    assert "flush_every_s=0.05" in short_flush_warning(0.05)
    assert short_flush_warning(2.0) is None and short_flush_warning(None) is None
    params = [{"name": "w", "shape": [64], "dtype": "float32"}]
    writer = StoreWriter(tmp_path / "a.zarr", params, snapshots_per_chunk=16,
                         flush_every_s=0.05, fsync=False)
    for t in range(16):  # a commit per snapshot rewrites the growing partial shard
        writer.append({"w": np.full(64, t, dtype=np.float32)}, t, 0.0)
        writer.flush()
    writer.close()
    whole = StoreWriter(tmp_path / "b.zarr", params, snapshots_per_chunk=16,
                        flush_every_s=None, fsync=False)
    for t in range(16):
        whole.append({"w": np.full(64, t, dtype=np.float32)}, t, 0.0)
    whole.close()
    assert writer.write_amplification > 4 * whole.write_amplification
    assert zarr.open_group(tmp_path / "a.zarr", mode="r").attrs["write_amplification"] > 4


def test_dask_reads_live_and_closed_stores(tmp_path) -> None:
    da = pytest.importorskip("dask.array")
    path = tmp_path / "run.zarr"
    writer = StoreWriter(path, [{"name": "w", "shape": [3, 2], "dtype": "float32"}],
                         snapshots_per_chunk=4, flush_every_s=None)
    for t in range(10):
        writer.append({"w": np.full((3, 2), t, dtype=np.float32)}, t, 0.0)
    writer.flush()
    g = zarr.open_group(path, mode="r")
    arr = g["params/w"]
    n = g.attrs["committed"]
    live = da.from_zarr(arr, chunks=arr.shards)[:n].compute()  # the shape runs ahead: slice
    assert arr.shape[0] > n and live.shape == (10, 3, 2)
    assert live[:, 0, 0].tolist() == list(range(10))
    writer.close()
    arr = zarr.open_group(path, mode="r")["params/w"]
    closed = da.from_zarr(arr, chunks=arr.shards).compute()
    assert np.array_equal(closed, live)


def test_all_nan_metric_chunks_are_written_not_taken_for_damage(tmp_path) -> None:
    # zarr skips a chunk equal to the fill value (NaN for metrics) unless told otherwise; a
    # skipped chunk below `committed` would read as damage
    path = tmp_path / "run.zarr"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    with TrajectoryRecorder(path, model, every=1, snapshots_per_chunk=4) as rec:
        rec.capture(step=0)
        rec.log(late=float("nan"))
        rec.capture(step=1)
        rec.log(late=float("nan"), loss=1.0)
    metrics = open_trajectory(path).metrics
    assert np.isnan(metrics["late"]).all() and metrics["loss"].tolist()[-1] == 1.0
    assert main(["info", "--verify", str(path)]) == 0


@pytest.mark.parametrize("compression", ["auto", "none", "lz4", "zstd", None])
def test_compression_choices_roundtrip_bit_exact(tmp_path, compression) -> None:
    path = tmp_path / "run.zarr"
    model = _record(path, compression=compression)
    traj = open_trajectory(path)
    assert torch.equal(traj[len(traj) - 1]["0.weight"], model[0].weight.detach())
    g = zarr.open_group(path, mode="r")
    inner = g["params/0.weight"].metadata.codecs[0].codecs
    assert isinstance(inner[-1], Crc32cCodec)
    # "auto" means "none" on a local store (the fill-in-place fast path; compact later)
    assert len(inner) == (2 if compression in ("none", None, "auto") else 3)  # [+ codec] + crc
    raw = g["params/0.weight"][:]  # plain zarr decodes every choice
    assert np.array_equal(raw[-1], model[0].weight.detach().numpy())
    assert main(["info", "--verify", str(path)]) == 0
    # a resumed store keeps the codecs it was created with
    with TrajectoryRecorder(path, model, every=1, compression="zstd" if compression else "lz4",
                            snapshots_per_chunk=4) as rec:
        rec.capture(step=1000)
    assert zarr.open_group(path, mode="r")["params/0.weight"].metadata.codecs[0].codecs == inner
    assert open_trajectory(path).steps.tolist()[-1] == 1000


def test_unknown_compression_is_refused_before_anything_is_written(tmp_path) -> None:
    with pytest.raises(ConfigError, match="compression"):
        TrajectoryRecorder(tmp_path / "run.zarr", nn.Linear(2, 2), compression="gzip")
    assert not (tmp_path / "run.zarr").exists()
