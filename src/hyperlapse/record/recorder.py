"""TrajectoryRecorder: snapshots of a model's parameters during training, written in the
background to a crash-safe Zarr store.

Threads:

* training thread: :meth:`TrajectoryRecorder.capture` copies all parameters into a free buffer
  of a small pool and puts it on a bounded queue. Nothing else.
* writer thread: waits for the copy (CUDA event), buffers the snapshot in the
  :class:`~hyperlapse.store.writer.StoreWriter`, writes and commits whole shards, flushes at least
  every ``flush_every_s`` seconds, returns the buffer to the pool.
* report thread (only with ``report=``): calls ``report.on_snapshot`` from its own small queue,
  which drops (and counts) when the listener falls behind, so a slow report never blocks training.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..arch import describe_mlp, unwrap_model
from ..errors import ArchitectureError, ConfigError, HyperlapseWarning, WriterError
from ..store.writer import StoreWriter
from .capture import DTYPES, CaptureBuffer, CaptureLayout
from .schedule import make_schedule

__all__ = ["TrajectoryRecorder"]

_STATE_VERSION = 1
_REPORT_QUEUE = 4
_POOL_BYTES = 64 * 2**20  # host memory for capture buffers when queue_size is not given
_CLOSE = object()


class _MetricsSlot:
    """Scalars of one snapshot. ``log()`` may add to it until the writer seals it at flush."""

    __slots__ = ("step", "values", "sealed", "lock")

    def __init__(self, step: int, values: dict[str, Any]) -> None:
        self.step, self.values, self.sealed = step, values, False
        self.lock = threading.Lock()

    def add(self, values: Mapping[str, Any]) -> bool:
        with self.lock:
            if self.sealed:
                return False
            self.values.update(values)
            return True

    def seal(self) -> dict[str, float]:
        with self.lock:
            self.sealed = True
            return {k: _to_float(v) for k, v in self.values.items()}


class _Item:
    __slots__ = ("buf", "step", "wall_time", "metrics")

    def __init__(self, buf: CaptureBuffer, step: int, wall_time: float, metrics: _MetricsSlot):
        self.buf, self.step, self.wall_time, self.metrics = buf, step, wall_time, metrics


def check_dtype_and_on_full(dtype: str | torch.dtype, on_full: str) -> str:
    """Validate the ``dtype`` and ``on_full`` options (shared with the trainer adapters).

    Returns:
        The dtype's name (``"float32"``, ``"float16"`` or ``"bfloat16"``).

    Raises:
        ConfigError: saying what is accepted.
    """
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    if dtype not in DTYPES:
        raise ConfigError(
            f"Expected dtype to be one of {sorted(DTYPES)}, but got {dtype!r}. float32 "
            f"keeps weights bit-exact; float16/bfloat16 halve the store."
        )
    if on_full not in ("block", "drop"):
        raise ConfigError(
            f"Expected on_full to be 'block' (wait, lose nothing) or 'drop' (skip and "
            f"count), but got {on_full!r}."
        )
    return dtype


class TrajectoryRecorder:
    """Record a model's parameters during training into a Zarr trajectory store.

    Args:
        path: local path of the store (``*.zarr``; missing parents are created) or a URL any
            fsspec backend understands (``memory://``, ``s3://``, ...). An existing hyperlapse
            store of the same model is resumed (appended to).
        model: any ``nn.Module``; ``torch.compile`` and DDP/DataParallel wrappers are unwrapped.
        every: capture every ``every`` optimizer steps.
        schedule: instead of ``every``: ``"log"`` (log-spaced, dense early), an int, or a
            ``callable(step) -> bool``. Neither given: every step.
        dtype: stored dtype of floating tensors: "float32" (bit-exact), "float16", "bfloat16".
        on_full: when all capture buffers are in flight: "block" (nothing lost) or "drop"
            (the snapshot is skipped and counted in attrs ``dropped``).
        buffers: also record the module's buffers (e.g. BatchNorm running stats).
        flush_every_s: commit pending snapshots at least this often (seconds); a SIGKILL loses
            at most this interval. ``None``: commit whole shards only.
        snapshots_per_chunk: snapshots per shard file (default: ~64 MB per shard, 16..1024).
        queue_size: capture buffers in flight between training and writer thread (default:
            enough for ~64 MB, 4..64), so training rarely waits while the writer flushes a shard.
        report: optional listener with ``on_snapshot(index, step, state, metrics)`` and
            ``close()``, and optionally ``on_start(architecture)``, called once with the MLP
            description before the first snapshot (see docs/recording.md).

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
        schedule: Any = None,
        dtype: str = "float32",
        on_full: str = "block",
        buffers: bool = False,
        flush_every_s: float | None = 2.0,
        snapshots_per_chunk: int | None = None,
        queue_size: int | None = None,
        report: Any = None,
    ) -> None:
        self._schedule = make_schedule(every, schedule)
        dtype = check_dtype_and_on_full(dtype, on_full)
        if flush_every_s is not None and not (
            isinstance(flush_every_s, (int, float)) and flush_every_s > 0
        ):
            raise ConfigError(
                f"Expected flush_every_s to be a positive number of seconds or None, but got "
                f"{flush_every_s!r}."
            )
        for name, value in (
            ("snapshots_per_chunk", snapshots_per_chunk),
            ("queue_size", queue_size),
        ):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value <= 0
            ):
                raise ConfigError(f"Expected {name} to be a positive int, but got {value!r}.")
        if report is not None and not (
            callable(getattr(report, "on_snapshot", None))
            and callable(getattr(report, "close", None))
        ):
            raise ConfigError(
                f"Expected report to have on_snapshot(index, step, state, metrics) and close() "
                f"methods, but got {type(report).__name__}."
            )
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Expected an nn.Module to record, but got {type(model).__name__}.")

        self.path = os.fspath(path)
        self.on_full = on_full
        self.dtype = dtype
        self._step = 0
        self._last_captured: int | None = None
        self._initial_done = False
        self._closed = False
        self._hooks: list[Any] = []
        self._pending_metrics: dict[str, Any] = {}
        self._slot: _MetricsSlot | None = None
        self._error: BaseException | None = None
        self._error_raised = False
        self._nonfinite_warned = False
        self._captures = 0
        self._dropped = 0
        self._blocked_s = 0.0
        self._report = report

        self.active = _is_writing_rank()
        if not self.active:  # DDP rank != 0: a no-op recorder
            self.writer = None
            return

        module = unwrap_model(model)
        named = [(n, p) for n, p in module.named_parameters()]
        if buffers:
            named += [(n, b) for n, b in module.named_buffers() if b is not None]
        if not named:
            raise ConfigError(
                f"Expected a model with parameters, but {type(module).__name__} has none."
            )
        self._names = [n for n, _ in named]
        self._tensors = [t for _, t in named]
        self._layout = CaptureLayout(self._names, self._tensors, dtype)
        try:
            architecture = describe_mlp(module)
        except ArchitectureError as exc:
            architecture = None
            warnings.warn(
                f"Recording {type(module).__name__}, which is not an MLP hyperlapse can turn into "
                f"a parameter graph ({exc}). All parameters are recorded; graph analysis will not "
                f"apply to this store.",
                HyperlapseWarning,
                stacklevel=2,
            )
        config = {
            "schedule": self._schedule.describe(),
            "dtype": dtype,
            "on_full": on_full,
            "buffers": bool(buffers),
            "flush_every_s": flush_every_s,
            "queue_size": queue_size,
        }
        parameters = [
            {"name": n, "shape": list(s), "dtype": d}
            for n, s, d in zip(
                self._names, self._layout.shapes, self._layout.logical_dtypes, strict=True
            )
        ]
        self.writer = StoreWriter(
            path,
            parameters,
            architecture=architecture,
            config=config,
            snapshots_per_chunk=snapshots_per_chunk,
            flush_every_s=flush_every_s,
        )
        self.architecture = architecture
        if self.writer.committed:  # resuming: continue after the last stored step
            self._initial_done = True
            self._step = self._last_captured = self.writer.last_step

        if queue_size is None:
            queue_size = min(max(_POOL_BYTES // max(self._layout.nbytes, 1), 4), 64)
        self.queue_size = queue_size
        self._free: queue.Queue[CaptureBuffer] = queue.Queue()
        for _ in range(queue_size):
            self._free.put(self._layout.new_buffer())
        self._work: queue.Queue[Any] = queue.Queue()
        self._report_q: queue.Queue[Any] | None = None
        self._report_thread: threading.Thread | None = None
        if report is not None:
            self._report_q = queue.Queue(maxsize=_REPORT_QUEUE)
            self._report_thread = threading.Thread(
                target=self._report_loop, name="hyperlapse-report", daemon=True
            )
            self._report_thread.start()
        self._writer_thread = threading.Thread(
            target=self._writer_loop, name="hyperlapse-writer", daemon=True
        )
        self._writer_thread.start()
        _OPEN.add(self)

    # -- training-thread API -------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Capture the initial state now and a snapshot after every scheduled optimizer step.

        Returns:
            The hook handle of ``optimizer.register_step_post_hook`` (``handle.remove()``
            detaches; :meth:`close` also removes it).
        """
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
        self._raise_pending()
        if not self._initial_done:
            self.capture()
        self._step += 1
        if self._schedule(self._step):
            return self.capture()
        return False

    def log(self, **scalars: Any) -> None:
        """Store scalars with the snapshot of the current step (if one was captured at this step
        and is not yet committed) or else with the next snapshot.

        Tensors are accepted as they are; they are converted to float on the writer thread, so
        ``loss.detach()`` costs no device sync here.
        """
        if not self.active or self._closed:
            return
        self._raise_pending()
        # clone: the caller may change the tensor in place before the writer reads it
        values = {
            k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
            for k, v in scalars.items()
        }
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
        """
        if not self.active:
            return False
        if self._closed:
            raise WriterError(
                f"Expected an open recorder, but the recorder of '{self.path}' is closed. "
                f"Create a new TrajectoryRecorder on the same path to resume."
            )
        self._raise_pending()
        t0 = time.perf_counter()
        at = self._step if step is None else int(step)
        self._initial_done = True
        if self._last_captured is not None and at <= self._last_captured:
            return False  # steps in a store strictly increase
        self._step = at
        if self.on_full == "drop" and not _force:
            try:
                buf = self._free.get_nowait()
            except queue.Empty:
                self._dropped += 1
                return False
        else:
            buf = self._free.get()
        self._layout.copy_into(buf, self._tensors)
        slot = _MetricsSlot(self._step, self._pending_metrics)
        self._pending_metrics = {}
        self._slot = slot
        self._work.put(_Item(buf, self._step, time.time(), slot))
        self._last_captured = self._step
        self._captures += 1
        self._blocked_s += time.perf_counter() - t0
        return True

    def close(self) -> None:
        """Capture the final state, write and commit everything, stop the threads.

        Safe to call twice. Raises WriterError if the writer or the report failed.
        """
        if self._closed:
            return
        if not self.active:
            self._closed = True
            return
        try:
            if self._error is None and (
                not self._initial_done or self._last_captured != self._step
            ):
                self.capture(_force=True)
        finally:
            self._closed = True
            for handle in self._hooks:
                handle.remove()
            self._work.put(_CLOSE)
            self._writer_thread.join()
            if self._report_thread is not None:
                self._report_q.put(_CLOSE)  # type: ignore[union-attr]
                self._report_thread.join()
            _OPEN.discard(self)
        if self._report is not None:
            try:
                self._report.close()
            except Exception as exc:  # noqa: BLE001 - re-raised with context below
                self._set_error(exc)
        self._raise_pending(closing=True)

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
            "pending_metrics": {k: _to_float(v) for k, v in self._pending_metrics.items()},
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
        self._raise_pending()
        done = threading.Event()
        result: dict[str, Any] = {}
        self._work.put(("truncate", int(state["step"]), done, result))
        done.wait()
        self._raise_pending()
        self._step = int(state["step"])
        # the store is the truth: its last step after cutting back to the checkpoint
        self._last_captured = result.get("last_step")
        self._initial_done = bool(state.get("initial_done", True))
        self._pending_metrics = dict(state.get("pending_metrics", {}))
        self._slot = None

    # -- introspection -----------------------------------------------------------------------
    @property
    def current_step(self) -> int:
        """Optimizer steps counted so far."""
        return self._step

    @property
    def stats(self) -> dict[str, float]:
        """Counters: captures, dropped, seconds the training thread spent capturing."""
        return {
            "captures": self._captures,
            "dropped": self._dropped,
            "blocked_s": self._blocked_s,
            "blocked_s_per_capture": self._blocked_s / max(self._captures, 1),
            "report_dropped": self.writer.report_dropped if self.writer else 0,
        }

    # -- writer thread -----------------------------------------------------------------------
    def _writer_loop(self) -> None:
        _lower_thread_priority(_WRITER_NICENESS)
        writer = self.writer
        assert writer is not None
        self._last_report: tuple[int, int, dict[str, torch.Tensor], _MetricsSlot] | None = None
        while True:
            due = writer.flush_due()
            if due is not None and due <= 0:
                self._guarded(self._flush)
                continue
            try:
                item = self._work.get(timeout=due)
            except queue.Empty:
                continue
            if item is _CLOSE:
                self._guarded(self._flush, True)
                return
            if isinstance(item, tuple):  # ("truncate", step, done, result)
                _, step, done, result = item
                self._guarded(writer.truncate_after_step, step)
                result["last_step"] = writer.last_step
                done.set()
                continue
            self._guarded(self._write, item)
            self._free.put(item.buf)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` unless the writer already failed; keep its exception for the trainer."""
        if self._error is not None:
            return None
        try:
            return fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._set_error(exc)
            return None

    def _write(self, item: _Item) -> None:
        writer = self.writer
        assert writer is not None
        item.buf.wait()
        index = writer.committed + writer.pending
        report_state = self._layout.to_tensors(item.buf) if self._report is not None else None
        writer.dropped = self._dropped
        if writer.append(
            self._layout.to_numpy(item.buf), item.step, item.wall_time, item.metrics.seal
        ):
            self._nonfinite_seen = True
        if self._last_report is not None:  # the previous snapshot's metrics are final now
            self._emit_report(*self._last_report)
        self._last_report = None
        if report_state is not None:
            self._last_report = (index, item.step, report_state, item.metrics)

    def _flush(self, close: bool = False) -> None:
        writer = self.writer
        assert writer is not None
        if self._last_report is not None:  # before the commit, so its drop count is stored
            self._emit_report(*self._last_report)
            self._last_report = None
        writer.dropped = self._dropped
        writer.close() if close else writer.flush()

    def _emit_report(
        self, index: int, step: int, state: dict[str, torch.Tensor], slot: _MetricsSlot
    ) -> None:
        if self._report_q is None:
            return
        try:
            self._report_q.put_nowait((index, step, state, slot.seal()))
        except queue.Full:
            assert self.writer is not None
            self.writer.report_dropped += 1

    def _report_loop(self) -> None:
        _lower_thread_priority(_WRITER_NICENESS)
        assert self._report_q is not None
        on_start = getattr(self._report, "on_start", None)
        if callable(on_start) and self.architecture is not None:
            try:
                on_start(self.architecture)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                self._set_error(exc)
        while True:
            item = self._report_q.get()
            if item is _CLOSE:
                return
            if self._error is not None:
                continue
            try:
                self._report.on_snapshot(*item)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                self._set_error(exc)

    # -- errors ------------------------------------------------------------------------------
    _nonfinite_seen = False

    def _set_error(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def _raise_pending(self, closing: bool = False) -> None:
        self._warn_nonfinite()
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            todo = "see" if closing else "close() the recorder and see"
            raise WriterError(
                f"Recording to '{self.path}' failed in the background "
                f"({type(self._error).__name__}: {self._error}). Snapshots committed before the "
                f"failure are intact; {todo} the cause below."
            ) from self._error

    def _warn_nonfinite(self) -> None:
        if self._nonfinite_seen and not self._nonfinite_warned:
            self._nonfinite_warned = True
            warnings.warn(
                f"The model being recorded to '{self.path}' holds NaN or infinite values. They "
                f"are recorded as they are and counted in the store's attrs 'nonfinite'; "
                f"training has probably diverged (lower the learning rate or clip gradients).",
                HyperlapseWarning,
                stacklevel=3,
            )


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return math.nan


def _is_writing_rank() -> bool:
    """Only global rank 0 writes when torch.distributed is initialised."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


_OPEN: weakref.WeakSet[TrajectoryRecorder] = weakref.WeakSet()


def _close_open_recorders() -> None:
    """Close recorders the program left open: interpreter exit loses nothing."""
    for recorder in list(_OPEN):
        try:
            recorder.close()
        except WriterError as exc:  # nothing to raise to at exit: say it
            warnings.warn(str(exc), HyperlapseWarning, stacklevel=1)


# Zarr writes through concurrent.futures executors, which refuse work once their own exit hook
# has run. threading's exit hooks run before atexit's, in reverse order of registration, so a
# hook registered here (after zarr imported concurrent.futures) runs while they still work.
_register = getattr(threading, "_register_atexit", atexit.register)
_register(_close_open_recorders)


# Background threads run at a lower scheduling priority than training: on a machine whose
# cores are all busy with the training threads, compression then fills idle time instead of
# preempting training (measured in benchmarks/recording_overhead.py). Linux only; elsewhere
# (or if refused) the threads keep the default priority.
_WRITER_NICENESS = int(os.environ.get("HYPERLAPSE_WRITER_NICENESS", "10"))


def _lower_thread_priority(niceness: int) -> None:
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except (OSError, AttributeError):
        pass
