"""The reader opens version-1 stores (written by hyperlapse 0.1, committed in tests/data)
bit-exactly, and the writer refuses to append to one instead of mixing formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.errors import IncompatibleStoreError

DATA = Path(__file__).parent.parent / "data"
STORE = DATA / "v1_mlp.zarr"


def test_v1_store_reads_bit_exact() -> None:
    expected = np.load(DATA / "v1_mlp_expected.npz")
    traj = open_trajectory(STORE)
    assert traj.attrs["version"] == 1
    assert len(traj) == 7
    np.testing.assert_array_equal(traj.steps, expected["steps"])
    np.testing.assert_array_equal(traj.metrics["loss"], expected["loss"])  # NaN where not logged
    for t in range(len(traj)):
        state = traj[t]
        for name, value in state.items():
            want = expected[f"param:{name}"][t]
            assert value.dtype == torch.float32 and tuple(value.shape) == want.shape
            assert np.array_equal(value.numpy().view(np.uint32), want.view(np.uint32)), (t, name)
    w = np.asarray(traj.weights("0.weight"))
    assert np.array_equal(w.view(np.uint32), expected["param:0.weight"].view(np.uint32))
    assert traj.verify() == []  # shard indexes checked (version 1 has no chunk checksums)


def test_writer_refuses_to_append_to_v1(tmp_path) -> None:
    path = tmp_path / "v1.zarr"
    shutil.copytree(STORE, path)
    before = sorted((p.relative_to(path), p.read_bytes()) for p in path.rglob("*") if p.is_file())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(IncompatibleStoreError, match="version 1"):
        TrajectoryRecorder(path, model, every=1, snapshots_per_chunk=4)
    after = sorted((p.relative_to(path), p.read_bytes()) for p in path.rglob("*") if p.is_file())
    assert after == before  # untouched
    assert len(open_trajectory(path)) == 7
