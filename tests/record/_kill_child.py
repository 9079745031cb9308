"""Child of test_kill_random.py, started from a forkserver that has imported torch and
hyperlapse once: records a deterministic run (the weights of step s depend only on s) until it
is SIGKILLed, resuming the store it finds."""

from __future__ import annotations

import time

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 10))


def weights_for_step(model: nn.Module, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5000 + step)
    return {name: torch.randn(p.shape, generator=g) for name, p in model.named_parameters()}


def sevens(step: int) -> bool:
    """A user predicate schedule: steps 7k and 7k + 2."""
    return step % 7 in (0, 2)


def schedule_kwargs(config: dict) -> dict:
    kind = config["schedule"]
    if kind == "callable":
        return {"schedule": sevens}
    if kind == "log":
        return {"schedule": "log"}
    return {"every": int(kind)}


def last_stored_step(path: str) -> int | None:
    """The step of the last committed snapshot at ``path`` (None: nothing committed)."""
    from hyperlapse import open_trajectory
    from hyperlapse.errors import HyperlapseError

    try:
        traj = open_trajectory(path)
    except HyperlapseError:
        return None
    return int(traj.steps[-1]) if len(traj) else None


def _set(model: nn.Module, step: int) -> None:
    with torch.no_grad():
        for name, value in weights_for_step(model, step).items():
            model.get_parameter(name).copy_(value)


def record(path: str, config: dict, progress, close_after: int | None) -> None:
    """Record until killed; ``progress.value`` is the last step counted (-1 before any,
    ``-2 - step`` once ``close()`` of the state at ``step`` began)."""
    from hyperlapse import TrajectoryRecorder

    torch.set_num_threads(1)
    model = make_model()
    last = last_stored_step(path)
    if last is not None:  # a true continuation: the model is the last stored snapshot
        _set(model, last)
    rec = TrajectoryRecorder(
        path,
        model,
        dtype=config["dtype"],
        flush_every_s=config["flush_every_s"],
        snapshots_per_chunk=config["snapshots_per_chunk"],
        queue_size=config["queue_size"],
        **schedule_kwargs(config),
    )
    step = rec.current_step  # resuming: the last stored step
    if step == 0:  # a fresh store (or one holding step 0 only: then a no-op)
        _set(model, 0)
        rec.capture(step=0)
    progress.value = step
    done = 0
    while True:
        _set(model, step + 1)
        rec.step()  # counts step + 1, captures on schedule
        step += 1
        rec.log(loss=step * 0.5)
        progress.value = step
        done += 1
        if close_after is not None and done == close_after:
            progress.value = -2 - step  # closing: the final state at this step is captured
            rec.close()
            while True:
                time.sleep(1)
        time.sleep(0.001)
