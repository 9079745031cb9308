"""The fill-in-place fast path (local stores, compression "none"): O_DIRECT and buffered
writes, the layout plain Zarr reads, trimming at close, resume in place, and per-snapshot and
close costs that do not grow with the run's length (counted writes, not timings)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr

from hyperlapse import open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import CorruptStoreError
from hyperlapse.store import inplace
from hyperlapse.store.shards import MISSING, parse_index
from hyperlapse.store.writer import StoreWriter

K = 8
PARAMS = [
    {"name": "big", "shape": [130, 140], "dtype": "float32"},  # 72,800 B: O_DIRECT
    {"name": "bias", "shape": [7], "dtype": "float32"},  # buffered even with O_DIRECT
    {"name": "half", "shape": [33], "dtype": "float16"},
    {"name": "bf", "shape": [5, 3], "dtype": "bfloat16"},
    {"name": "flag", "shape": [9], "dtype": "bool"},
    {"name": "empty", "shape": [0, 4], "dtype": "float32"},
]


def _snapshot(t: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(t)
    return {
        "big": rng.standard_normal((130, 140)).astype(np.float32),
        "bias": rng.standard_normal(7).astype(np.float32),
        "half": rng.standard_normal(33).astype(np.float16),
        "bf": rng.integers(0, 2**15, (5, 3)).astype(np.uint16),
        "flag": rng.random(9) < 0.5,
        "empty": np.zeros((0, 4), np.float32),
    }


@pytest.fixture(params=["odirect", "buffered"])
def io(request, monkeypatch, tmp_path) -> str:
    if request.param == "odirect" and not inplace.direct_io_supported(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    monkeypatch.setenv("HYPERLAPSE_WRITER_IO", request.param)
    return request.param


def _writer(path: Path, **kw) -> StoreWriter:
    kw.setdefault("flush_every_s", None)
    return StoreWriter(path, PARAMS, snapshots_per_chunk=K, compression="none", **kw)


def _append(w: StoreWriter, ts: range) -> None:
    for t in ts:
        w.append(_snapshot(t), t, 1000.0 + t, {"loss": float(t)})


def _assert_store(path: Path, n: int) -> None:
    traj = open_trajectory(path)
    assert len(traj) == n and traj.steps.tolist() == list(range(n))
    g = zarr.open_group(path, mode="r")
    for p in PARAMS:
        want = np.stack([_snapshot(t)[p["name"]] for t in range(n)])
        got = g[f"params/{p['name']}"][:]  # plain zarr, whole (closed) arrays
        assert got.shape == want.shape and got.tobytes() == want.tobytes(), p["name"]
    assert np.array_equal(traj.metrics["loss"], np.arange(n, dtype=float))
    assert main(["info", "--verify", str(path)]) == 0


def _shard(path: Path, name: str, shard: int) -> Path:
    ndim = 1 + len(next(p for p in PARAMS if p["name"] == name)["shape"])
    return path.joinpath("params", name, "c", str(shard), *["0"] * (ndim - 1))


def _index(path: Path, name: str, shard: int) -> tuple[np.ndarray, int]:
    data = _shard(path, name, shard).read_bytes()
    return parse_index(data, K), len(data)


def test_roundtrip_bit_exact_and_last_shard_lists_only_written_chunks(tmp_path, io) -> None:
    path = tmp_path / "run.zarr"
    w = _writer(path)
    assert w.io_path == io
    _append(w, range(5))
    w.flush()  # a time flush inside a shard
    _append(w, range(5, 21))
    w.close()
    _assert_store(path, 21)
    assert zarr.open_group(path, mode="r").attrs["writer_io"] == io
    cs = 130 * 140 * 4 + 4
    index, size = _index(path, "big", 2)  # 5 of 8 chunks
    assert size == 5 * cs + 16 * K + 4
    assert index[:5, 0].tolist() == [i * cs for i in range(5)]
    assert (index[5:] == MISSING).all()
    index, size = _index(path, "big", 1)  # a full shard keeps its preallocated layout
    assert size == inplace.shard_size(K, cs) and (index[:, 1] == cs).all()
    # the tiny bias is a few chunks short of full: its index would overlap the old one
    bias_index, _ = _index(path, "bias", 2)
    assert (bias_index[5:] == MISSING).all() and (bias_index[:5] != MISSING).all()


def test_live_store_is_preallocated_and_reads_sliced_to_committed(tmp_path, io) -> None:
    path = tmp_path / "run.zarr"
    w = _writer(path)
    _append(w, range(11))
    w.flush()
    cs = 130 * 140 * 4 + 4
    index, size = _index(path, "big", 1)  # shard started: final size, all chunks listed
    assert size == inplace.shard_size(K, cs) and (index[:, 0] == np.arange(K) * cs).all()
    g = zarr.open_group(path, mode="r")
    n = g.attrs["committed"]
    assert n == 11 and g["params/big"].shape[0] >= n
    want = np.stack([_snapshot(t)["big"] for t in range(n)])
    assert np.array_equal(g["params/big"][:n], want)
    assert len(open_trajectory(path)) == 11
    w.close()
    _assert_store(path, 11)


def test_resume_mid_shard_continues_in_place(tmp_path, io) -> None:
    path = tmp_path / "run.zarr"
    w = _writer(path)
    _append(w, range(11))
    w.flush()
    w.release()  # as if killed after the commit: no close, no trim
    shard = _shard(path, "big", 1)
    inode = shard.stat().st_ino
    w = _writer(path)
    assert w.committed == 11
    assert shard.stat().st_ino == inode  # continued in the same file, not rewritten
    _append(w, range(11, 19))
    w.close()
    _assert_store(path, 19)


def test_resume_of_a_closed_or_zarr_written_store_mid_shard(tmp_path, io, monkeypatch) -> None:
    path = tmp_path / "run.zarr"
    monkeypatch.setenv("HYPERLAPSE_WRITER_IO", "zarr")
    w = _writer(path)
    _append(w, range(6))
    w.close()  # compact shards written through zarr
    monkeypatch.setenv("HYPERLAPSE_WRITER_IO", io)
    w = _writer(path)
    assert w.io_path == io
    _append(w, range(6, 13))
    w.close()  # trimmed last shard
    w = _writer(path)
    _append(w, range(13, 20))
    w.close()
    _assert_store(path, 20)


def test_damaged_committed_chunk_refuses_resume(tmp_path, io) -> None:
    path = tmp_path / "run.zarr"
    w = _writer(path)
    _append(w, range(11))
    w.flush()
    w.release()
    shard = _shard(path, "big", 1)
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # inside committed chunk 8
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="shard 1 of 'big'"):
        _writer(path)


def test_default_path_is_buffered_and_a_refused_odirect_falls_back(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HYPERLAPSE_WRITER_IO", raising=False)
    w = _writer(tmp_path / "default.zarr")
    assert w.io_path == "buffered"  # the measured default (sinks.open_sink)
    w.close()
    monkeypatch.setenv("HYPERLAPSE_WRITER_IO", "odirect")
    monkeypatch.setattr("hyperlapse.store.sinks.direct_io_supported", lambda folder: False)
    path = tmp_path / "run.zarr"
    w = _writer(path)
    assert w.io_path == "buffered"
    _append(w, range(3))
    w.close()
    _assert_store(path, 3)
    monkeypatch.setenv("HYPERLAPSE_WRITER_IO", "auto")
    w = StoreWriter(tmp_path / "lz4.zarr", PARAMS, compression="lz4")
    assert w.io_path == "zarr"  # compressed chunks: no fixed layout
    w.close()


class _Counter:
    """Counts the writes reaching files: pwrite(v) calls and bytes, and Zarr store sets by
    kind of key."""

    def __init__(self, monkeypatch) -> None:
        self.calls: Counter[str] = Counter()
        pwrite, pwritev = os.pwrite, os.pwritev
        store_set = zarr.storage.LocalStore.set

        def counting_pwrite(fd, data, offset):
            self.calls["pwrite"] += 1
            self.calls["pwrite_bytes"] += len(memoryview(data).cast("B"))
            return pwrite(fd, data, offset)

        def counting_pwritev(fd, buffers, offset):
            self.calls["pwrite"] += 1
            self.calls["pwrite_bytes"] += sum(len(memoryview(b).cast("B")) for b in buffers)
            return pwritev(fd, buffers, offset)

        async def counting_set(store, key, value, *args, **kwargs):
            kind = "meta" if key.endswith("zarr.json") else "chunk"
            self.calls[f"{kind}:{key.split('/')[0]}" if kind == "meta" else "chunk"] += 1
            self.calls[f"{kind}_bytes"] += len(value) if kind == "chunk" else 0
            return await store_set(store, key, value, *args, **kwargs)

        monkeypatch.setattr(os, "pwrite", counting_pwrite)
        monkeypatch.setattr(os, "pwritev", counting_pwritev)
        monkeypatch.setattr(zarr.storage.LocalStore, "set", counting_set)

    def take(self) -> Counter[str]:
        out, self.calls = self.calls, Counter()
        return out


def _steady(c: Counter[str]) -> dict[str, int]:
    """The counts that must not depend on the run's length (array metadata grows O(log T))."""
    return {k: v for k, v in c.items() if not k.startswith("meta:") or k == "meta:zarr.json"}


