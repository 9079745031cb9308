"""RecorderConfig: every recorder option, validated once.

The recorder, the trainer adapters (Lightning, transformers) and the zoo all build the same
frozen object (Lightning's ``ModelCheckpoint.__validate_init_configuration`` pattern): a bad
option is a :class:`~hyperlapse.errors.ConfigError` where the recorder or callback is built,
never in a hook on the hot path, and there is one option list, not one per adapter.

Bounds that depend on the model (shard and queue sizes in bytes) are checked by
:meth:`RecorderConfig.check_sizes` once the snapshot size is known, before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError
from ..store.format import check_compression
from .capture import DTYPES
from .schedule import Schedule, make_schedule

__all__ = ["MODES", "RecorderConfig", "max_queue_bytes", "MAX_SHARD_BYTES"]

#: What the recorder does with an existing store (see :class:`RecorderConfig`).
MODES = ("auto", "resume", "overwrite", "new")
#: A shard file is held in memory while it is written (compressed stores) and is the unit of
#: a time flush: at most this many bytes per shard.
MAX_SHARD_BYTES = 2**30
_MAX_QUEUE_BYTES = 2**30  # capture buffers in flight, and at most a quarter of the RAM


def max_queue_bytes() -> int:
    """Bytes the capture buffers in flight may hold: 1 GiB, or a quarter of the RAM if less."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return _MAX_QUEUE_BYTES
    return min(_MAX_QUEUE_BYTES, max(ram // 4, 2**24))


@dataclasses.dataclass(frozen=True, eq=False)
class RecorderConfig:
    """How a :class:`~hyperlapse.TrajectoryRecorder` records (every option, validated once).

    Args:
        every: capture every ``every`` optimizer steps.
        schedule: instead of ``every``: ``"log"`` (log-spaced, dense early), an int, a
            ``callable(step) -> bool`` or a schedule object. Neither given: every step.
        dtype: stored dtype of floating tensors: "float32" (bit-exact), "float16", "bfloat16"
            (a ``torch.dtype`` is accepted and stored as its name).
        on_full: when the writer cannot keep up (all capture buffers in flight, or the
            captured-but-uncommitted backlog at its bound): "block" (training waits, nothing
            lost) or "drop" (the snapshot is skipped and counted in attrs ``dropped``).
        buffers: also record the module's buffers (e.g. BatchNorm running stats).
        flush_every_s: commit pending snapshots at least this often (seconds); a SIGKILL loses
            at most this interval plus one flush, in every ``writes`` mode (training waits
            when the writer falls further behind). ``None``: commit whole shards only.
        snapshots_per_chunk: snapshots per shard file (default: ~64 MB per shard, 16..1024);
            at most 1 GiB of snapshots per shard.
        queue_size: snapshots in flight between the training thread and the writer (default:
            enough for ~64 MB, 4..64); at most 1 GiB (or a quarter of the RAM) of them.
        report: optional listener with ``on_snapshot(index, step, state, metrics)`` and
            ``close()`` (see docs/recording.md).
        fsync: fsync each flush's data and commit (local stores): committed snapshots survive
            a power loss; ``False`` keeps only the process-crash guarantee.
        probes: a small batch of real inputs ``[B, n_0]`` stored once with the run.
        compression: "auto", "none", "lz4" or "zstd" (docs/recording.md).
        architecture: a ``describe_mlp``-style description of the recorded parameters.
        writes: "inline", "background" or "auto" (docs/recording.md).
        mode: what to do with a store already at the path: "auto" (create one when nothing is
            there; continue one only when the model is the continuation of the stored run:
            its tensors equal the last committed snapshot bit for bit, or
            ``recorder.load_state_dict`` restores a checkpoint; otherwise refuse with
            :class:`~hyperlapse.errors.StoreExistsError`), "resume" (the store must exist and
            be continued so), "overwrite" (replace it; the old store stays whole until the
            new one's first commit is durable) or "new" (refuse any existing store).

    Raises:
        ConfigError: an invalid option, saying what is accepted.
    """

    every: int | None = None
    schedule: Any = None
    dtype: str = "float32"
    on_full: str = "block"
    buffers: bool = False
    flush_every_s: float | None = 2.0
    snapshots_per_chunk: int | None = None
    queue_size: int | None = None
    report: Any = None
    fsync: bool = True
    probes: Any = None
    compression: str = "auto"
    architecture: Mapping[str, Any] | None = None
    writes: str = "auto"
    mode: str = "auto"

    def __post_init__(self) -> None:
        self.__validate_init_configuration()

    @classmethod
    def build(cls, config: RecorderConfig | None = None, **options: Any) -> RecorderConfig:
        """``config`` with ``options`` replaced, or a new config from ``options``.

        Raises:
            ConfigError: an unknown option name (naming the known ones) or a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"Expected recorder options among {sorted(known)}, but got unknown {unknown}. "
                f"Check the spelling (see hyperlapse.RecorderConfig)."
            )
        if config is None:
            return cls(**options)
        if not isinstance(config, RecorderConfig):
            raise ConfigError(
                f"Expected config to be a hyperlapse.RecorderConfig, but got "
                f"{type(config).__name__}."
            )
        return dataclasses.replace(config, **options) if options else config

    def make_schedule(self) -> Schedule:
        """The capture schedule (a new object: schedules may keep state)."""
        return make_schedule(self.every, self.schedule)

    def describe(self, compression: str) -> dict[str, Any]:
        """The JSON-able options stored in the store's ``recorder`` attribute."""
        return {
            "schedule": self.make_schedule().describe(),
            "dtype": self.dtype,
            "on_full": self.on_full,
            "buffers": self.buffers,
            "flush_every_s": self.flush_every_s,
            "queue_size": self.queue_size,
            "fsync": self.fsync,
            "compression": compression,
        }

    def check_sizes(self, snapshot_bytes: int) -> None:
        """The byte bounds of ``snapshots_per_chunk`` and ``queue_size`` for a model whose
        snapshot holds ``snapshot_bytes`` bytes.

        Raises:
            ConfigError: naming the limit, the value asked and what to pass.
        """
        per = max(int(snapshot_bytes), 1)
        for name, value, limit, what in (
            ("snapshots_per_chunk", self.snapshots_per_chunk, MAX_SHARD_BYTES, "per shard"),
            ("queue_size", self.queue_size, max_queue_bytes(), "in flight"),
        ):
            if value is not None and value * per > limit:
                raise ConfigError(
                    f"Expected {name} to keep at most {_size(limit)} of snapshots {what}, but "
                    f"{name}={value} snapshots of {_size(per)} each (this model) would hold "
                    f"{_size(value * per)}. Pass {name} <= {max(limit // per, 1)}, or None "
                    f"for the default."
                )

    def __validate_init_configuration(self) -> None:
        set_ = object.__setattr__  # frozen: normalise through the base class once, here
        self.make_schedule()  # raises ConfigError for a bad every/schedule
        dtype = self.dtype
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).replace("torch.", "")
        if dtype not in DTYPES:
            raise ConfigError(
                f"Expected dtype to be one of {sorted(DTYPES)}, but got {self.dtype!r}. float32 "
                f"keeps weights bit-exact; float16/bfloat16 halve the store."
            )
        set_(self, "dtype", dtype)
        _choice("on_full", self.on_full, {
            "block": "wait, lose nothing", "drop": "skip and count"})
        _choice("writes", self.writes, {
            "auto": "inline where torch uses every core", "inline": "the training thread writes",
            "background": "the writer thread writes"})
        _choice("mode", self.mode, {
            "auto": "create, or continue a true continuation", "resume": "continue",
            "overwrite": "replace", "new": "refuse an existing store"})
        flush = self.flush_every_s
        if flush is not None:
            if not (_is_real(flush) and math.isfinite(flush) and flush > 0):
                raise ConfigError(
                    f"Expected flush_every_s to be a finite positive number of seconds, or None "
                    f"to commit whole shards only, but got {flush!r}."
                )
            set_(self, "flush_every_s", float(flush))
        for name in ("snapshots_per_chunk", "queue_size"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value <= 0
            ):
                raise ConfigError(f"Expected {name} to be a positive int, but got {value!r}.")
        for name in ("buffers", "fsync"):
            if not isinstance(getattr(self, name), (bool, int)):
                raise ConfigError(
                    f"Expected {name} to be True or False, but got {getattr(self, name)!r}."
                )
            set_(self, name, bool(getattr(self, name)))
        set_(self, "compression", check_compression(self.compression))
        report = self.report
        if report is not None and not (
            callable(getattr(report, "on_snapshot", None))
            and callable(getattr(report, "close", None))
        ):
            raise ConfigError(
                f"Expected report to have on_snapshot(index, step, state, metrics) and close() "
                f"methods, but got {type(report).__name__}."
            )


def _choice(name: str, value: Any, choices: dict[str, str]) -> None:
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(f"{k!r} ({v})" for k, v in choices.items())
        raise ConfigError(f"Expected {name} to be one of {listed}, but got {value!r}.")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
