"""writes="inline": the training thread writes each snapshot's bytes into its slot, the writer
thread commits. Same store as the background writer, byte for byte; truthful cost counters;
a failed write ends the recording like a writer failure; "auto" picks by threads and cores."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import ConfigError, WriterError
from hyperlapse.record import recorder as recorder_module
from hyperlapse.store import inplace


def _train(path: Path, writes: str, steps: int = 40, **kw) -> tuple[nn.Module, TrajectoryRecorder]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    with TrajectoryRecorder(path, model, every=3, snapshots_per_chunk=4, writes=writes,
                            **kw) as rec:
        rec.attach(opt)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.log(loss=loss.detach())
    return model, rec


def test_inline_store_equals_the_background_store_byte_for_byte(tmp_path) -> None:
    model, rec = _train(tmp_path / "inline.zarr", "inline")
    _, bg = _train(tmp_path / "bg.zarr", "background")
    assert (rec.writes, bg.writes) == ("inline", "background")
    a, b = open_trajectory(tmp_path / "inline.zarr"), open_trajectory(tmp_path / "bg.zarr")
    assert a.attrs["writes"] == "inline" and b.attrs["writes"] == "background"
    assert a.attrs["writer_io"] == b.attrs["writer_io"] == "buffered"
    assert len(a) == len(b) == 15 and a.steps.tolist() == b.steps.tolist()
    np.testing.assert_array_equal(a.metrics["loss"], b.metrics["loss"])
    for name, p in model.named_parameters():
        assert torch.equal(a[-1][name], p.detach())
    # the shard files themselves: the same bytes (data, CRC32C, trimmed index)
    shards = [f for f in (tmp_path / "bg.zarr" / "params").rglob("*")
              if f.is_file() and "c" in f.parts]
    assert len(shards) == 4 * 4  # 4 parameters, 15 snapshots in shards of 4
    for shard in shards:
        twin = tmp_path / "inline.zarr" / shard.relative_to(tmp_path / "bg.zarr")
        assert twin.read_bytes() == shard.read_bytes(), shard
    # plain Zarr reads it with exact shapes
    group = zarr.open_group(tmp_path / "inline.zarr", mode="r")
    assert group["params/2.weight"].shape == (15, 4, 9)
    np.testing.assert_array_equal(group["params/2.weight"][-1], model[2].weight.detach().numpy())
    assert main(["info", "--verify", str(tmp_path / "inline.zarr")]) == 0


def test_inline_resume_continues_the_store(tmp_path) -> None:
    path = tmp_path / "r.zarr"
    _train(path, "inline", steps=10)  # 5 snapshots: a partial shard of 4
    first = open_trajectory(path)
    n, w0 = len(first), first[2]["0.weight"].clone()
    model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))
    model.load_state_dict(first[-1])  # the continuation of the stored run
    with TrajectoryRecorder(path, model, writes="inline") as rec:
        for step in range(1, 8):
            with torch.no_grad():
                model[0].weight.fill_(step)
            rec.capture(step=100 + step)
    traj = open_trajectory(path)
    assert len(traj) == n + 7
    assert torch.equal(traj[2]["0.weight"], w0)  # the first session's snapshots are intact
    assert traj[-1]["0.weight"].eq(7).all() and traj.steps[-1] == 107
    assert main(["info", "--verify", str(path)]) == 0


def test_overhead_counts_the_inline_write_as_training_time(tmp_path, monkeypatch) -> None:
    write = inplace.ShardFile.write

    def slow_write(self, data):  # 2 ms per parameter written
        time.sleep(0.002)
        return write(self, data)

    monkeypatch.setattr(inplace.ShardFile, "write", slow_write)
    costs = {}
    for writes in ("inline", "background"):
        model = nn.Linear(5, 3)  # 2 parameters: >= 4 ms per snapshot where it is written
        rec = TrajectoryRecorder(tmp_path / f"{writes}.zarr", model, writes=writes)
        for step in range(10):
            rec.capture(step=step)
        costs[writes] = rec.overhead()
        rec.close()
        assert len(open_trajectory(tmp_path / f"{writes}.zarr")) == 10
    assert costs["inline"]["training_blocked_s"] >= 10 * 0.004
    assert costs["inline"]["capture_mean_s"] >= 0.004
    # in the background the writes are the writer thread's time, not the training thread's
    assert costs["background"]["capture_mean_s"] < costs["inline"]["capture_mean_s"]
    stored = open_trajectory(tmp_path / "inline.zarr").attrs["recording_cost"]
    assert stored["training_blocked_s"] >= 10 * 0.004 and stored["snapshots"] == 10


def test_a_failed_inline_write_raises_at_that_capture_and_keeps_committed(tmp_path,
                                                                           monkeypatch) -> None:
    path = tmp_path / "r.zarr"
    model = nn.Linear(5, 3)
    rec = TrajectoryRecorder(path, model, writes="inline", snapshots_per_chunk=4)
    for step in range(6):
        rec.capture(step=step)
    rec.flush()  # 6 committed

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inplace.ShardFile, "write", full_disk)
    with pytest.raises(WriterError, match="No space left") as info:
        rec.capture(step=6)
    # issue 16 item 12: said where it failed (on 146d920: "failed in the background")
    assert "on the training thread" in str(info.value)
    assert "background" not in str(info.value)
    with pytest.raises(WriterError):  # every later capture too: nothing recorded silently
        rec.capture(step=7)
    monkeypatch.undo()
    rec.close()  # already raised: close() does not raise it again
    traj = open_trajectory(path)
    assert len(traj) == 6 and traj.steps.tolist() == list(range(6))
    assert torch.equal(traj[-1]["weight"], model.weight.detach())


def test_auto_writes_inline_only_where_torch_uses_every_core(tmp_path, monkeypatch) -> None:
    resolve = recorder_module._resolve_writes
    threads = torch.get_num_threads()
    monkeypatch.setattr(recorder_module.os, "sched_getaffinity", lambda pid: set(range(threads)))
    assert resolve("auto", "buffered", False) == "inline"
    monkeypatch.setattr(recorder_module.os, "sched_getaffinity",
                        lambda pid: set(range(threads + 1)))
    assert resolve("auto", "buffered", False) == "background"  # a core to spare
    assert resolve("inline", "buffered", False) == "inline"
    # the writer thread writes where inline writes would wait: O_DIRECT, Zarr, CUDA copies
    for io, pinned in (("odirect", False), ("zarr", False), ("buffered", True)):
        assert resolve("inline", io, pinned) == "background"
    rec = TrajectoryRecorder(tmp_path / "lz4.zarr", nn.Linear(2, 2), compression="lz4",
                             writes="inline")
    assert rec.writes == "background"
    rec.close()
    assert open_trajectory(tmp_path / "lz4.zarr").attrs["writes"] == "background"
    with pytest.raises(ConfigError, match="writes"):
        TrajectoryRecorder(tmp_path / "bad.zarr", nn.Linear(2, 2), writes="sometimes")