@pytest.mark.slow
def test_writes_per_snapshot_and_at_close_do_not_grow_with_the_run(tmp_path, monkeypatch):
    monkeypatch.delenv("HYPERLAPSE_WRITER_IO", raising=False)
    small = [{"name": "w", "shape": [40, 30], "dtype": "float32"},
             {"name": "b", "shape": [40], "dtype": "float32"}]
    state = {"w": np.ones((40, 30), np.float32), "b": np.ones(40, np.float32)}
    windows = {96, 97, 98, 99, 100, 1016, 1017, 1018, 1019, 1020}

    def run(path: Path, n: int, counter: _Counter) -> tuple[dict[int, dict], Counter, int]:
        w = StoreWriter(path, small, snapshots_per_chunk=4, compression="none",
                        flush_every_s=None, fsync=False)
        assert w.io_path != "zarr"
        per, meta = {}, 0
        counter.take()
        for t in range(n):
            w.append(state, t, float(t), {"loss": 1.0})
            if t in windows:
                w.flush()  # a commit per snapshot here: the worst case for metadata
            c = counter.take()
            meta += sum(v for k, v in c.items() if k.startswith("meta:") and k != "meta:zarr.json")
            per[t] = _steady(c)
        w.close()
        return per, counter.take(), meta

    counter = _Counter(monkeypatch)
    short_per, short_close, _ = run(tmp_path / "short.zarr", 102, counter)
    long_per, long_close, long_meta = run(tmp_path / "long.zarr", 1022, counter)
    # the same position in a shard and in a scalar chunk costs the same writes at any length
    for a in (97, 98, 99, 100):
        assert short_per[a] == long_per[a + 920], (a, short_per[a], long_per[a + 920])
        assert short_per[a]["pwrite"] >= 2  # the snapshot reached the shard files
    assert _steady(short_close) == _steady(long_close)  # close: O(1)
    # array metadata: rewritten only when the arrays grow (doubling): O(log T) per array
    arrays = 6  # w, b, step, wall_time, checksums, the loss metric
    assert long_meta <= arrays * (int(np.log2(1022 / 4)) + 2)


