"""TrajectoryRecorder: the training thread's API for recording a model's parameters into a
crash-safe Zarr store.

The training thread only counts steps, copies the parameters into a capture buffer and hands it
on; :mod:`~hyperlapse.record.pipeline` writes and commits it (threads, backpressure, errors,
counters), :mod:`~hyperlapse.record.lifetime` closes recorders at exit, on SIGTERM and when one
is dropped unclosed, and :class:`~hyperlapse.record.config.RecorderConfig` validates the options.
"""

from __future__ import annotations

import numbers
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..arch import check_recorded_architecture, describe_mlp, unwrap_model
from ..errors import (
    ArchitectureError,
    ConfigError,
    HyperlapseWarning,
    StoreExistsError,
    WriterError,
)
from ..store.format import VERSION as FORMAT_VERSION
from ..store.format import check_compatible, resolve_compression
from ..store.lock import WriterLock
from ..store.writer import short_flush_warning
from . import lifetime
from .capture import DTYPES, CaptureLayout
from .config import RecorderConfig
from .opening import existing_run, open_writer, refusal
from .pipeline import MetricsSlot, Pipeline, default_queue_size, to_float
from .watch import ModelWatch, recorded_tensors

__all__ = ["TrajectoryRecorder"]

_STATE_VERSION = 1
#: log() calls with no step or capture between them that suggest a forgotten attach(optimizer)
_LOGS_WITHOUT_STEP = 20


