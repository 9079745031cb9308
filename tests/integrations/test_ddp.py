"""DistributedDataParallel: every rank attaches a recorder, only global rank 0 writes.

Two gloo processes on CPU train a DDP-wrapped MLP on the two halves of each batch; a single
process trains the same MLP (same seed) on the same halves and averages the two gradients the
way DDP does (each divided by the world size, then summed). The two stores must be equal:
the same steps and bit-exact weights.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import hyperlapse

pytestmark = pytest.mark.slow

SEED, STEPS, EVERY, WORLD = 0, 7, 3, 2


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, WORLD, 8, 5, generator=g)  # step, rank, batch, features
    y = torch.randint(0, 3, (STEPS, WORLD, 8), generator=g)
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def _worker(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        x, y = _data()
        # Same path on every rank (what users write). Rank 1 also gets a path of its own:
        # it must stay absent, since a non-zero rank's recorder is a no-op.
        paths = [Path(root) / "ddp.zarr"] + ([Path(root) / "rank1.zarr"] if rank else [])
        recorders = [hyperlapse.TrajectoryRecorder(p, model, every=EVERY) for p in paths]
        for recorder in recorders:
            recorder.attach(optimizer)
        for step in range(STEPS):
            loss = nn.functional.cross_entropy(model(x[step, rank]), y[step, rank])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for recorder in recorders:
            recorder.close()
        # rank 0's close (flush + fsync) takes longer than the no-op of rank 1: tearing gloo
        # down while the peer is still busy can abort the process ("terminate called ...")
        dist.barrier()
        (Path(root) / f"done{rank}").touch()
    finally:
        dist.destroy_process_group()
    # gloo's threads can still abort the interpreter's own teardown ("terminate called without
    # an active exception", seen once in CI); all this test checks is on disk by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _single_process(path: Path) -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        x, y = _data()
        with hyperlapse.TrajectoryRecorder(path, model, every=EVERY) as recorder:
            recorder.attach(optimizer)
            for step in range(STEPS):
                grads = []
                for rank in range(WORLD):
                    model.zero_grad()
                    nn.functional.cross_entropy(model(x[step, rank]), y[step, rank]).backward()
                    grads.append([p.grad / WORLD for p in model.parameters()])
                for p, *gs in zip(model.parameters(), *grads, strict=True):
                    p.grad = gs[0] + gs[1]
                optimizer.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_store_equals_single_process_store(tmp_path):
    try:
        mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    except mp.ProcessExitedException as exc:
        # A SIGABRT from gloo's teardown after every rank finished its work (closed its
        # recorders and passed the barrier) is torch's, not ours: the stores below decide.
        done = all((tmp_path / f"done{r}").exists() for r in range(WORLD))
        if not (done and exc.signal_name == "SIGABRT"):
            raise
    assert all((tmp_path / f"done{r}").exists() for r in range(WORLD)), "a rank did not finish"
    final = _single_process(tmp_path / "single.zarr")

    assert not (tmp_path / "rank1.zarr").exists(), "rank 1 wrote a store"
    ddp = hyperlapse.open_trajectory(tmp_path / "ddp.zarr")
    single = hyperlapse.open_trajectory(tmp_path / "single.zarr")

    assert ddp.steps.tolist() == single.steps.tolist()
    assert ddp.steps.tolist() == sorted(set(range(0, STEPS + 1, EVERY)) | {STEPS})
    assert len(ddp) == len(single)
    for t in range(len(single)):
        a, b = ddp[t], single[t]
        assert sorted(a) == sorted(final), "names must come from the unwrapped module"
        for name in b:
            assert torch.equal(a[name], b[name]), f"snapshot {t}, '{name}' differs"
    for name, value in final.items():  # the last snapshot is the trained model, bit-exact
        assert torch.equal(single[len(single) - 1][name], value)
