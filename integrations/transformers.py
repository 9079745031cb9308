"""Hugging Face ``transformers.Trainer``: record a training run with one callback.

Example:
    .. code-block:: python

        from transformers import Trainer
        from hyperlapse.integrations.transformers import HyperlapseCallback

        trainer = Trainer(model=model, args=args, train_dataset=data,
                          callbacks=[HyperlapseCallback("runs/mlp.zarr", every=10)])
        trainer.train()

One schedule tick per optimizer step (``state.global_step``: gradient accumulation counted
once); the values passed to ``on_log`` (loss, learning rate, grad norm, ...) are stored with the
snapshots. Install with ``pip install -e '.[transformers]'`` in a clone of hyperlapse (it is
not on PyPI).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from hyperlapse.errors import ConfigError, MissingDependencyError
from hyperlapse.record.config import RecorderConfig
from hyperlapse.record.recorder import TrajectoryRecorder
from hyperlapse.record.schedule import make_schedule

from ._sync import RUN_SUMMARIES, advance_to, build_config, scalars, start_at

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise MissingDependencyError(
        "hyperlapse.integrations.transformers needs Hugging Face transformers, which is not "
        "installed. Install it with: pip install -e '.[transformers]' in a clone of hyperlapse "
        "(or pip install transformers accelerate)"
    ) from exc

__all__ = ["HyperlapseCallback"]

_INTERVAL_FIELDS = ("logging_steps", "save_steps", "eval_steps")


def _interval_from_args(args: Any, field: str, total_steps: int) -> Any:
    value = getattr(args, field, None)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(
            f"HyperlapseCallback(every={field!r}) takes its interval from "
            f"TrainingArguments.{field}, but that is {value!r}. Set {field} to a number of "
            f"steps, or pass every=N."
        )
    if 0 < value < 1:  # a ratio of the total number of steps, as transformers allows
        value = max(1, math.ceil(value * max(total_steps, 1)))
    return make_schedule(int(value), None)


class HyperlapseCallback(TrainerCallback):
    """Record the trained model's parameters into a hyperlapse trajectory store.

    Args:
        path: store path (``*.zarr``) or URL.
        every: capture every ``every`` optimizer steps (``state.global_step``), or
            ``"logging_steps"`` / ``"save_steps"`` / ``"eval_steps"``: the interval of that
            ``TrainingArguments`` field, read when training begins (a snapshot beside each log
            line or checkpoint).
        log_metrics: store the scalars the trainer logs (``on_log``) with the snapshots; the
            end-of-training run summaries (``train_runtime``, ``total_flos``, ...) are not
            per-snapshot values and are left out.
        config: a :class:`hyperlapse.RecorderConfig` (the recorder's options, validated).
        **options: options of :class:`hyperlapse.RecorderConfig` (``schedule``, ``dtype``,
            ``mode``, ...), replacing those of ``config``.

    Raises:
        ConfigError: an invalid argument (here, not during training); at train begin: FSDP or
            DeepSpeed (rank 0 does not hold the whole model), or a store that already holds a
            later part of another run.

    Records on the world process zero only. ``trainer.train(resume_from_checkpoint=...)``
    continues the same store from the checkpoint's ``global_step`` (later snapshots are
    dropped: the resumed run replays them).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        every: int | str | None = None,
        *,
        log_metrics: bool = True,
        config: RecorderConfig | None = None,
        **options: Any,
    ) -> None:
        self._every_field = every if isinstance(every, str) else None
        if self._every_field is not None and self._every_field not in _INTERVAL_FIELDS:
            raise ConfigError(
                f"Expected every to be a number of steps or one of {list(_INTERVAL_FIELDS)} "
                f"(a TrainingArguments field), but got {every!r}."
            )
        self.config = build_config(path, None if self._every_field else every, config, options)
        self.path = os.fspath(path)
        self.log_metrics = bool(log_metrics)
        self.recorder: TrajectoryRecorder | None = None

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        fsdp, deepspeed = getattr(args, "fsdp", None), getattr(args, "deepspeed", None)
        if fsdp or deepspeed:
            raise ConfigError(
                f"Expected a Trainer where process zero holds the whole model, but the "
                f"arguments shard the parameters across processes (got fsdp={fsdp!r}, "
                f"deepspeed={deepspeed!r}). HyperlapseCallback does not gather them: train "
                f"without sharding, or record from your own loop."
            )
        if not state.is_world_process_zero or model is None:
            return
        config = self.config
        if self._every_field is not None:
            schedule = _interval_from_args(
                args, self._every_field, int(getattr(state, "max_steps", 0) or 0)
            )
            config = dataclasses.replace(config, every=None, schedule=schedule)
        recorder = TrajectoryRecorder(self.path, model, config=config)
        try:
            start_at(recorder, state.global_step)
        except BaseException:
            recorder.close()  # Trainer has no exception hook: close before raising
            raise
        self.recorder = recorder

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is not None:
            advance_to(self.recorder, state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self.recorder is not None and self.log_metrics and logs:
            self.recorder.log(
                **{k: v for k, v in scalars(logs).items() if k not in RUN_SUMMARIES}
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close()