@pytest.mark.slow
@pytest.mark.parametrize("io, writes", [("odirect", "background"), ("buffered", "inline")])
def test_sigkill_of_an_inplace_writer_keeps_every_committed_snapshot(tmp_path, io, writes):
    """O_DIRECT from the writer thread, and buffered writes from the training thread (killed
    in the middle of a snapshot's write as likely as anywhere else)."""
    if io == "odirect" and not inplace.direct_io_supported(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    path = tmp_path / "run.zarr"
    child = Path(__file__).parent / "_inplace_child.py"
    committed = 0
    for kill in range(4):
        env = {**os.environ, "HYPERLAPSE_WRITER_IO": io}
        proc = subprocess.Popen([sys.executable, str(child), str(path), writes],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3 + 0.2 * kill)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        traj = open_trajectory(path)
        if len(traj):  # stored with the first commit
            assert traj.attrs["writer_io"] == io and traj.attrs["writes"] == writes
        assert len(traj) >= committed  # a committed snapshot is never lost
        committed = len(traj)
        for t in range(committed):
            step = int(traj.steps[t])
            assert traj.steps[t] == t
            rng = np.random.default_rng(step)
            want = rng.standard_normal((160, 128)).astype(np.float32)
            assert np.array_equal(traj[t]["weight"].numpy(), want), (kill, t)
    assert committed > 0
    assert main(["info", "--verify", str(path)]) == 0
