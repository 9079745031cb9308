"""The training thread's side of a capture: the LIFO buffer pool and grad mode."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.record.pipeline import _BufferPool


def test_pool_is_last_in_first_out_and_waits_for_a_put() -> None:
    pool = _BufferPool()
    for item in ("a", "b", "c"):
        pool.put(item)
    assert [pool.get_nowait(), pool.get(0.1), pool.get_nowait()] == ["c", "b", "a"]
    with pytest.raises(queue.Empty):
        pool.get_nowait()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        pool.get(0.05)
    assert time.monotonic() - t0 >= 0.05
    threading.Timer(0.05, pool.put, ("late",)).start()
    assert pool.get(5.0) == "late"


def test_a_sparse_schedule_reuses_one_warm_buffer_and_keeps_grad_mode(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model, every=1, queue_size=8)
    used: list[int] = []
    copy_into = rec._layout.copy_into

    def recording_copy(buf, tensors):
        used.append(id(buf))
        copy_into(buf, tensors)

    rec._layout.copy_into = recording_copy
    for step in range(1, 21):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        with torch.enable_grad() if step % 2 else torch.no_grad():
            grad = torch.is_grad_enabled()
            rec.capture(step=step)
            assert torch.is_grad_enabled() == grad  # restored either way
        deadline = time.monotonic() + 5
        while rec.writer.pending + rec.writer.committed < step and time.monotonic() < deadline:
            time.sleep(0.005)  # the writer has taken this snapshot (and returned its buffer)
        time.sleep(0.01)
    rec.close()
    # a FIFO pool would have cycled through all 8 buffers
    assert len(set(used)) <= 2, len(set(used))
    traj = open_trajectory(tmp_path / "r.zarr")
    assert len(traj) == 20 and not traj[-1]["0.weight"].requires_grad
    assert torch.equal(traj[-1]["0.weight"], model[0].weight.detach())
