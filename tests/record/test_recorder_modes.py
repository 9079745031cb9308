"""mode="auto"|"resume"|"overwrite"|"new": a second run is never glued onto a first one
(issue 16 item 1)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.errors import NotAStoreError, StoreExistsError


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _run(path, model, steps: int = 12, **options) -> TrajectoryRecorder:
    """The README's first example: train ``steps`` SGD steps, capture every 5."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrajectoryRecorder(path, model, every=5, **options) as rec:
        rec.attach(opt)
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(16, 4)).pow(2).mean().backward()
            opt.step()
            rec.log(loss=1.0)
    return rec


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("mode", ["auto", "resume"])
def test_a_second_fresh_run_is_refused_not_glued(tmp_path, mode) -> None:
    """Fails on 146d920: the second run was appended as steps 13..24 (25 snapshots)."""
    path = tmp_path / "run.zarr"
    _run(path, _mlp(0))
    before = _digest(path)
    with pytest.raises(StoreExistsError) as info:
        _run(path, _mlp(1), mode=mode)
    text = str(info.value)
    for said in (str(path), "up to step 12", "4 committed", "mode='overwrite'", "mode='new'",
                 "load_state_dict"):
        assert said in text, said
    assert _digest(path) == before  # nothing written, not even the attrs
    assert open_trajectory(path).steps.tolist() == [0, 5, 10, 12]


def test_a_true_continuation_is_appended(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    model = _mlp(0)
    _run(path, model)
    last = open_trajectory(path)[-1]
    _run(path, model, steps=3)  # the same model, where the first session left it
    traj = open_trajectory(path)
    assert traj.steps.tolist() == [0, 5, 10, 12, 15]
    assert all(torch.equal(traj[3][k], v) for k, v in last.items())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_continuation_is_checked_in_the_stored_dtype(tmp_path, dtype) -> None:
    path = tmp_path / "run.zarr"
    model = _mlp(0)
    _run(path, model, dtype=dtype)
    _run(path, model, steps=3, dtype=dtype)  # float32 model, rounded like the stored one
    assert len(open_trajectory(path)) == 5
    with torch.no_grad():  # one bit off in the stored dtype: a different model
        model[0].bias[0] = model[0].bias[0].to(getattr(torch, dtype)).float() * 2 + 1
    with pytest.raises(StoreExistsError):
        _run(path, model, steps=1, dtype=dtype)


def test_load_state_dict_resumes_a_checkpoint_behind_the_store(tmp_path) -> None:
    """A checkpoint at step 5 of a store that ran to step 12: the restored model is not the
    last snapshot, but load_state_dict is the decision to continue (and cuts back to 5)."""
    path = tmp_path / "run.zarr"
    model = _mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrajectoryRecorder(path, model, every=5) as rec:
        rec.attach(opt)
        for step in range(1, 13):
            opt.zero_grad()
            model(torch.randn(16, 4)).pow(2).mean().backward()
            opt.step()
            if step == 5:
                ckpt = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                        "recorder": rec.state_dict()}
    fresh = _mlp(1)
    fresh.load_state_dict(ckpt["model"])
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    with TrajectoryRecorder(path, fresh, every=5) as rec:
        rec.load_state_dict(ckpt["recorder"])
        rec.attach(opt)
        for _ in range(5):
            opt.zero_grad()
            fresh(torch.randn(16, 4)).pow(2).mean().backward()
            opt.step()
    assert open_trajectory(path).steps.tolist() == [0, 5, 10]


def test_resume_needs_a_store(tmp_path) -> None:
    with pytest.raises(NotAStoreError, match="mode='resume'"):
        TrajectoryRecorder(tmp_path / "none.zarr", _mlp(0), mode="resume")
    assert not (tmp_path / "none.zarr").exists()


def test_new_refuses_an_existing_store(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _run(path, _mlp(0))
    before = _digest(path)
    with pytest.raises(StoreExistsError, match="mode='new'|exists"):
        TrajectoryRecorder(path, _mlp(0), mode="new")
    assert _digest(path) == before
    _run(tmp_path / "other.zarr", _mlp(1), mode="new")
    assert len(open_trajectory(tmp_path / "other.zarr")) == 4


def test_overwrite_replaces_the_store(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _run(path, _mlp(0), steps=20)
    model = _mlp(1)
    _run(path, model, mode="overwrite")
    traj = open_trajectory(path)
    assert traj.steps.tolist() == [0, 5, 10, 12]
    assert all(torch.equal(traj[-1][k], v) for k, v in model.state_dict().items())


def test_overwrite_keeps_the_old_store_whole_until_the_first_new_commit(tmp_path) -> None:
    path = tmp_path / "run.zarr"
    _run(path, _mlp(0))
    rec = TrajectoryRecorder(path, _mlp(1), mode="overwrite", flush_every_s=None)
    assert open_trajectory(path).steps.tolist() == [0, 5, 10, 12]  # the old run, readable
    rec.capture(step=0)
    rec.close()
    assert open_trajectory(path).steps.tolist() == [0]
