"""PyTorch Lightning: record a training run with one callback.

Example:
    .. code-block:: python

        import lightning as L
        from hyperlapse.integrations.lightning import HyperlapseCallback

        callback = HyperlapseCallback("runs/mlp.zarr", every=10)
        trainer = L.Trainer(max_steps=1000, callbacks=[callback])
        trainer.fit(model)   # resume with trainer.fit(model, ckpt_path=...): same store

The callback only unpacks trainer state; the recorder does the work
(:class:`hyperlapse.TrajectoryRecorder`). One schedule tick per optimizer step
(``trainer.global_step``), so gradient accumulation does not multiply snapshots. Install with
``pip install -e '.[lightning]'`` in a clone of hyperlapse (it is not on PyPI).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from hyperlapse.errors import ConfigError, HyperlapseWarning, MissingDependencyError, WriterError
from hyperlapse.record.config import RecorderConfig
from hyperlapse.record.recorder import TrajectoryRecorder

from ._sync import advance_to, build_config, resolve_alias, scalars, start_at

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as exc:
        raise MissingDependencyError(
            "hyperlapse.integrations.lightning needs PyTorch Lightning, which is not installed. "
            "Install it with: pip install -e '.[lightning]' in a clone of hyperlapse "
            "(or pip install lightning)"
        ) from exc

__all__ = ["HyperlapseCallback"]

#: Strategies whose ranks each hold a shard of the parameters: rank 0 cannot copy the model.
SHARDED_STRATEGIES = ("FSDPStrategy", "ModelParallelStrategy", "DeepSpeedStrategy")


class HyperlapseCallback(Callback):
    """Record the parameters of the trained module into a hyperlapse trajectory store.

    Args:
        path: store path (``*.zarr``) or URL; an existing store of the same model is continued.
        every: capture every ``every`` optimizer steps (``trainer.global_step``).
        every_n_train_steps: the same, under the name Lightning's ``ModelCheckpoint`` uses.
        module: attribute path of the submodule to record (e.g. ``"net"``); default: the whole
            ``LightningModule``.
        log_metrics: store ``trainer.callback_metrics`` (scalars logged with ``self.log``)
            with the snapshots.
        config: a :class:`hyperlapse.RecorderConfig` (the recorder's options, validated).
        **options: options of :class:`hyperlapse.RecorderConfig` (``schedule``, ``dtype``,
            ``mode``, ``flush_every_s``, ...), replacing those of ``config``. ``mode="auto"``
            continues a store only from a Lightning checkpoint (``ckpt_path``) or when the
            model equals its last snapshot; ``mode="overwrite"`` replaces it.

    Raises:
        ConfigError: an invalid argument (here, not during training); at ``setup``: a strategy
            that shards parameters (FSDP, DeepSpeed), or ``module`` names no submodule.

    Records on global rank 0 only. The recorder opens the store when training starts (after a
    checkpoint is restored); the callback's ``state_dict`` travels in Lightning checkpoints, so
    ``trainer.fit(model, ckpt_path=...)`` continues the same store and drops the snapshots the
    first run stored after the checkpoint (the resumed run replays those steps).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        every: int | None = None,
        *,
        module: str | None = None,
        log_metrics: bool = True,
        every_n_train_steps: int | None = None,
        config: RecorderConfig | None = None,
        **options: Any,
    ) -> None:
        every = resolve_alias(every, "every_n_train_steps", every_n_train_steps)
        self.config = build_config(path, every, config, options)
        if module is not None and not isinstance(module, str):
            raise ConfigError(
                f"Expected module to be the attribute path of a submodule (e.g. 'net') or None, "
                f"but got {type(module).__name__} {module!r}."
            )
        self.path = os.fspath(path)
        self.module = module
        self.log_metrics = bool(log_metrics)
        self.recorder: TrajectoryRecorder | None = None
        self._loaded_state: dict[str, Any] | None = None
        self._final_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(path=self.path)

    # -- hooks -----------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        sharded = [c.__name__ for c in type(trainer.strategy).__mro__]
        hit = next((name for name in SHARDED_STRATEGIES if name in sharded), None)
        if hit is not None:
            raise ConfigError(
                f"Expected a strategy where global rank 0 holds the whole model (auto, ddp, "
                f"ddp_spawn, single device), but the trainer uses {type(trainer.strategy).__name__}"
                f" ({hit}), which shards parameters across ranks. HyperlapseCallback does not "
                f"gather them: use strategy='ddp', or record from your own loop after gathering "
                f"a full state dict."
            )
        self._target(pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        self.recorder = TrajectoryRecorder(self.path, self._target(pl_module), config=self.config)
        state, self._loaded_state = self._loaded_state, None  # a checkpoint's state, used once
        if state is not None:
            self.recorder.load_state_dict(state)
        start_at(self.recorder, trainer.global_step)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        recorder = self.recorder
        if recorder is None or trainer.global_step == recorder.current_step:
            return  # not rank 0, or a micro-batch of gradient accumulation (no optimizer step)
        advance_to(recorder, trainer.global_step)
        if self.log_metrics:  # as in a plain loop: scalars of step k go with snapshot k
            recorder.log(**scalars(trainer.callback_metrics))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        try:
            self._close()
        except WriterError as exc:  # the training exception is the one to raise
            warnings.warn(str(exc), HyperlapseWarning, stacklevel=2)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close()

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.recorder is not None:
            return {"recorder": self.recorder.state_dict()}
        return {"recorder": self._loaded_state or self._final_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_state = state_dict.get("recorder")

    # -- helpers ---------------------------------------------------------------------------
    def _target(self, pl_module: Any) -> Any:
        if self.module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError as exc:
            raise ConfigError(
                f"Expected module='{self.module}' to name a submodule of "
                f"{type(pl_module).__name__}, but it does not ({exc}). Pass the attribute path "
                f"of the network to record (e.g. module='net'), or None for the whole module."
            ) from exc

    def _close(self) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            try:
                recorder.close()
            finally:
                self._final_state = recorder.state_dict()
