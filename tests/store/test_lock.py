"""One writer per store: a second writer (another process, or the same one) is refused with an
error naming the first; a SIGKILLed writer's lock never blocks the resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from hyperlapse import open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import StoreLockedError
from hyperlapse.store.lock import LEASE_S, break_lock
from hyperlapse.store.writer import StoreWriter

PARAMS = [{"name": "w", "shape": [3], "dtype": "float32"}]

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from hyperlapse.store.writer import StoreWriter
    w = StoreWriter(sys.argv[1], [{"name": "w", "shape": [3], "dtype": "float32"}],
                    snapshots_per_chunk=4)
    for t in range(5):
        w.append({"w": np.full(3, t, dtype=np.float32)}, t, 0.0)
    w.flush()
    print("writing", flush=True)
    time.sleep(120)
    """
)


def test_second_process_is_refused_and_kill_frees_the_lock(tmp_path, capsys) -> None:
    path = tmp_path / "run.zarr"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        with pytest.raises(StoreLockedError, match=rf"pid {child.pid} on host"):
            StoreWriter(path, PARAMS, snapshots_per_chunk=4)
        assert len(open_trajectory(path)) == 5  # readers are never blocked
        assert main(["info", str(path)]) == 0
        assert f"pid {child.pid}" in capsys.readouterr().out.split("writer", 1)[1]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert main(["info", str(path)]) == 0
    assert "not running: crashed or killed" in capsys.readouterr().out
    writer = StoreWriter(path, PARAMS, snapshots_per_chunk=4)  # the kernel released the flock
    assert writer.committed == 5
    writer.append({"w": np.full(3, 5, dtype=np.float32)}, 5, 0.0)
    writer.close()
    traj = open_trajectory(path)
    assert traj.steps.tolist() == list(range(6)) and traj.attrs["writer"] is None


def test_same_process_second_writer_refused_until_close(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    first = StoreWriter(path, PARAMS)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        StoreWriter(path, PARAMS)
    first.close()
    StoreWriter(path, PARAMS).close()


def test_url_store_lease(monkeypatch) -> None:
    url = f"memory://lock-{uuid.uuid4().hex}"
    first = StoreWriter(url, PARAMS)
    with pytest.raises(StoreLockedError, match="lease"):
        StoreWriter(url, PARAMS)
    first.close()  # clears the lease
    second = StoreWriter(url, PARAMS)
    # a lease whose writer stopped committing expires; break_lock clears it at once
    from hyperlapse.store import lock as lock_mod

    now = lock_mod.time.time()
    monkeypatch.setattr(lock_mod.time, "time", lambda: now + LEASE_S + 1)
    monkeypatch.setattr(lock_mod.socket, "gethostname", lambda: "another-host")
    third = StoreWriter(url, PARAMS)  # on another host: took the expired lease over
    monkeypatch.undo()
    second.append({"w": np.zeros(3, dtype=np.float32)}, 0, 0.0)
    with pytest.raises(StoreLockedError, match="took it over"):
        second.flush()
    second.release()
    break_lock(url)
    third.release()
    StoreWriter(url, PARAMS).close()
