"""RecorderConfig: every option validated once, bounds in bytes, shared with the adapters."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from hyperlapse import RecorderConfig, TrajectoryRecorder
from hyperlapse.errors import ConfigError
from hyperlapse.record.config import MAX_SHARD_BYTES, max_queue_bytes


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 2))


def test_config_is_frozen_and_normalised() -> None:
    config = RecorderConfig(dtype=torch.float16, flush_every_s=1, fsync=0)
    assert config.dtype == "float16" and config.flush_every_s == 1.0 and config.fsync is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dtype = "float32"  # type: ignore[misc]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"on_full": "wait"}, "on_full.*'block'"),
        ({"writes": "never"}, "writes.*'inline'"),
        ({"mode": "append"}, "mode.*'overwrite'"),
        ({"dtype": "int8"}, "dtype"),
        ({"queue_size": 0}, "queue_size to be a positive int"),
        ({"every": 0}, "every"),
        ({"compression": "gzip"}, "compression"),
        ({"flush_every_s": float("nan")}, "finite positive"),
        ({"report": object()}, "on_snapshot"),
        ({"flush_evry_s": 1}, r"unknown \['flush_evry_s'\]"),
    ],
)
def test_bad_options_are_config_errors_before_anything_is_created(tmp_path, options, match):
    with pytest.raises(ConfigError, match=match):
        TrajectoryRecorder(tmp_path / "r.zarr", _mlp(), **options)
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.parametrize("name", ["snapshots_per_chunk", "queue_size"])
def test_huge_counts_are_bounded_by_bytes(tmp_path, name) -> None:
    """Issue 16 item 6: snapshots_per_chunk=10**9 grew to 5.6 GB, queue_size=10**7 to 2.5 GB."""
    model = _mlp()
    nbytes = sum(p.numel() * 4 for p in model.parameters())
    limit = MAX_SHARD_BYTES if name == "snapshots_per_chunk" else max_queue_bytes()
    with pytest.raises(ConfigError) as info:
        TrajectoryRecorder(tmp_path / "r.zarr", model, **{name: 10**9})
    text = str(info.value)
    assert f"{name}=1000000000" in text and f"{name} <= {limit // nbytes}" in text
    assert "GiB" in text
    assert not (tmp_path / "r.zarr").exists()
    # the largest allowed value is accepted (checked, not allocated up front)
    RecorderConfig(**{name: limit // nbytes}).check_sizes(nbytes)


def test_the_recorder_and_an_override_share_one_config(tmp_path) -> None:
    base = RecorderConfig(every=3, flush_every_s=5.0)
    with TrajectoryRecorder(tmp_path / "r.zarr", _mlp(), config=base, dtype="float16") as rec:
        assert rec.config.every == 3 and rec.config.dtype == "float16"
        assert rec.config.flush_every_s == 5.0
    assert base.dtype == "float32"  # the shared config is unchanged
    with pytest.raises(ConfigError, match="RecorderConfig"):
        TrajectoryRecorder(tmp_path / "s.zarr", _mlp(), config={"every": 3})
