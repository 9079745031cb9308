"""Seeded randomised SIGKILLs over schedules, recording dtypes, flush settings, shard sizes and
buffer pools (>= 50 kills): every committed snapshot equals a deterministic replay, committed
snapshots are never lost, steps strictly increase and follow the schedule, and every killed
run resumes. Children are forked from a forkserver that imported torch and hyperlapse once, so
a kill costs tens of milliseconds instead of a fresh interpreter."""

from __future__ import annotations

import math
import multiprocessing
import random
import sys
import time
from pathlib import Path

import pytest
import torch

from hyperlapse import open_trajectory
from hyperlapse.errors import HyperlapseError
from hyperlapse.record.schedule import make_schedule

sys.path.insert(0, str(Path(__file__).parent))
import _kill_child as child  # noqa: E402

pytestmark = pytest.mark.slow

KILLS_PER_RUN = 5
RUNS = 11  # 55 kills


def _configs(rng: random.Random) -> list[dict]:
    configs = []
    for i in range(RUNS):
        configs.append(
            {
                # every schedule and dtype at least once, then at random
                "schedule": ["1", "3", "log", "callable"][i % 4]
                if i < 8
                else rng.choice(["1", "2", "log", "callable"]),
                "dtype": ["float32", "float16", "bfloat16"][i % 3],
                "flush_every_s": rng.choice([0.01, 0.05, 0.3, None]),
                "snapshots_per_chunk": rng.choice([1, 3, 8, 32]),
                "queue_size": rng.choice([1, 4, None]),
            }
        )
    return configs


def _check(path: Path, config: dict, model, start: int, final: set[int]) -> int:
    """Snapshots [start, len) equal the replay; all steps increase and follow the schedule
    (or are the final state captured by a ``close()``, in ``final``)."""
    traj = open_trajectory(path)
    steps = traj.steps.tolist()
    assert steps == sorted(set(steps)), steps
    schedule = make_schedule(**child.schedule_kwargs(config))
    off = [s for s in steps if s != 0 and not schedule(s) and s not in final]
    assert not off, f"steps off the schedule {off}"
    dtype = child.DTYPES[config["dtype"]]
    loss = traj.metrics.get("loss")
    for t in range(start, len(traj)):
        got = traj[t]
        for name, want in child.weights_for_step(model, steps[t]).items():
            assert torch.equal(got[name], want.to(dtype)), (config, t, steps[t], name)
        if loss is not None:  # NaN, or logged at this snapshot's step or one before it
            value = loss[t]
            assert (
                math.isnan(value)
                or steps[t - 1] * 0.5 < value <= steps[t] * 0.5
                or (t == 0 and value == 0.0)
            ), (t, steps[t], value)
    return len(traj)


def _committed(path: Path) -> int:
    try:
        return len(open_trajectory(path))
    except HyperlapseError:  # not created yet
        return 0


def test_randomised_sigkills_keep_every_committed_snapshot(tmp_path) -> None:
    rng = random.Random(12)
    ctx = multiprocessing.get_context("forkserver")
    # Each child's first blosc encode makes a multiprocessing lock of its own (a semaphore); a
    # killed child cannot unregister it, so the resource tracker reports and removes those
    # "leaked semaphore objects" at exit. Harmless, and safer than one lock shared by all.
    ctx.set_forkserver_preload(["torch", "numcodecs.blosc", "zarr", "hyperlapse", "_kill_child"])
    model = child.make_model()
    kills = mid_start_kills = closed_kills = total = 0
    started = time.monotonic()
    for run, config in enumerate(_configs(rng)):
        path = tmp_path / f"run{run}.zarr"
        committed, final = 0, set()
        for k in range(KILLS_PER_RUN):
            progress = ctx.RawValue("q", -1)  # no lock: a killed child must not hold one
            close_after = rng.randint(1, 40) if rng.random() < 0.15 else None
            proc = ctx.Process(
                target=child.record, args=(str(path), config, progress, close_after), daemon=True
            )
            proc.start()
            last = k == KILLS_PER_RUN - 1
            early = not last and committed > 0 and rng.random() < 0.2  # in resume, cut-back
            deadline = time.monotonic() + 60
            while not early and progress.value == -1 and time.monotonic() < deadline:
                assert proc.is_alive(), f"child failed (exit code {proc.exitcode}), {config}"
                time.sleep(0.005)
            # the last kill of a run comes after a new commit, so that every run records
            # something however slowly a loaded machine runs the children
            while last and _committed(path) <= committed and time.monotonic() < deadline:
                assert proc.is_alive(), f"child failed (exit code {proc.exitcode}), {config}"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.05) if early or last else rng.uniform(0.01, 0.4))
            assert proc.is_alive(), f"child failed (exit code {proc.exitcode}), {config}"
            proc.kill()
            proc.join()
            kills += 1
            mid_start_kills += early
            closed_kills += close_after is not None
            if progress.value <= -2:
                final.add(-2 - progress.value)
            if not path.exists():
                continue
            n = _check(path, config, model, committed, final)
            assert n >= committed, "a committed snapshot was lost"
            committed = n
        _check(path, config, model, 0, final)
        assert committed >= 1, config
        total += committed
    elapsed = time.monotonic() - started
    assert kills >= 50 and mid_start_kills > 0 and closed_kills > 0
    print(
        f"{kills} kills ({mid_start_kills} while starting, {closed_kills} after close) "
        f"in {elapsed:.1f} s"
    )
