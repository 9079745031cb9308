"""What every trainer adapter needs: keep a recorder in step with a trainer's step counter.

Trainers count optimizer steps themselves (Lightning ``trainer.global_step``, transformers
``state.global_step``), counting gradient-accumulation micro-batches once. The adapters make that
counter the authority: :func:`start_at` aligns a new recorder with the step the trainer starts
or resumes at, :func:`advance_to` gives the recorder one schedule tick per optimizer step.
No trainer is imported here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from hyperlapse.errors import ConfigError
from hyperlapse.record.config import RecorderConfig
from hyperlapse.record.recorder import TrajectoryRecorder


def build_config(
    path: Any, every: Any, config: RecorderConfig | None, options: Mapping[str, Any]
) -> RecorderConfig:
    """Validate an adapter's recorder configuration when the adapter is built: the same
    :class:`~hyperlapse.RecorderConfig` the recorder takes (no option list of its own).

    Raises:
        ConfigError: naming the bad argument.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(
            f"Expected the store path to be a str or os.PathLike (a local *.zarr path or a URL), "
            f"but got {type(path).__name__} {path!r}."
        )
    if every is not None:
        options = {**options, "every": every}
    return RecorderConfig.build(config, **options)


def resolve_alias(every: Any, alias_name: str, alias: Any) -> Any:
    """``every`` given under a trainer's own name (e.g. Lightning's ``every_n_train_steps``).

    Raises:
        ConfigError: both names are given with different values.
    """
    if alias is None:
        return every
    if every is not None and every != alias:
        raise ConfigError(
            f"Expected one capture interval, but got every={every!r} and "
            f"{alias_name}={alias!r}. Pass only one of them (they mean the same)."
        )
    return alias


#: Run summaries that transformers logs once at the end of training: not per-snapshot scalars.
RUN_SUMMARIES = frozenset(
    {"total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
     "train_loss"}
)


def start_at(recorder: TrajectoryRecorder, step: int) -> None:
    """Align a new recorder with a trainer that starts (or resumes) at optimizer step ``step``.

    Captures the state at ``step`` (the initial state of a fresh run; skipped when the store
    already holds that step). A trainer that starts past step 0 resumed from its checkpoint:
    that is the decision to continue the stored run (``load_state_dict``). A store that runs
    ahead of a resumed trainer is cut back to ``step``: the resumed run replays those steps.

    Raises:
        StoreExistsError: a fresh run (step 0) on a store of another run (``mode="auto"``).
        ConfigError: the store holds a run past step 0 but the trainer starts from scratch.
    """
    if not recorder.active:
        return
    if recorder.refused and step > 0:
        # the trainer restored a checkpoint at `step`: the decision to continue that run
        recorder.load_state_dict({**recorder.state_dict(), "step": step})
    stored = recorder.current_step
    if stored > step:
        if step == 0:
            raise ConfigError(
                f"Expected a new or matching store at '{recorder.path}', but it already holds a "
                f"run up to optimizer step {stored} while the trainer starts from step 0. Record "
                f"to a new path, delete the store, or resume the trainer from its checkpoint."
            )
        state = recorder.state_dict()
        state["step"] = step
        recorder.load_state_dict(state)  # drops the stored snapshots after `step`
    recorder.capture(step=step)


def advance_to(recorder: TrajectoryRecorder, step: int) -> None:
    """One schedule tick per optimizer step the trainer made since the last call."""
    if not recorder.active:
        return
    for _ in range(step - recorder.current_step):
        recorder.step()


def scalars(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are numbers or one-element tensors.

    Tensors stay tensors (detached copies: no device sync here; the recorder converts them on
    its writer thread).
    """
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            if value.numel() == 1:
                out[str(name)] = value.detach().clone()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(name)] = value
    return out
