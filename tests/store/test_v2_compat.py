"""The reader opens version-2 stores (written by hyperlapse at 311ac8e, committed in tests/data)
bit-exactly, says their checksums are not bound to where they belong, and the writer refuses to
append to one instead of mixing formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import IncompatibleStoreError

DATA = Path(__file__).parent.parent / "data"
STORE = DATA / "v2_mlp.zarr"


def test_v2_store_reads_bit_exact() -> None:
    expected = np.load(DATA / "v2_mlp_expected.npz")
    traj = open_trajectory(STORE)
    assert traj.attrs["version"] == 2 and not traj.bound_checksums
    assert len(traj) == 7
    np.testing.assert_array_equal(traj.steps, expected["steps"])
    np.testing.assert_array_equal(traj.metrics["loss"], expected["loss"])
    for t in range(len(traj)):
        for name, value in traj[t].items():
            want = expected[f"param:{name}"][t]
            assert np.array_equal(value.numpy().view(np.uint32), want.view(np.uint32)), (t, name)
    assert traj.verify() == []


def test_info_says_v2_checksums_are_not_location_bound(capsys) -> None:
    assert main(["info", "--verify", str(STORE)]) == 0
    out = capsys.readouterr().out
    assert "not bound to their place" in out and "format version 2" in out


def test_writer_refuses_to_append_to_v2(tmp_path) -> None:
    path = tmp_path / "v2.zarr"
    shutil.copytree(STORE, path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(IncompatibleStoreError, match="version 2"):
        TrajectoryRecorder(path, model, every=1, snapshots_per_chunk=4)
    assert len(open_trajectory(path)) == 7
