"""A corpus of damaged stores, generated here: every kind of damage is detected and reported as
a project error (what was expected, what was found, what to do) by ``open_trajectory`` (and the
reads after it), ``hyperlapse info --verify`` and ``hyperlapse analyze``; damaged data is never
returned as values."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import zarr
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import CorruptStoreError, HyperlapseError, NotAStoreError

N = 10  # snapshots; shards of 4: 0-3, 4-7, 8-9


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("damage") / "run.zarr"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with TrajectoryRecorder(path, model, every=1, snapshots_per_chunk=4) as rec:
        for step in range(N):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.1)
            rec.capture(step=step)
            rec.log(loss=float(step))
    return path


def _attr(key: str, value) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        meta = json.loads((path / "zarr.json").read_text())
        if value is _DELETE:
            del meta["attributes"][key]
        else:
            meta["attributes"][key] = value
        (path / "zarr.json").write_text(json.dumps(meta))

    return damage


_DELETE = object()
SHARD = Path("params/0.weight/c/1/0/0")  # snapshots 4..7


def _flip(path: Path) -> None:
    data = bytearray((path / SHARD).read_bytes())
    data[10] ^= 0x04
    (path / SHARD).write_bytes(bytes(data))


def _shorten(path: Path) -> None:
    arr = zarr.open_array(path / "step", mode="r+")
    arr.resize((3,))


def _symlink_loop(path: Path) -> None:
    shutil.rmtree(path)
    os.symlink(path, path)


def _array_as_group(path: Path) -> None:
    (path / "zarr.json").write_bytes((path / "step" / "zarr.json").read_bytes())


def _missing_inner_chunk(path: Path) -> None:
    # a shard whose index says snapshot 5 was never written
    from hyperlapse.store.shards import assemble_shard, split_shard

    chunks = split_shard((path / SHARD).read_bytes(), 4)
    chunks[1] = None
    index_fix = [c if c is not None else b"" for c in chunks]
    data = bytearray(assemble_shard(index_fix, 4).tobytes())
    import google_crc32c
    import numpy as np

    index = np.frombuffer(bytes(data[-68:-4]), dtype="<u8").reshape(4, 2).copy()
    index[1] = 2**64 - 1
    raw = index.tobytes()
    crc = np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes()
    (path / SHARD).write_bytes(bytes(data[:-68]) + raw + crc)


def _swap_shards(path: Path) -> None:
    # shard files 0 and 1 of a parameter exchanged: every chunk passes its own CRC32C; only
    # the checksums bound to (parameter, snapshot) (format version 3) tell
    first, second = path / "params/0.weight/c/0/0/0", path / SHARD
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)


def _tamper(array: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        meta = json.loads((path / array / "zarr.json").read_text())
        edit(meta)
        (path / array / "zarr.json").write_text(json.dumps(meta))

    return damage


def _set_data_type(meta: dict) -> None:
    meta["data_type"] = "int32"  # same item size: zarr would decode the bytes as int32


def _set_shard_shape(meta: dict) -> None:
    meta["chunk_grid"]["configuration"]["chunk_shape"][0] = 2


DAMAGE: dict[str, Callable[[Path], None]] = {
    "tampered data_type": _tamper("params/0.weight", _set_data_type),
    "tampered shard shape": _tamper("params/0.weight", _set_shard_shape),
    "tampered step data_type": _tamper("step", lambda m: m.update(data_type="float64")),
    "swapped shards": _swap_shards,
    "deleted shard": lambda p: (p / SHARD).unlink(),
    "flipped bit": _flip,
    "truncated shard": lambda p: (p / SHARD).write_bytes((p / SHARD).read_bytes()[:40]),
    "garbage shard": lambda p: (p / SHARD).write_bytes(os.urandom(300)),
    "missing inner chunk": _missing_inner_chunk,
    "deleted step chunk": lambda p: (p / "step/c/0").unlink(),
    "deleted metric chunk": lambda p: (p / "metrics/loss/c/0").unlink(),
    "committed '5'": _attr("committed", "5"),
    "committed 3.7": _attr("committed", 3.7),
    "committed true": _attr("committed", True),
    "committed past the arrays": _attr("committed", N + 5),
    "arrays shorter than committed": _shorten,
    "invalid zarr.json": lambda p: (p / "zarr.json").write_text("{not json"),
    "empty zarr.json": lambda p: (p / "zarr.json").write_text(""),
    "zarr.json holds a list": lambda p: (p / "zarr.json").write_text("[1, 2]"),
    "missing parameters attr": _attr("parameters", _DELETE),
    "array where the group should be": _array_as_group,
    "symlink loop": _symlink_loop,
}


@pytest.fixture(params=sorted(DAMAGE))
def damaged(request, pristine, tmp_path) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(pristine, path)
    DAMAGE[request.param](path)
    return path


def _read_everything(path: Path) -> None:
    traj = open_trajectory(path)
    traj.steps, traj.wall_time, traj.metrics  # noqa: B018 - reads them
    for t in range(len(traj)):
        traj[t]
    for name in traj.param_names:
        traj.weights(name)[:]


def test_open_trajectory_reports_damage(damaged: Path) -> None:
    with pytest.raises((CorruptStoreError, NotAStoreError)) as info:
        _read_everything(damaged)
    message = str(info.value)
    assert str(damaged) in message
    assert any(w in message for w in ("record", "Restore", "Check", "Pass", "Fix")), message


def test_info_verify_reports_damage(damaged: Path, capsys) -> None:
    assert main(["info", "--verify", str(damaged)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_pristine_store_verifies(pristine: Path, capsys) -> None:
    assert main(["info", "--verify", "--json", str(pristine)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] is True and info["damaged"] == []
    _read_everything(pristine)


def test_damaged_snapshot_is_named(pristine: Path, tmp_path) -> None:
    path = tmp_path / "run.zarr"
    shutil.copytree(pristine, path)
    _flip(path)
    traj = open_trajectory(path)
    assert torch.is_tensor(traj[3]["0.weight"])  # other shards read fine
    with pytest.raises(CorruptStoreError, match=r"parameter '0.weight' at snapshot 4"):
        traj[4]
    damaged = traj.verify()
    assert [(d["what"], d["snapshot"]) for d in damaged] == [("0.weight", 4)]


def test_plain_info_never_shows_a_traceback(damaged: Path, capsys) -> None:
    # without --verify, snapshot data is not read: damage there may pass unseen (exit 0, and
    # the text says "not verified"), anything else is a project error (exit 1)
    code = main(["info", str(damaged)])
    out, err = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in err
    assert ("not verified" in out) if code == 0 else ("error:" in err)


@pytest.mark.slow
def test_analyze_reports_damage(damaged: Path, tmp_path, capsys) -> None:
    path = damaged
    code = main(["analyze", str(path), "--out", str(tmp_path / "out"), "--no-plots",
                 "--no-embeddings", "--quiet", "--refine-steps", "1", "--geometry-every", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "error:" in err and str(path) in err


def test_errors_are_project_errors() -> None:
    assert issubclass(CorruptStoreError, HyperlapseError)
    assert issubclass(CorruptStoreError, ValueError)


def test_swapped_shards_are_named_never_returned(pristine: Path, tmp_path) -> None:
    path = tmp_path / "run.zarr"
    shutil.copytree(pristine, path)
    _swap_shards(path)
    traj = open_trajectory(path)
    assert torch.is_tensor(traj[9]["0.weight"])  # the third shard is in its place
    for t in range(8):
        with pytest.raises(CorruptStoreError, match=rf"'0.weight' at snapshot {t}.*swapped"):
            traj[t]
        with pytest.raises(CorruptStoreError):
            traj.weights("0.weight")[t]
    assert [(d["what"], d["snapshot"]) for d in traj.verify()] == [
        ("0.weight", t) for t in range(8)
    ]


def test_tampered_data_type_names_array_field_expected_and_found(pristine, tmp_path) -> None:
    path = tmp_path / "run.zarr"
    shutil.copytree(pristine, path)
    DAMAGE["tampered data_type"](path)
    with pytest.raises(CorruptStoreError) as info:
        open_trajectory(path)
    message = str(info.value)
    for part in ("'params/0.weight'", "data_type", "'int32'", "'float32'"):
        assert part in message, message
