"""Child of test_inplace.py: records snapshots whose weights depend only on their step (an
O_DIRECT-sized weight; argv: the store and the recorder's ``writes``), resuming the store
it finds, until it is SIGKILLed."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.store.format import store_exists


def main(path: str, writes: str = "auto") -> None:
    torch.set_num_threads(1)
    model = nn.Linear(128, 160)
    if store_exists(path):  # continue the killed run from its last committed snapshot
        traj = open_trajectory(path)
        if len(traj):
            model.load_state_dict(traj[-1])
    rec = TrajectoryRecorder(path, model, snapshots_per_chunk=8, flush_every_s=0.1,
                             writes=writes)
    step = -1 if rec.writer.committed == 0 else rec.current_step
    print("ready", flush=True)
    while True:
        step += 1
        with torch.no_grad():
            weight = np.random.default_rng(step).standard_normal((160, 128)).astype(np.float32)
            model.weight.copy_(torch.from_numpy(weight))
        rec.capture(step=step)
        time.sleep(0.002)


if __name__ == "__main__":
    main(*sys.argv[1:])
