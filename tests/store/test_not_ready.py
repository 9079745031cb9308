"""A store being created is "not ready yet", never "damaged"; a healthy store with no snapshot
committed (its writer killed before the first commit) is reported as such, exit status 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hyperlapse import open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import NotAStoreError, StoreNotReadyError

CREATOR = textwrap.dedent(
    """
    import sys
    import numpy as np
    from hyperlapse.store.writer import StoreWriter
    params = [{"name": f"p{i}", "shape": [3, 4], "dtype": "float32"} for i in range(6)]
    for i in range(int(sys.argv[2])):
        w = StoreWriter(f"{sys.argv[1]}/run{i}.zarr", params, snapshots_per_chunk=4)
        w.append({p["name"]: np.zeros((3, 4), np.float32) for p in params}, 0, 0.0)
        w.close()
    """
)


def test_reader_racing_a_creating_writer_never_sees_damage(tmp_path) -> None:
    trials = 50
    child = subprocess.Popen([sys.executable, "-c", CREATOR, str(tmp_path), str(trials)])
    outcomes: dict[str, int] = {}
    try:
        for i in range(trials):
            path = tmp_path / f"run{i}.zarr"
            deadline = time.monotonic() + 60
            while not os.path.lexists(path):  # as soon as the folder appears
                assert child.poll() in (None, 0) and time.monotonic() < deadline
            while True:
                try:
                    traj = open_trajectory(path)
                    len(traj) and traj[0]  # noqa: B018 - reads it
                    outcomes["opened"] = outcomes.get("opened", 0) + 1
                    if len(traj):
                        break
                except StoreNotReadyError as exc:
                    assert "not ready yet" in str(exc) and "hyperlapse watch" in str(exc)
                    outcomes["not ready"] = outcomes.get("not ready", 0) + 1
                except NotAStoreError as exc:  # pragma: no cover - must not happen
                    pytest.fail(f"trial {i}: {exc}")
                # any CorruptStoreError propagates: the test fails
    finally:
        assert child.wait(timeout=120) == 0
    assert sum(outcomes.values()) >= trials, outcomes


def test_an_empty_folder_is_not_ready_not_damaged(tmp_path) -> None:
    (tmp_path / "run.zarr" / "params").mkdir(parents=True)
    with pytest.raises(StoreNotReadyError, match="not ready yet"):
        open_trajectory(tmp_path / "run.zarr")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(NotAStoreError):
        open_trajectory(tmp_path / "other")


KILLED = textwrap.dedent(
    """
    import sys, time
    from hyperlapse.store.writer import StoreWriter
    w = StoreWriter(sys.argv[1], [{"name": "w", "shape": [3], "dtype": "float32"}])
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_info_verify_on_a_store_killed_before_its_first_commit(tmp_path, capsys) -> None:
    path = tmp_path / "run.zarr"
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert main(["info", str(path)]) == 0  # live: says the writer is running
        assert "no snapshot committed yet (its writer is running" in capsys.readouterr().out
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert main(["info", "--verify", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "no snapshot committed yet (its writer was killed before its first commit" in out
    assert "nothing damaged" in out and err == ""
    assert main(["info", "--json", "--verify", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["snapshots"] == 0 and info["damaged"] == []
