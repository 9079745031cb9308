"""SIGKILL at random moments while a second process reads: the store always opens, every
committed snapshot is bit-exact, committed snapshots are never lost, and a killed run resumes."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hyperlapse import TrajectoryRecorder, open_trajectory

sys.path.insert(0, str(Path(__file__).parent))
from _crash_child import make_model, weights_for_step  # noqa: E402

pytestmark = pytest.mark.slow
CHILD = Path(__file__).parent / "_crash_child.py"


def _check(traj, start: int, model) -> None:
    """Snapshots [start, len) are bit-exact and the steps strictly increase."""
    steps = traj.steps.tolist()
    assert steps == sorted(set(steps)), "steps must strictly increase"
    for t in range(start, len(traj)):
        got = traj[t]
        for name, want in weights_for_step(model, steps[t]).items():
            assert torch.equal(got[name], want), (t, steps[t], name)
        # log() right after capture() goes with that snapshot unless a flush sealed it first,
        # then with the next one (docs/recording.md): NaN or the previous value, never another
        loss = traj.metrics.get("loss", [math.nan] * len(traj))[t]
        assert math.isnan(loss) or loss in (steps[t] * 0.5, steps[t - 1] * 0.5), (t, loss)


def _start(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    line = proc.stdout.readline()  # the child recorded its first steps
    assert line.startswith("step"), f"child failed to start: {line!r}"
    return proc


def test_sigkill_at_random_moments_with_a_concurrent_reader(tmp_path) -> None:
    rng = random.Random(0)
    path = tmp_path / "run.zarr"
    model = make_model()
    committed_before = 0
    for _ in range(4):
        proc = _start(path)
        try:
            traj = open_trajectory(path)
            assert len(traj) >= committed_before  # resuming never drops committed snapshots
            checked, sizes = committed_before, []  # older snapshots were checked already
            deadline = time.monotonic() + rng.uniform(0.3, 1.2)
            patience = time.monotonic() + 60  # a busy machine may run the child slowly
            while (  # follow the live run until it grew (or the patience ran out)
                time.monotonic() < deadline
                or len(sizes) < 3
                or (sizes[-1] == sizes[0] and time.monotonic() < patience)
            ):
                traj.refresh()
                sizes.append(len(traj))
                _check(traj, checked, model)
                checked = len(traj)
                time.sleep(0.03)
            assert sizes == sorted(sizes) and sizes[-1] > sizes[0], sizes  # it grows
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        traj = open_trajectory(path)  # always opens after SIGKILL
        assert traj.attrs["closed"] is False
        assert len(traj) >= checked  # what a reader saw committed is never lost
        _check(traj, 0, model)
        committed_before = len(traj)
    model.load_state_dict(open_trajectory(path)[-1])  # the run's continuation (mode="auto")
    with TrajectoryRecorder(path, model, snapshots_per_chunk=8) as rec:  # a clean resume
        last = rec.current_step
        with torch.no_grad():
            for name, value in weights_for_step(model, last + 1).items():
                model.get_parameter(name).copy_(value)
        rec.capture(step=last + 1)
        rec.log(loss=(last + 1) * 0.5)
    traj = open_trajectory(path)
    assert traj.attrs["closed"] is True and len(traj) == committed_before + 1
    assert traj.steps[-1] == last + 1
    _check(traj, 0, model)
