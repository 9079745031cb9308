"""The trajectory store: exact roundtrips over local and memory stores, plain-Zarr readability,
the commit protocol (committed bytes never change, readers slice to ``committed``), cut-back."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectories, open_trajectory
from hyperlapse.errors import EmptyStoreError, StoreError
from hyperlapse.store import format as fmt
from hyperlapse.store.shards import assemble_shard, split_shard
from hyperlapse.store.writer import StoreWriter


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _location(kind: str, tmp_path) -> str:
    if kind == "memory":
        return f"memory://hyperlapse-test-{uuid.uuid4().hex}"
    return str(tmp_path / "nested" / "run.zarr")  # parent does not exist yet


def _set_weights(model: nn.Module, step: int) -> None:
    """Deterministic, awkward weights: random normals plus -0.0, subnormals and big values."""
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 10.0 ** (step % 5 - 2))
        model[2].bias.copy_(torch.tensor([-0.0, 1e-40, 6.0e4]))


def _record(location: str, steps: int, **kwargs) -> tuple[nn.Module, list[dict]]:
    model = _mlp()
    expected = []
    with TrajectoryRecorder(location, model, every=1, **kwargs) as rec:
        for step in range(steps):
            _set_weights(model, step)
            rec.capture(step=step)
            expected.append({k: v.clone() for k, v in model.state_dict().items()})
    return model, expected


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("kind", ["local", "memory"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_exact_roundtrip(kind: str, dtype: str, tmp_path) -> None:
    location = _location(kind, tmp_path)
    _, expected = _record(location, 11, dtype=dtype, snapshots_per_chunk=4)
    traj = open_trajectory(location)
    assert len(traj) == 11
    assert traj.steps.dtype == np.int64 and traj.steps.tolist() == list(range(11))
    assert traj.param_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert traj.architecture["widths"] == [6, 16, 3]
    assert traj.attrs["closed"] is True and traj.attrs["committed"] == 11
    for t in (0, 5, 10, -1):
        got = traj[t]
        for name, want in expected[t].items():
            want = want.to(getattr(torch, dtype))
            assert got[name].dtype == want.dtype and got[name].shape == want.shape
            assert torch.equal(_bits(got[name]), _bits(want)), (t, name)  # bit-exact, -0.0 too


def test_weights_view_and_model_at(tmp_path) -> None:
    location = _location("local", tmp_path)
    model, expected = _record(location, 9, snapshots_per_chunk=4)
    traj = open_trajectory(location)
    view = traj.weights("0.weight")
    assert view.shape == (9, 16, 6) and len(view) == 9 and view.shards == (4, 16, 6)
    stacked = torch.stack([e["0.weight"] for e in expected]).numpy()
    np.testing.assert_array_equal(np.asarray(view), stacked)
    np.testing.assert_array_equal(view[2:7:2, 3], stacked[2:7:2, 3])
    np.testing.assert_array_equal(view[-1], stacked[-1])
    with pytest.raises(IndexError):
        view[9]
    rebuilt = traj.model_at(3, _mlp(seed=5))
    for name, value in rebuilt.state_dict().items():
        assert torch.equal(value, expected[3][name])
    with pytest.raises(IndexError):
        traj[9]
    with pytest.raises(KeyError, match="Recorded"):
        traj.weights("nope")


def test_plain_zarr_reads_the_store(tmp_path) -> None:
    location = _location("local", tmp_path)
    _, expected = _record(location, 6, snapshots_per_chunk=4)
    group = zarr.open_group(location, mode="r")
    n = group.attrs["committed"]
    assert group.attrs["format"] == fmt.FORMAT and n == 6
    np.testing.assert_array_equal(group["step"][:n], np.arange(6))
    w = group["params/2.weight"][:n]
    np.testing.assert_array_equal(w, torch.stack([e["2.weight"] for e in expected]).numpy())


def test_open_trajectories_glob_and_list(tmp_path) -> None:
    paths = [str(tmp_path / f"run{i}.zarr") for i in range(3)]
    for i, p in enumerate(paths):
        _record(p, 2 + i)
    trajs = open_trajectories(str(tmp_path / "run*.zarr"))
    assert [len(t) for t in trajs] == [2, 3, 4]
    assert [len(t) for t in open_trajectories(paths[::-1])] == [4, 3, 2]


def _inner_chunk_bytes(shard_file, chunks_per_shard: int) -> list[bytes]:
    """Bytes of each inner chunk of a shard (zarr sharding index at the end: offset, nbytes as
    little-endian uint64 per inner chunk, then a crc32c)."""
    data = shard_file.read_bytes()
    index = np.frombuffer(data[-(16 * chunks_per_shard + 4) : -4], dtype="<u8").reshape(-1, 2)
    return [b"" if off == 2**64 - 1 else data[int(off) : int(off + nb)] for off, nb in index]


def test_committed_inner_chunks_keep_their_bytes_across_partial_flushes(tmp_path) -> None:
    location = tmp_path / "run.zarr"
    params = [{"name": "w", "shape": [32, 8], "dtype": "float32"}]
    writer = StoreWriter(location, params, snapshots_per_chunk=8, flush_every_s=None)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((8, 32, 8)).astype(np.float32)
    shard = location / "params" / "w" / "c" / "0" / "0" / "0"
    seen: list[bytes] = []
    for i in range(8):
        writer.append({"w": rows[i]}, step=i, wall_time=0.0)
        writer.flush()  # a time flush after every snapshot: the worst case
        chunks = _inner_chunk_bytes(shard, 8)
        assert chunks[: len(seen)] == seen  # committed inner chunks: byte for byte the same
        assert all(c == b"" for c in chunks[i + 1 :])
        seen = chunks[: i + 1]
        assert zarr.open_group(location, mode="r").attrs["committed"] == i + 1
    writer.close()
    np.testing.assert_array_equal(open_trajectory(location).weights("w")[:], rows)


def test_reader_slices_to_committed_and_refresh_follows(tmp_path) -> None:
    location = tmp_path / "run.zarr"
    params = [{"name": "w", "shape": [3], "dtype": "float32"}]
    writer = StoreWriter(location, params, snapshots_per_chunk=4, flush_every_s=None)
    writer.append({"w": np.ones(3, np.float32)}, step=0, wall_time=1.0, metrics={"loss": 2.0})
    writer.flush()
    traj = open_trajectory(location)
    assert len(traj) == 1
    # a writer that died between "grow the arrays" and "commit": shapes run ahead
    for name in ("params/w", "step", "wall_time"):
        arr = zarr.open_array(location / name, mode="r+")
        arr.resize((5, *arr.shape[1:]))
    assert open_trajectory(location).steps.tolist() == [0]
    writer.append({"w": np.full(3, 2, np.float32)}, step=7, wall_time=2.0)
    writer.flush()
    assert traj.refresh() == 1 and traj.steps.tolist() == [0, 7]
    np.testing.assert_array_equal(traj.metrics["loss"], [2.0, np.nan])
    assert traj[1]["w"].tolist() == [2.0, 2.0, 2.0]


def test_resume_ignores_data_past_committed(tmp_path) -> None:
    location = str(tmp_path / "run.zarr")
    model = _mlp()
    with TrajectoryRecorder(location, model, snapshots_per_chunk=4) as rec:
        for step in range(6):
            _set_weights(model, step)
            rec.capture(step=step)
    # garbage past `committed`, as a crash between writing data and committing leaves it
    for name in ("params/0.weight", "step"):
        arr = zarr.open_array(f"{location}/{name}", mode="r+")
        arr.resize((9, *arr.shape[1:]))
        arr[6:9] = 99
    group = zarr.open_group(location, mode="r+")
    group.attrs.update({"closed": False})
    with TrajectoryRecorder(location, model, snapshots_per_chunk=4) as rec:
        assert rec.current_step == 5  # continues after the last stored step
        assert open_trajectory(location).steps.tolist() == list(range(6))  # not the 99s
        for step in range(6, 8):
            _set_weights(model, step)
            rec.capture(step=step)
    traj = open_trajectory(location)
    assert traj.steps.tolist() == list(range(8))
    # a closed store is trimmed to `committed`: exact shapes for plain zarr and xarray
    assert zarr.open_array(f"{location}/step", mode="r").shape == (8,)
    assert zarr.open_array(f"{location}/params/0.weight", mode="r").shape[0] == 8
    for t in range(8):
        _set_weights(model, t)
        assert torch.equal(traj[t]["0.weight"], model[0].weight)


def test_empty_store_reader(tmp_path) -> None:
    location = tmp_path / "run.zarr"
    StoreWriter(location, [{"name": "w", "shape": [2], "dtype": "float32"}])
    traj = open_trajectory(location)
    assert len(traj) == 0 and traj.steps.shape == (0,)
    with pytest.raises(EmptyStoreError, match="no committed snapshot"):
        traj[0]


def test_resume_refuses_a_damaged_partial_shard(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _record(str(path), 6, snapshots_per_chunk=4)  # shard 1 holds snapshots 4 and 5
    shard = path / "params" / "0.weight" / "c" / "1" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-7])  # a torn shard (cannot happen with LocalStore)
    with pytest.raises(StoreError, match="damaged"):
        TrajectoryRecorder(path, _mlp(), snapshots_per_chunk=4)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_shard_assembly_roundtrip(n: int) -> None:
    chunks = [bytes([i]) * (i + 3) for i in range(n)]
    data = assemble_shard(chunks, 5)
    assert split_shard(data, 5) == chunks + [None] * (5 - n)
    with pytest.raises(ValueError, match="checksum"):
        split_shard(data[:-1].tobytes() + bytes([int(data[-1]) ^ 1]), 5)
