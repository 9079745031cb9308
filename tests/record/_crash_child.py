"""Child process of test_crash.py: records deterministic weights until it is killed.

The weights of step s depend only on s (see :func:`weights_for_step`), so the parent can check
every committed snapshot bit for bit without any side channel.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def weights_for_step(model: nn.Module, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return {name: torch.randn(p.shape, generator=g) for name, p in model.named_parameters()}


def main(path: str) -> None:
    import warnings

    from hyperlapse import TrajectoryRecorder
    from hyperlapse.errors import HyperlapseWarning

    # short commits on purpose (the crash bound under test): not the write-amplification advice
    warnings.filterwarnings("ignore", message="flush_every_s=", category=HyperlapseWarning)
    model = make_model()
    from _kill_child import last_stored_step

    last = last_stored_step(path)
    with torch.no_grad():  # resuming: the model is the last stored snapshot (a continuation)
        for name, value in weights_for_step(model, last or 0).items():
            model.get_parameter(name).copy_(value)
    rec = TrajectoryRecorder(path, model, every=1, snapshots_per_chunk=8, flush_every_s=0.05)
    step = rec.current_step  # 0, or the last stored step when resuming (captured again: no-op)
    while True:
        with torch.no_grad():
            for name, value in weights_for_step(model, step).items():
                model.get_parameter(name).copy_(value)
        rec.capture(step=step)
        rec.log(loss=step * 0.5)
        if step % 5 == 0:
            print(f"step {step}", flush=True)
        step += 1
        time.sleep(0.002)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