class TrajectoryRecorder:
    """Record a model's parameters during training into a Zarr trajectory store.

    Args:
        path: local path of the store (``*.zarr``; missing parents are created) or a URL any
            fsspec backend understands (``memory://``, ``s3://``, ...). What happens to a
            store already there is ``mode``'s choice (see :class:`RecorderConfig`).
        model: any ``nn.Module``; ``torch.compile`` and DDP/DataParallel wrappers are unwrapped.
        every: capture every ``every`` optimizer steps.
        config: a :class:`~hyperlapse.RecorderConfig` (e.g. shared with a trainer adapter).
        **options: the options of :class:`~hyperlapse.RecorderConfig` (``schedule``,
            ``dtype``, ``on_full``, ``flush_every_s``, ``mode``, ...), replacing those of
            ``config``.

    Raises:
        ConfigError: an invalid argument (checked here, never on the hot path).
        NotAStoreError: ``path`` holds something that is not a hyperlapse store.
        IncompatibleStoreError: ``path`` holds a store of another model.
        StoreError: ``path`` cannot be written.

    Example:
        >>> import torch, tempfile, os
        >>> from torch import nn
        >>> from hyperlapse import TrajectoryRecorder, open_trajectory
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> path = os.path.join(tempfile.mkdtemp(), "run.zarr")
        >>> with TrajectoryRecorder(path, model, every=5) as rec:
        ...     handle = rec.attach(opt)
        ...     for _ in range(12):
        ...         opt.zero_grad()
        ...         loss = model(torch.randn(16, 4)).pow(2).mean()
        ...         loss.backward()
        ...         opt.step()
        ...         rec.log(loss=loss.detach())
        >>> traj = open_trajectory(path)
        >>> traj.steps.tolist()
        [0, 5, 10, 12]
        >>> bool(torch.equal(traj[-1]["0.weight"], model[0].weight))
        True
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: nn.Module,
        every: int | None = None,
        *,
        config: RecorderConfig | None = None,
        **options: Any,
    ) -> None:
        if every is not None:
            options["every"] = every
        self.config = config = RecorderConfig.build(config, **options)
        self.path = _check_path(path)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Expected an nn.Module to record, but got {type(model).__name__}.")
        self.dtype, self.on_full = config.dtype, config.on_full
        self._init_state()
        self.active = _is_writing_rank()
        if not self.active:  # DDP rank != 0: a no-op recorder
            self.writer, self._pipeline = None, None
            return
        self._init_model(model)
        self._pipeline: Pipeline | None = None
        self._refusal = self._init_refusal()
        if self._refusal is None:  # else opened by load_state_dict, or never
            self._open()

    def _init_refusal(self) -> StoreExistsError | None:
        """The refusal to append this model to the run already stored at the path, if it is
        not that run's continuation (modes "auto" and "resume"; see :mod:`.opening`)."""
        if self.config.mode not in ("auto", "resume"):
            return None
        run = existing_run(self.path)
        if run is None or run.attrs.get("version") != FORMAT_VERSION:
            return None  # nothing to continue, or a format the writer refuses in its words
        # another model's store, or one being written: the writer's own errors, said first
        check_compatible(run.attrs, self._parameters, self.architecture, self.path)
        lock = WriterLock(self.path)
        lock.acquire(run.attrs)
        lock.release()
        if run.continued_by(self._names, self._tensors, DTYPES[self.config.dtype]) is not False:
            return None
        return refusal(run, self.config.mode)

    def _open(self) -> None:
        """Open the store and start the pipeline."""
        config = self.config
        self._init_store()
        self._pipeline = Pipeline(
            self.writer,
            self._layout,
            path=self.path,
            queue_size=self.queue_size,
            on_full=config.on_full,
            inline=self.writes == "inline",
            flush_every_s=config.flush_every_s,
            report=config.report,
            architecture=self.architecture,
        )
        lifetime.register(self, self._pipeline)

    def _init_state(self) -> None:
        """The training thread's position and its once-only warnings."""
        self._schedule = self.config.make_schedule()
        self._step = 0
        self._last_captured: int | None = None
        self._initial_done = False
        self._closed = False
        self._closing = False
        self._hooks: list[Any] = []
        self._pending_metrics: dict[str, Any] = {}
        self._slot: MetricsSlot | None = None
        self._log_warned = False
        self._drift_error: ConfigError | None = None
        self._drift_raised = False
        self._refusal: StoreExistsError | None = None
        # a forgotten attach(optimizer): log() calls with no step or capture between them
        self._logs_since_step = 0
        self._logs = 0
        self._steps_counted = 0
        self._no_step_warned = False

    def _init_model(self, model: nn.Module) -> None:
        """What is recorded: the tensors, their capture layout, the architecture, the probes
        (checked before the store is touched)."""
        config = self.config
        module = unwrap_model(model)
        named = recorded_tensors(module, config.buffers)
        if not named:
            raise ConfigError(
                f"Expected a model with parameters, but {type(module).__name__} has none."
            )
        meta = [n for n, t in named if t.is_meta]
        if meta:
            raise ConfigError(
                f"Expected a model whose tensors hold data, but {meta[:3]}"
                f"{' ...' if len(meta) > 3 else ''} are on the meta device (shapes only). "
                f"Materialise the model first (model.to_empty(device='cpu') and initialise it, "
                f"or load_state_dict(..., assign=True)), then create the recorder."
            )
        self._names = [n for n, _ in named]
        self._tensors = [t for _, t in named]
        self._layout = CaptureLayout(self._names, self._tensors, config.dtype)
        config.check_sizes(self._layout.nbytes)
        self._watch = ModelWatch(module, self._names, self._tensors, config.buffers)
        if config.architecture is not None:
            self.architecture = check_recorded_architecture(
                config.architecture, dict(zip(self._names, self._layout.shapes, strict=True))
            )
        else:
            self.architecture = _infer_architecture(module)
        self._probes = (
            None if config.probes is None else _check_probes(config.probes, self.architecture)
        )
        self.queue_size = config.queue_size or default_queue_size(self._layout.nbytes)
        self._parameters = [
            {"name": n, "shape": list(s), "dtype": d}
            for n, s, d in zip(
                self._names, self._layout.shapes, self._layout.logical_dtypes, strict=True
            )
        ]

    def _init_store(self) -> None:
        """Open the store writer and decide how this session's snapshots are written."""
        config = self.config
        self.writer = None  # set once opened (a failed open must leave the attribute there)
        compression = resolve_compression(config.compression, self.path)
        self.writer = open_writer(
            self.path,
            config.mode,
            self._parameters,
            architecture=self.architecture,
            config=config.describe(compression),
            snapshots_per_chunk=config.snapshots_per_chunk,
            flush_every_s=config.flush_every_s,
            fsync=config.fsync,
            compression=compression,
        )
        if self._probes is not None:
            self.writer.write_probes(self._probes)
        self.writes = _resolve_writes(config.writes, self.writer.io_path, self._layout.pinned)
        short = short_flush_warning(config.flush_every_s, self.writer.io_path or "zarr")
        if short is not None:
            warnings.warn(short, HyperlapseWarning, stacklevel=3)
        if self.writer.committed:  # resuming: continue after the last stored step
            self._initial_done = True
            self._step = self._last_captured = self.writer.last_step

    # -- training-thread API -------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Capture the initial state now and a snapshot after every scheduled optimizer step.

        Returns:
            The hook handle of ``optimizer.register_step_post_hook`` (``handle.remove()``
            detaches; :meth:`close` also removes it).
        """
        self._check_open()
        handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.step())
        self._hooks.append(handle)
        if self.active and not self._initial_done:
            self.capture()
        return handle

    def step(self) -> bool:
        """Count one optimizer step and capture if the schedule says so (what the hook calls).

        Returns:
            Whether a snapshot was captured.
        """
        if not self.active or self._closed:
            return False
        self._check_open()
        self._pipeline.raise_pending()
        if not self._initial_done:
            self.capture()
        self._step += 1
        self._steps_counted += 1
        self._logs_since_step = 0
        if self._schedule(self._step):
            return self.capture()
        return False

    def log(self, **scalars: Any) -> None:
        """Store scalars with the snapshot of the current step (if one was captured at this step
        and is not yet committed) or else with the next snapshot.

        Tensors are accepted as they are; they are converted to float on the writer thread, so
        ``loss.detach()`` costs no device sync here. A value that cannot become a float (a
        string, ``None``, a tensor of several elements) is stored as NaN, with a warning the
        first time.
        """
        if not self.active or self._closed:
            return
        self._check_open()
        self._pipeline.raise_pending()
        # clone: the caller may change the tensor in place before the writer reads it
        values = {
            k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
            for k, v in scalars.items()
        }
        if not self._log_warned:
            bad = {k: v for k, v in values.items() if not _is_scalar(v)}
            if bad:
                self._log_warned = True
                desc = ", ".join(f"{k}={_describe(v)}" for k, v in bad.items())
                warnings.warn(
                    f"Expected log() values to be numbers or one-element tensors, but got {desc}. "
                    f"They are stored as NaN; log a float (e.g. len(x), loss.detach()). This "
                    f"warning is shown once.",
                    HyperlapseWarning,
                    stacklevel=2,
                )
        self._logs += 1
        self._logs_since_step += 1
        if self._logs_since_step == _LOGS_WITHOUT_STEP and not self._no_step_warned:
            self._no_step_warned = True
            warnings.warn(
                f"log() was called {_LOGS_WITHOUT_STEP} times with no optimizer step counted and "
                f"no snapshot captured in between (recorder of '{self.path}', step "
                f"{self._step}). Did you forget rec.attach(optimizer)? Without it (or "
                f"rec.step() after each optimizer step) only the initial and final states are "
                f"recorded, and each log() replaces the last value. This warning is shown once.",
                HyperlapseWarning,
                stacklevel=2,
            )
        slot = self._slot
        if slot is not None and slot.step == self._step and slot.add(values):
            return
        self._pending_metrics.update(values)

    def capture(self, step: int | None = None, *, _force: bool = False) -> bool:
        """Capture a snapshot now (manual capture; also the initial and final snapshots).

        Args:
            step: the step to store (default: the optimizer steps counted so far). A step
                greater than the last captured one also moves the counter there.

        Returns:
            Whether a snapshot was queued (False for a step not after the last captured one,
            or a drop).

        Raises:
            WriterError: the writer (or store) failed; raised at every later capture too.
            ConfigError: the model's parameters changed after the recorder was created.
        """
        if not self.active:
            return False
        if self._closed:
            raise WriterError(
                f"Expected an open recorder, but the recorder of '{self.path}' is closed. "
                f"Create a new TrajectoryRecorder on the same path to resume."
            )
        self._check_open()
        pipeline = self._pipeline
        pipeline.raise_pending(always=True)
        t0 = time.perf_counter()
        at = self._step if step is None else int(step)
        self._initial_done = True
        if self._last_captured is not None and at <= self._last_captured:
            return False  # steps in a store strictly increase
        self._check_model()
        self._step = at
        buf = pipeline.admit(force=_force)
        if buf is None:  # dropped (on_full="drop"), counted
            return False
        self._layout.copy_into(buf, self._tensors)
        slot = MetricsSlot(self._step, self._pending_metrics)
        self._pending_metrics = {}
        self._slot = slot
        pipeline.submit(buf, self._step, slot)
        self._logs_since_step = 0
        self._last_captured = self._step
        pipeline.count_capture_time(time.perf_counter() - t0)
        return True

    def _check_open(self) -> None:
        """Raise the refusal to append to the stored run (until load_state_dict resumes it)."""
        if self._refusal is not None:
            raise self._refusal

    def _check_model(self) -> None:
        if self._drift_error is not None:
            self._drift_raised = True
            raise self._drift_error
        try:
            replaced = self._watch.check()
        except ConfigError as exc:
            self._drift_error = exc
            self._drift_raised = True
            raise
        if replaced:
            warnings.warn(
                f"The model's tensors {replaced} were replaced by new objects after the recorder "
                f"of '{self.path}' was created (same names and shapes); the recorder now "
                f"captures the new ones.",
                HyperlapseWarning,
                stacklevel=4,
            )

    def flush(self) -> None:
        """Commit every snapshot captured so far (waits until the writer has written them).

        Raises:
            WriterError: the writer failed (now or before).
        """
        if not self.active or self._closed:
            return
        self._check_open()
        self._pipeline.raise_pending(always=True)
        self._pipeline.request("flush")
        self._pipeline.raise_pending(always=True)

    def _flush_for_signal(self, wait_s: float) -> None:
        pipeline = self._pipeline
        if not self.active or self._closed or self._closing or pipeline.error is not None:
            return
        pipeline.request("flush", wait_s=wait_s)

    def close(self) -> None:
        """Capture the final state, write and commit everything, stop the threads.

        Safe to call twice. Raises WriterError if the writer failed (unless a capture already
        raised it), ConfigError if the model's parameters changed and no capture said so yet.
        A failed report listener is only warned about: it never costs recorded snapshots.
        """
        self._shutdown(final=True)

    def _shutdown(self, final: bool, wait_s: float | None = None) -> None:
        if self._closed:
            return
        if not self.active or self._pipeline is None:  # a no-op rank, or refused: nothing open
            self._closed = True
            return
        pipeline = self._pipeline
        if self._closing:  # re-entered (SIGTERM during close): let the writer finish
            pipeline.close(wait_s)
            return
        self._closing = True
        drift: ConfigError | None = None
        drift_said = self._drift_raised
        try:
            if (
                final
                and pipeline.error is None
                and (not self._initial_done or self._last_captured != self._step)
            ):
                try:
                    self.capture(_force=True)
                except ConfigError as exc:  # a changed model: close what was recorded
                    drift = exc
        finally:
            self._closed = True
            for handle in self._hooks:
                handle.remove()
            lifetime.unregister(self)
            pipeline.close(wait_s)
        pipeline.raise_pending(closing=True)
        self._warn_if_only_ends()
        if drift is not None and not drift_said:
            raise drift

    def _warn_if_only_ends(self) -> None:
        """At close: this session stored only its initial/final state although log() was
        called many times and no optimizer step was ever counted (a forgotten attach)."""
        captured = self._pipeline.captures if self._pipeline is not None else 0
        if self._steps_counted or captured > 2 or self._logs < _LOGS_WITHOUT_STEP:
            return
        warnings.warn(
            f"The store at '{self.path}' holds only {captured} snapshot(s) of this session (the "
            f"initial/final state) although log() was called {self._logs} times: no optimizer "
            f"step was counted, so the logged values of all but the last snapshot were "
            f"replaced. Call rec.attach(optimizer) once before training (or rec.step() after "
            f"each optimizer step).",
            HyperlapseWarning,
            stacklevel=4,
        )

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The recorder's position, to save beside the model and optimizer checkpoints."""
        return {
            "version": _STATE_VERSION,
            "step": self._step,
            "last_captured": self._last_captured,
            "initial_done": self._initial_done,
            "pending_metrics": {k: to_float(v) for k, v in self._pending_metrics.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a checkpointed run: restore the step counter and drop stored snapshots
        taken after the checkpoint's step (the resumed run will replay those steps).

        Raises:
            ConfigError: ``state`` is not a recorder state dict.
        """
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            raise ConfigError(
                f"Expected a state dict from TrajectoryRecorder.state_dict() (version "
                f"{_STATE_VERSION}), but got {type(state).__name__} with version "
                f"{getattr(state, 'get', lambda k: None)('version')!r}."
            )
        if not self.active:
            self._step = int(state["step"])
            return
        if self._closed:
            raise WriterError(f"Expected an open recorder, but the recorder of '{self.path}' "
                              f"is closed. Create a new TrajectoryRecorder to resume.")
        if self._refusal is not None:  # resuming a checkpoint is the decision to continue
            self._refusal = None
            self._open()
        pipeline = self._pipeline
        pipeline.raise_pending(always=True)
        result = pipeline.request("truncate", int(state["step"]))
        if not result["done"]:
            pipeline.raise_pending(always=True, dead=True)
        pipeline.raise_pending(always=True)
        self._step = int(state["step"])
        # the store is the truth: its last step after cutting back to the checkpoint
        self._last_captured = result.get("last_step")
        self._initial_done = bool(state.get("initial_done", True))
        self._pending_metrics = dict(state.get("pending_metrics", {}))
        self._slot = None

    # -- introspection -----------------------------------------------------------------------
    @property
    def refused(self) -> bool:
        """Whether the store at the path holds a run this model does not continue (``mode``
        "auto"/"resume"): captures raise StoreExistsError until :meth:`load_state_dict`."""
        return self._refusal is not None

    @property
    def current_step(self) -> int:
        """Optimizer steps counted so far."""
        return self._step

    @property
    def stats(self) -> dict[str, float]:
        """Counters: captures, dropped, seconds the training thread spent capturing."""
        p = self._pipeline
        if p is None:
            return {"captures": 0, "dropped": 0, "blocked_s": 0.0, "blocked_s_per_capture": 0.0,
                    "report_dropped": 0, "report_delivered": 0, "report_detached": False}
        return {
            "captures": p.captures,
            "dropped": p.dropped,
            "blocked_s": p.blocked_s,
            "blocked_s_per_capture": p.blocked_s / max(p.captures, 1),
            "report_dropped": p.report_dropped,
            "report_delivered": p.report_delivered,
            "report_detached": p.report_failure is not None,
        }

    def overhead(self) -> dict[str, float | int]:
        """What recording has cost so far (callable at any time, from any thread).

        Returns:
            ``snapshots`` (captured), ``snapshots_dropped`` (``on_full="drop"``, or the
            backlog at its bound), ``training_blocked_s`` (seconds the training thread spent
            in captures: the copy, with ``writes="inline"`` the write of the snapshot's bytes,
            and any wait for the writer included), ``capture_mean_s`` and ``capture_max_s``
            (training-thread seconds per snapshot), ``writer_cpu_s`` (CPU seconds of the
            writer thread: checks, compression, file writes), ``report_cpu_s`` (CPU seconds
            of the report thread), ``bytes_written`` (bytes of snapshots handed to the store,
            before compression), ``bytes_per_snapshot``, ``elapsed_s`` (wall seconds since
            the recorder was created) and ``training_blocked_fraction`` (blocked / elapsed).
        """
        if self._pipeline is None:
            return {"snapshots": 0, "snapshots_dropped": 0, "training_blocked_s": 0.0,
                    "capture_mean_s": 0.0, "capture_max_s": 0.0, "writer_cpu_s": 0.0,
                    "report_cpu_s": 0.0, "bytes_written": 0, "bytes_per_snapshot": 0,
                    "elapsed_s": 0.0, "training_blocked_fraction": 0.0}
        return self._pipeline.overhead()


def _check_path(path: Any) -> str:
    """The store path as a str; a clear error for anything else (a ``bytes`` path included)."""
    if isinstance(path, (bytes, bytearray)) or not isinstance(path, (str, os.PathLike)):
        raise ConfigError(
            f"Expected the store path to be a str or os.PathLike (a local *.zarr path or a "
            f"URL), but got {type(path).__name__} {path!r}. Decode a bytes path first, e.g. "
            f"os.fsdecode(path)."
        )
    text = os.fspath(path)
    if not isinstance(text, str):  # a PathLike whose __fspath__ returns bytes
        raise ConfigError(
            f"Expected the store path to be a str path, but {type(path).__name__} gives "
            f"{type(text).__name__}. Pass os.fsdecode(path)."
        )
    return text


def _is_scalar(value: Any) -> bool:
    """Whether ``value`` becomes a float without a device sync here (tensors: by shape)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    if isinstance(value, numbers.Real):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _infer_architecture(module: nn.Module) -> dict[str, Any] | None:
    """``describe_mlp(module)``, or None with a warning when it is not an MLP."""
    try:
        return describe_mlp(module)
    except ArchitectureError as exc:
        warnings.warn(
            f"Recording {type(module).__name__}, which is not an MLP hyperlapse can turn into "
            f"a parameter graph ({exc}). All parameters are recorded; graph analysis will not "
            f"apply to this store. Pass architecture= to describe the parameters yourself.",
            HyperlapseWarning,
            stacklevel=3,
        )
        return None


def _check_probes(probes: Any, architecture: dict[str, Any] | None) -> Any:
    """Probe inputs as a float32 array ``[B, n_0]``; a clear error for anything else (raised
    before the store is touched)."""
    import numpy as np

    try:
        data = (probes.detach().cpu().to(torch.float32).numpy() if isinstance(probes, torch.Tensor)
                else np.asarray(probes, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"Expected probes to be a tensor or array of inputs [B, n_0], but got "
            f"{type(probes).__name__} ({exc})."
        ) from None
    mlp = (architecture or {}).get("member", architecture)  # a population: one run's MLP
    width = None if mlp is None else int(mlp["widths"][0])
    if data.ndim != 2 or data.shape[0] == 0 or (width is not None and data.shape[1] != width):
        raise ConfigError(
            f"Expected probes of shape [B, {width if width is not None else 'n_0'}] (B >= 1 "
            f"inputs of the model), but got {tuple(data.shape)}. Flatten each input to the "
            f"model's input width, e.g. x_val[:128].flatten(1)."
        )
    return data


def _resolve_writes(writes: str, io_path: str | None, pinned: bool) -> str:
    """"inline" or "background": see the recorder's ``writes`` argument."""
    if io_path != "buffered" or pinned or writes == "background":
        return "background"
    if writes == "inline":
        return "inline"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return "inline" if torch.get_num_threads() >= cores else "background"


def _is_writing_rank() -> bool:
    """Only global rank 0 writes when torch.distributed is initialised."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)
