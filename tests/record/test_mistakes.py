"""Warnings about likely mistakes (issue 16 item 3) and errors a user can act on (items 10, 12)."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.errors import ConfigError, HyperlapseWarning, StoreLockedError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _loop(model, rec, steps: int, attach: bool) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if attach:
        rec.attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        rec.log(loss=loss.detach())


def test_a_forgotten_attach_is_warned_once_while_logging_and_at_close(tmp_path) -> None:
    """Fails on 146d920: 50 steps and 50 log() calls gave one snapshot and no word."""
    model = _mlp()
    with pytest.warns(HyperlapseWarning) as record:
        with TrajectoryRecorder(tmp_path / "r.zarr", model) as rec:
            _loop(model, rec, 50, attach=False)
    texts = [str(w.message) for w in record]
    assert len(texts) == 2, texts
    assert "forget rec.attach(optimizer)" in texts[0] and "20 times" in texts[0]
    assert "holds only 1 snapshot" in texts[1] and "50 times" in texts[1]
    assert len(open_trajectory(tmp_path / "r.zarr")) == 1


@pytest.mark.parametrize("every", [1, 100])
def test_attached_recorders_do_not_warn(tmp_path, every) -> None:
    """Sparse schedules log many times between captures: steps are counted, no warning."""
    model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with TrajectoryRecorder(tmp_path / "r.zarr", model, every=every) as rec:
            _loop(model, rec, 50, attach=True)


def test_a_model_on_the_meta_device_is_a_config_error_before_anything_exists(tmp_path) -> None:
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(ConfigError, match="meta device.*to_empty"):
        TrajectoryRecorder(tmp_path / "r.zarr", model)
    assert not (tmp_path / "r.zarr").exists()


def test_a_bytes_path_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="bytes.*os.fsdecode"):
        TrajectoryRecorder(bytes(tmp_path / "r.zarr"), _mlp())
    assert not (tmp_path / "r.zarr").exists()


def test_a_recorder_dropped_without_close_releases_its_lock(tmp_path) -> None:
    """Fails on 146d920: the next recorder was told another writer (its own pid) held it."""
    model = _mlp()
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model)
    rec.capture(step=0)
    del rec
    gc.collect()
    with TrajectoryRecorder(tmp_path / "r.zarr", model) as again:  # the same model: continues
        again.capture(step=1)
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.steps.tolist() == [0, 1] and traj.attrs["closed"] is True


def test_an_unclosed_recorder_of_this_process_is_named_as_such(tmp_path) -> None:
    model = _mlp()
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model)  # still referenced: not collected
    rec.capture(step=0)
    with pytest.raises(StoreLockedError, match="unclosed recorder .* in this process"):
        TrajectoryRecorder(tmp_path / "r.zarr", model)
    rec.close()
