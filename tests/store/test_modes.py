"""``StoreWriter(mode=)``: "append" continues, "create" refuses an existing store, "replace"
keeps the old store whole and readable until the new one's first commit, then swaps it in; a
crash at any point leaves one whole store, and the next writer tidies the leftovers. Counters
reach the writer as arguments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hyperlapse import open_trajectory
from hyperlapse.errors import (
    ConfigError,
    NotAStoreError,
    StoreExistsError,
    StoreLockedError,
)
from hyperlapse.store import writer as writer_mod
from hyperlapse.store.writer import StoreWriter, finish_interrupted_replace

PARAMS = [{"name": "w", "shape": [2, 3], "dtype": "float32"}]


def _snap(t: int, base: float = 0.0) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), base + t, dtype=np.float32)}


def _write(path: Path, n: int, base: float = 0.0, **kw) -> None:
    w = StoreWriter(path, PARAMS, snapshots_per_chunk=4, **kw)
    for t in range(n):
        w.append(_snap(t, base), t, 0.0)
    w.close()


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _values(path: Path) -> list[float]:
    traj = open_trajectory(path)
    return [float(traj[t]["w"][0, 0]) for t in range(len(traj))]


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_unknown_mode_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="'append', 'create', 'replace'"):
        StoreWriter(tmp_path / "x.zarr", PARAMS, mode="overwrite")
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("committed", [0, 5])
def test_create_refuses_an_existing_store_even_an_empty_one(tmp_path, committed) -> None:
    path = tmp_path / "run.zarr"
    w = StoreWriter(path, PARAMS, snapshots_per_chunk=4)
    for t in range(committed):
        w.append(_snap(t), t, 0.0)
    w.close()
    before = _files(path)
    with pytest.raises(StoreExistsError, match=rf"{committed} committed snapshot.*mode='append'"):
        StoreWriter(path, PARAMS, mode="create")
    assert _files(path) == before
    with pytest.raises(FileExistsError):  # the standard type too
        StoreWriter(path, PARAMS, mode="create")


def test_create_on_nothing_or_an_empty_folder(tmp_path) -> None:
    (tmp_path / "empty.zarr").mkdir()
    for name in ("new.zarr", "empty.zarr"):
        _write(tmp_path / name, 3, mode="create")
        assert _values(tmp_path / name) == [0.0, 1.0, 2.0]


def test_create_and_replace_refuse_what_is_not_a_store(tmp_path) -> None:
    path = tmp_path / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    for mode in ("create", "replace"):
        with pytest.raises(NotAStoreError):
            StoreWriter(path, PARAMS, mode=mode)
    assert (path / "notes.txt").read_text() == "keep me"
    assert _leftovers(path) == []


def test_append_continues(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _write(path, 3)
    w = StoreWriter(path, PARAMS, mode="append")
    assert w.committed == 3
    w.append(_snap(3), 3, 0.0)
    w.close()
    assert _values(path) == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("compression", ["none", "auto"])  # fill-in-place and zarr paths
@pytest.mark.parametrize("follows", [True, False])  # descriptor path, or re-pointed handles
@pytest.mark.parametrize("exchange", [True, False])  # renameat2, or rename aside + rename
def test_replace_keeps_the_old_store_until_the_first_commit(
    tmp_path, monkeypatch, compression, follows, exchange
) -> None:
    if not follows:
        monkeypatch.setattr(writer_mod, "_descriptor_path", lambda fd, path: None)
    if not exchange:
        monkeypatch.setattr(writer_mod, "_exchange", lambda a, b: False)
    path = tmp_path / "run.zarr"
    _write(path, 6, compression=compression)
    before = _files(path)
    w = StoreWriter(path, PARAMS, snapshots_per_chunk=4, mode="replace", compression=compression,
                    flush_every_s=None)
    assert w.committed == 0
    for t in range(3):
        w.append(_snap(t, 100.0), t, 0.0)
    # nothing committed yet: the old store is whole and readable, bit for bit
    assert _files(path) == before
    assert _values(path) == [float(t) for t in range(6)]
    with pytest.raises(StoreLockedError):  # and nobody else writes it meanwhile
        StoreWriter(path, PARAMS)
    w.flush()  # the first commit: the new store takes its place
    assert _values(path) == [100.0, 101.0, 102.0]
    assert _leftovers(path) == []
    for t in range(3, 9):  # the writer goes on writing at the store's path
        w.append(_snap(t, 100.0), t, 0.0)
    w.close()
    assert _values(path) == [100.0 + t for t in range(9)]
    assert open_trajectory(path).verify() == []
    assert _leftovers(path) == []
    assert open_trajectory(path).attrs["closed"] is True


def test_replace_released_before_its_first_commit_leaves_the_old_store(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _write(path, 5)
    before = _files(path)
    w = StoreWriter(path, PARAMS, mode="replace", flush_every_s=None)
    w.append(_snap(0, 50.0), 0, 0.0)
    w.release()  # e.g. the recording failed
    assert _files(path) == before and _leftovers(path) == []
    StoreWriter(path, PARAMS).close()  # the lock is free again


def test_replace_closed_with_no_snapshot_replaces(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _write(path, 5)
    StoreWriter(path, PARAMS, mode="replace").close()
    assert _values(path) == [] and _leftovers(path) == []


def test_replace_of_nothing_creates(tmp_path) -> None:
    _write(tmp_path / "run.zarr", 2, mode="replace")
    assert _values(tmp_path / "run.zarr") == [0.0, 1.0]


def test_replace_refuses_a_store_being_written(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    w = StoreWriter(path, PARAMS)
    with pytest.raises(StoreLockedError):
        StoreWriter(path, PARAMS, mode="replace")
    w.close()
    assert _leftovers(path) == []


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from hyperlapse.store.writer import StoreWriter
    w = StoreWriter(sys.argv[1], [{"name": "w", "shape": [2, 3], "dtype": "float32"}],
                    snapshots_per_chunk=4, mode="replace", flush_every_s=None,
                    compression=sys.argv[2])
    for t in range(3):
        w.append({"w": np.full((2, 3), 100.0 + t, dtype=np.float32)}, t, 0.0)
    print("ready", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("compression", ["none", "auto"])
def test_sigkill_before_the_first_commit_keeps_the_old_store(tmp_path, compression) -> None:
    path = tmp_path / "run.zarr"
    _write(path, 6, compression=compression)
    before = _files(path)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), compression],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert (tmp_path / "run.zarr.replacing").is_dir()  # the new store, being built
        finish_interrupted_replace(path)  # a live writer's folder is left alone
        assert (tmp_path / "run.zarr.replacing").is_dir()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert _files(path) == before  # bit-exact
    assert _values(path) == [float(t) for t in range(6)]
    w = StoreWriter(path, PARAMS)  # the next writer tidies the leftover and appends
    assert _leftovers(path) == []
    assert w.committed == 6
    w.close()


def _committed_replacement(tmp_path: Path) -> Path:
    new = tmp_path / "new.zarr"
    _write(new, 2, base=100.0)
    return new


def test_crash_between_the_renames_rolls_forward(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _write(path, 4)
    os.rename(path, tmp_path / "run.zarr.replaced")
    os.rename(_committed_replacement(tmp_path), tmp_path / "run.zarr.replacing")
    assert "moved the committed replacement" in finish_interrupted_replace(path)
    assert _values(path) == [100.0, 101.0] and _leftovers(path) == []


def test_crash_after_the_first_rename_alone_restores(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _write(path, 4)
    os.rename(path, tmp_path / "run.zarr.replaced")
    assert "restored" in finish_interrupted_replace(path)
    assert _values(path) == [0.0, 1.0, 2.0, 3.0] and _leftovers(path) == []


def test_crash_after_the_exchange_removes_the_old_store(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _write(path, 4)
    os.rename(path, tmp_path / "run.zarr.replacing")  # the old store, after the exchange
    os.rename(_committed_replacement(tmp_path), path)
    w = StoreWriter(path, PARAMS, mode="append")
    assert _leftovers(path) == [] and w.committed == 2
    w.close()


def test_counters_as_arguments(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    w = StoreWriter(path, PARAMS, snapshots_per_chunk=4)
    w.append(_snap(0), 0, 0.0, counters={"dropped": 2})
    w.flush(counters={"report_dropped": 1, "writes": "inline"})
    attrs = open_trajectory(path).attrs
    assert (attrs["dropped"], attrs["report_dropped"], attrs["writes"]) == (2, 1, "inline")
    w.append(_snap(1), 1, 0.0)
    w.close(counters={"recording_cost": {"blocked_s": 0.5}, "dropped": 3})
    attrs = open_trajectory(path).attrs
    assert attrs["recording_cost"] == {"blocked_s": 0.5} and attrs["dropped"] == 3
    w = StoreWriter(path, PARAMS)
    w.dropped = 7  # the attribute pokes keep working
    with pytest.raises(ConfigError, match="counters"):
        w.flush(counters={"droped": 1})
    w.close()
    assert open_trajectory(path).attrs["dropped"] == 7
