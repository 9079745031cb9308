"""TrajectoryRecorder: snapshots of a model's parameters during training, written in the
background to a crash-safe Zarr store.

Threads:

* training thread: :meth:`TrajectoryRecorder.capture` copies all parameters into a free buffer
  of a small pool and puts it on a bounded queue. With ``writes="inline"`` it also writes the
  snapshot's bytes into their slot of the shard file (fill-in-place stores) and puts only the
  step, time and metrics on the queue.
* writer thread: waits for the copy (CUDA event), writes (background writes) or just counts
  (inline writes) the snapshot in the
  :class:`~hyperlapse.store.writer.StoreWriter`, writes and commits whole shards, flushes at least
  every ``flush_every_s`` seconds, returns the buffer to the pool.
* report thread (only with ``report=``): calls ``report.on_snapshot`` from its own small queue,
  which drops (and counts) when the listener falls behind, so a slow report never blocks training.
"""

from __future__ import annotations

import atexit
import collections
import math
import numbers
import os
import queue
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..arch import check_recorded_architecture, describe_mlp, unwrap_model
from ..errors import ArchitectureError, ConfigError, HyperlapseWarning, WriterError
from ..store.format import resolve_compression
from ..store.writer import StoreWriter, short_flush_warning
from .capture import CaptureBuffer, CaptureLayout
from .config import RecorderConfig
from .watch import ModelWatch, recorded_tensors

__all__ = ["TrajectoryRecorder"]

_STATE_VERSION = 1
_REPORT_QUEUE = 4
_POOL_BYTES = 64 * 2**20  # host memory for capture buffers when queue_size is not given
_CLOSE = object()
_DEAD = object()  # put on the buffer pool when the writer thread ends: wakes a waiting capture
_POLL_S = 0.1  # bounded waits on the training thread re-check that the writer is alive


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


class _BufferPool:
    """Free capture buffers, last returned first out: the buffer the writer just released is
    still in cache and its pages are mapped, and while the writer keeps up only one or two
    buffers of the pool are ever touched (a FIFO cycles through all of them: at a capture every
    10 steps each copy then went to a cold, first-touched buffer, ~10x a warm copy). Taking a
    buffer that is there never releases the GIL (``queue.Queue.get`` does)."""

    def __init__(self) -> None:
        self._stack: collections.deque[Any] = collections.deque()
        self._returned = threading.Event()

    def put(self, buf: Any) -> None:
        self._stack.append(buf)
        self._returned.set()

    def get_nowait(self) -> Any:
        try:
            return self._stack.pop()
        except IndexError:
            raise queue.Empty from None

    def get(self, timeout: float) -> Any:
        """A buffer, waiting up to ``timeout`` seconds (raises ``queue.Empty``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._stack.pop()
            except IndexError:
                pass
            self._returned.clear()
            try:  # a put between the pop and the clear
                return self._stack.pop()
            except IndexError:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or not self._returned.wait(left):
                return self.get_nowait()


class _Item:
    """One captured snapshot for the writer thread. ``finite`` is set when the training thread
    already wrote its bytes (inline writes); ``buf`` is then ``None`` unless a report needs it."""

    __slots__ = ("buf", "step", "wall_time", "metrics", "finite")

    def __init__(
        self,
        buf: CaptureBuffer | None,
        step: int,
        wall_time: float,
        metrics: _MetricsSlot,
        finite: bool | None = None,
    ):
        self.buf, self.step, self.wall_time, self.metrics = buf, step, wall_time, metrics
        self.finite = finite


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
        config = RecorderConfig.build(config, **options)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Expected an nn.Module to record, but got {type(model).__name__}.")
        self.config = config
        self._schedule = config.make_schedule()
        fmt_compression = resolve_compression(config.compression, path)
        dtype, on_full, buffers = config.dtype, config.on_full, config.buffers
        flush_every_s, snapshots_per_chunk = config.flush_every_s, config.snapshots_per_chunk
        queue_size, report, fsync = config.queue_size, config.report, config.fsync
        probes, architecture, writes = config.probes, config.architecture, config.writes

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
        self._closing = False
        self._error: BaseException | None = None
        self._error_raised = False
        self._nonfinite_warned = False
        self._log_warned = False
        self._drift_error: ConfigError | None = None
        self._drift_raised = False
        self._captures = 0
        self._dropped = 0
        self._blocked_s = 0.0
        self._capture_max_s = 0.0
        self._bytes_handed = 0
        self._writer_cpu_s = 0.0
        self._io_cpu_s = 0.0
        self._report_cpu_s = 0.0
        self._started = time.perf_counter()
        self._report = report
        self._report_failure: BaseException | None = None
        self._report_failure_warned = False
        self._report_delivered = 0

        self.active = _is_writing_rank()
        if not self.active:  # DDP rank != 0: a no-op recorder
            self.writer = None
            return

        module = unwrap_model(model)
        named = recorded_tensors(module, bool(buffers))
        if not named:
            raise ConfigError(
                f"Expected a model with parameters, but {type(module).__name__} has none."
            )
        self._names = [n for n, _ in named]
        self._tensors = [t for _, t in named]
        self._layout = CaptureLayout(self._names, self._tensors, dtype)
        config.check_sizes(self._layout.nbytes)
        self._watch = ModelWatch(module, self._names, self._tensors, bool(buffers))
        if architecture is not None:
            architecture = check_recorded_architecture(
                architecture, dict(zip(self._names, self._layout.shapes, strict=True))
            )
        else:
            architecture = _infer_architecture(module)
        parameters = [
            {"name": n, "shape": list(s), "dtype": d}
            for n, s, d in zip(
                self._names, self._layout.shapes, self._layout.logical_dtypes, strict=True
            )
        ]
        probe_data = None if probes is None else _check_probes(probes, architecture)
        self.writer = StoreWriter(
            path,
            parameters,
            architecture=architecture,
            config=config.describe(fmt_compression),
            snapshots_per_chunk=snapshots_per_chunk,
            flush_every_s=flush_every_s,
            fsync=fsync,
            compression=fmt_compression,
        )
        if probe_data is not None:
            self.writer.write_probes(probe_data)
        self.writes = _resolve_writes(writes, self.writer.io_path, self._layout.pinned)
        self._inline = self.writes == "inline"
        self.writer.writes = self.writes
        short = short_flush_warning(flush_every_s, self.writer.io_path or "zarr")
        if short is not None:
            warnings.warn(short, HyperlapseWarning, stacklevel=2)
        self.architecture = architecture
        self._first_index = self.writer.committed  # index of this session's first snapshot
        if self.writer.committed:  # resuming: continue after the last stored step
            self._initial_done = True
            self._step = self._last_captured = self.writer.last_step

        if queue_size is None:
            queue_size = min(max(_POOL_BYTES // max(self._layout.nbytes, 1), 4), 64)
        self.queue_size = queue_size
        self._free = _BufferPool()
        for _ in range(queue_size):
            self._free.put(self._layout.new_buffer())
        # SimpleQueue: its put() is reentrant, so the SIGTERM handler may use it
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
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
        _install_sigterm_handler()

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
        ``loss.detach()`` costs no device sync here. A value that cannot become a float (a
        string, ``None``, a tensor of several elements) is stored as NaN, with a warning the
        first time.
        """
        if not self.active or self._closed:
            return
        self._raise_pending()
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
        self._raise_pending(always=True)
        t0 = time.perf_counter()
        at = self._step if step is None else int(step)
        self._initial_done = True
        if self._last_captured is not None and at <= self._last_captured:
            return False  # steps in a store strictly increase
        self._check_model()
        self._step = at
        if self.on_full == "drop" and not _force:
            try:
                buf = self._free.get_nowait()
            except queue.Empty:
                self._dropped += 1
                return False
            if buf is _DEAD:
                self._free.put(_DEAD)
                self._raise_pending(always=True, dead=True)
        else:
            buf = self._take_buffer()
        self._layout.copy_into(buf, self._tensors)
        finite = None
        if self._inline:
            finite = self._write_inline(buf)
            if self._report is None:  # nobody else reads the copy: the buffer is free again
                self._free.put(buf)
                buf = None
        slot = _MetricsSlot(self._step, self._pending_metrics)
        self._pending_metrics = {}
        self._slot = slot
        self._work.put(_Item(buf, self._step, time.time(), slot, finite))
        self._last_captured = self._step
        self._captures += 1
        spent = time.perf_counter() - t0
        self._blocked_s += spent
        self._capture_max_s = max(self._capture_max_s, spent)
        return True

    def _write_inline(self, buf: CaptureBuffer) -> bool:
        """Write the snapshot's bytes into its slot on this (the training) thread; a failure
        ends the recording like a writer failure does (WriterError now and at every capture)."""
        assert self.writer is not None
        try:
            return self.writer.write_data(self._layout.to_numpy(buf))
        except BaseException as exc:  # noqa: BLE001 - raised below as WriterError
            self._free.put(buf)
            self._set_error(exc)
            self._raise_pending(always=True)
            raise

    def _take_buffer(self) -> CaptureBuffer:
        """A free capture buffer; waits while the writer is busy, raises once it is dead."""
        while True:
            try:
                buf = self._free.get(timeout=_POLL_S)
            except queue.Empty:
                if self._writer_thread.is_alive():
                    continue
                buf = _DEAD
            if buf is _DEAD:
                self._free.put(_DEAD)  # for any later waiter
                self._raise_pending(always=True, dead=True)
            return buf

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
        self._raise_pending(always=True)
        done = threading.Event()
        self._work.put(("flush", done))
        self._wait(done)
        self._raise_pending(always=True)

    def _flush_for_signal(self, wait_s: float) -> None:
        if not self.active or self._closed or self._closing or self._error is not None:
            return
        done = threading.Event()
        self._work.put(("flush", done))
        self._wait(done, wait_s)

    def _wait(self, done: threading.Event, timeout: float | None = None) -> bool:
        """Wait for the writer to set ``done``; never past the writer thread's death."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(_POLL_S):
            if not self._writer_thread.is_alive():
                return done.is_set()
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

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
        if not self.active:
            self._closed = True
            return
        if self._closing:  # re-entered (SIGTERM during close): let the writer finish
            self._writer_thread.join(wait_s)
            return
        self._closing = True
        drift: ConfigError | None = None
        drift_said = self._drift_raised
        try:
            if (
                final
                and self._error is None
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
            self._work.put(_CLOSE)
            self._writer_thread.join(wait_s)
            if not self._writer_thread.is_alive():
                # a writer that failed never reached writer.close(): give the lock back, so a
                # retry at the same path in this process is not refused
                self.writer.release()
            if self._report_thread is not None:
                self._put_report(_CLOSE)
                self._report_thread.join(wait_s)
            _OPEN.discard(self)
        if self._report is not None:
            try:
                self._report.close()
            except Exception as exc:  # noqa: BLE001 - a listener never costs the recording
                if exc is not self._report_failure:
                    self._detach_report(exc)
        self._warn_report_failure()
        self._raise_pending(closing=True)
        if drift is not None and not drift_said:
            raise drift

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
        self._raise_pending(always=True)
        done = threading.Event()
        result: dict[str, Any] = {}
        self._work.put(("truncate", int(state["step"]), done, result))
        if not self._wait(done):
            self._raise_pending(always=True, dead=True)
        self._raise_pending(always=True)
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
            "report_delivered": self._report_delivered,
            "report_detached": self._report_failure is not None,
        }

    def overhead(self) -> dict[str, float | int]:
        """What recording has cost so far (callable at any time, from any thread).

        Returns:
            ``snapshots`` (captured), ``snapshots_dropped`` (``on_full="drop"``),
            ``training_blocked_s`` (seconds the training thread spent in captures: the copy,
            with ``writes="inline"`` the write of the snapshot's bytes, and any wait for
            a free buffer included), ``capture_mean_s`` and ``capture_max_s`` (training-thread
            seconds per snapshot), ``writer_cpu_s`` (CPU seconds of the writer thread:
            checks, compression, file writes), ``report_cpu_s`` (CPU seconds of the report
            thread), ``bytes_written`` (bytes of snapshots handed to the store, before
            compression), ``bytes_per_snapshot``, ``elapsed_s`` (wall seconds since the
            recorder was created) and ``training_blocked_fraction`` (blocked / elapsed).
        """
        elapsed = time.perf_counter() - self._started
        n = self._captures
        return {
            "snapshots": n,
            "snapshots_dropped": self._dropped,
            "training_blocked_s": self._blocked_s,
            "capture_mean_s": self._blocked_s / n if n else 0.0,
            "capture_max_s": self._capture_max_s,
            "writer_cpu_s": self._writer_cpu_s,
            "report_cpu_s": self._report_cpu_s,
            "bytes_written": self._bytes_handed,
            "bytes_per_snapshot": self._layout.nbytes if self.active else 0,
            "elapsed_s": elapsed,
            "training_blocked_fraction": self._blocked_s / elapsed if elapsed > 0 else 0.0,
        }

    # -- writer thread -----------------------------------------------------------------------
    def _writer_loop(self) -> None:
        try:
            _lower_thread_priority(_WRITER_NICENESS)
            self._writer_main()
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._set_error(exc)
        finally:
            # A capture waiting for a buffer wakes up and sees why (never blocks on a dead
            # writer); after a normal close nobody waits.
            self._free.put(_DEAD)  # type: ignore[arg-type]

    def _writer_main(self) -> None:
        writer = self.writer
        assert writer is not None
        cpu0 = time.thread_time()
        self._last_report: tuple[int, int, dict[str, torch.Tensor], _MetricsSlot] | None = None
        while True:
            self._writer_cpu_s = time.thread_time() - cpu0 + self._io_cpu_s
            due = writer.flush_due()
            if due is not None and due <= 0:
                self._guarded(self._flush)
                continue
            try:  # capped: a huge (finite) interval must not overflow the wait
                item = self._work.get(timeout=None if due is None else min(due, 3600.0))
            except queue.Empty:
                continue
            if item is _CLOSE:
                self._guarded(self._flush, True)
                self._writer_cpu_s = time.thread_time() - cpu0 + self._io_cpu_s
                return
            if isinstance(item, tuple):
                if item[0] == "flush":  # ("flush", done)
                    self._guarded(self._flush)
                    item[1].set()
                else:  # ("truncate", step, done, result)
                    _, step, done, result = item
                    self._guarded(writer.truncate_after_step, step)
                    result["last_step"] = writer.last_step
                    done.set()
                continue
            self._guarded(self._write, item)
            if item.buf is not None:
                self._free.put(item.buf)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` unless the writer already failed; keep its exception for the trainer.

        Also counts the CPU time zarr's I/O threads spend meanwhile (the store's writes run
        there while the writer thread waits for them) into ``writer_cpu_s``.
        """
        if self._error is not None:
            return None
        helpers = _io_threads_cpu_s()
        try:
            return fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._set_error(exc)
            return None
        finally:
            self._io_cpu_s += _io_threads_cpu_s() - helpers

    def _write(self, item: _Item) -> None:
        writer = self.writer
        assert writer is not None
        buf = item.buf
        if buf is not None:
            buf.wait()
        index = writer.committed + writer.pending
        report_state = (
            self._layout.to_tensors(buf)
            if buf is not None and self._report is not None and self._report_failure is None
            else None
        )
        writer.dropped = self._dropped
        writer.recording_cost = self.overhead()  # append commits when a shard is complete
        state = None if item.finite is not None else self._layout.to_numpy(buf)  # type: ignore[arg-type]
        if writer.append(
            state, item.step, item.wall_time, item.metrics.seal, finite=item.finite
        ):
            self._nonfinite_seen = True
        self._bytes_handed += self._layout.nbytes
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
        # stored in the attrs on commit by writers that know the attribute (format v2)
        writer.recording_cost = self.overhead()
        writer.close() if close else writer.flush()

    def _emit_report(
        self, index: int, step: int, state: dict[str, torch.Tensor], slot: _MetricsSlot
    ) -> None:
        if self._report_q is None or self._report_failure is not None:
            return
        try:
            self._report_q.put_nowait((index, step, state, slot.seal()))
        except queue.Full:
            assert self.writer is not None
            self.writer.report_dropped += 1

    def _put_report(self, item: Any) -> None:
        """Put on the report queue, giving up if the report thread has ended."""
        assert self._report_q is not None and self._report_thread is not None
        while True:
            try:
                self._report_q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if not self._report_thread.is_alive():
                    return

    def _report_loop(self) -> None:
        cpu0 = time.thread_time()
        try:
            _lower_thread_priority(_WRITER_NICENESS)
            self._report_main(cpu0)
        except BaseException as exc:  # noqa: BLE001 - the listener is detached, recording goes on
            self._detach_report(exc)
        finally:
            self._report_cpu_s = time.thread_time() - cpu0

    def _report_main(self, cpu0: float) -> None:
        assert self._report_q is not None
        report = self._report
        on_store = getattr(report, "on_store", None)
        on_start = getattr(report, "on_start", None)
        try:
            if callable(on_store):
                assert self.writer is not None
                on_store(self.writer.location, self._first_index)
            if callable(on_start) and self.architecture is not None:
                on_start(self.architecture)
        except Exception as exc:  # noqa: BLE001 - the listener is detached, recording goes on
            self._detach_report(exc)
        while True:
            item = self._report_q.get()
            if item is _CLOSE:
                return
            if self._report_failure is not None:
                continue  # detached: drain
            try:
                report.on_snapshot(*item)
                self._report_delivered += 1
            except Exception as exc:  # noqa: BLE001 - the listener is detached, recording goes on
                self._detach_report(exc)
            self._report_cpu_s = time.thread_time() - cpu0

    def _detach_report(self, exc: BaseException) -> None:
        if self._report_failure is None:
            self._report_failure = exc

    def _warn_report_failure(self) -> None:
        exc = self._report_failure
        if exc is None or self._report_failure_warned:
            return
        self._report_failure_warned = True
        warnings.warn(
            f"The report listener {type(self._report).__name__} of '{self.path}' failed "
            f"({type(exc).__name__}: {exc}) and was detached after {self._report_delivered} "
            f"snapshots; recording goes on without it and the store keeps every snapshot.",
            HyperlapseWarning,
            stacklevel=4,
        )

    # -- errors ------------------------------------------------------------------------------
    _nonfinite_seen = False

    def _set_error(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def _raise_pending(self, closing: bool = False, always: bool = False, dead: bool = False):
        """Raise a background writer failure as WriterError (and warn about other events).

        ``always``: raise even if it was raised before (captures after a failure must not
        silently record nothing); ``dead``: the writer thread ended without a recorded error.
        """
        self._warn_nonfinite()
        self._warn_report_failure()
        if self._error is None and dead:
            self._error = RuntimeError("the writer thread ended unexpectedly")
        if self._error is not None and (always or not self._error_raised):
            again = self._error_raised
            self._error_raised = True
            todo = "see" if closing else "close() the recorder and see"
            raise WriterError(
                f"Recording to '{self.path}' failed in the background "
                f"({type(self._error).__name__}: {self._error}){' earlier' if again else ''}. "
                f"Snapshots committed before the failure are intact; nothing is recorded after "
                f"it; {todo} the cause below."
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


def _io_threads_cpu_s() -> float:
    """CPU seconds used so far by zarr's I/O threads (its event loop and executors)."""
    total = 0.0
    for thread in threading.enumerate():
        name = thread.name
        if thread.ident is None or not (
            name == "zarr_io" or name.startswith(("asyncio_", "zarr_pool"))
        ):
            continue
        try:
            total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (AttributeError, OSError, ValueError):  # not on this platform, or it ended
            pass
    return total


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


# SIGTERM (how schedulers stop jobs) skips atexit. The handler commits what open recorders
# captured, then does what the previous handler would have done: with the default action the
# recorders are closed and the process ends by SIGTERM as before; a Python handler of the
# program's own is called after a flush (the recorders stay open: that handler decides whether
# the program ends). Installed once, from the main thread only (Python's rule), when the first
# recorder is created; an ignored SIGTERM stays ignored.
_SIGTERM_WAIT_S = 60.0  # at most this long per recorder: a signal must not hang the process
_sigterm_previous: Any = None
_sigterm_installed = False
_sigterm_pid = 0  # a forked child (a DataLoader worker) inherits the handler, not the recorders


def _install_sigterm_handler() -> None:
    global _sigterm_previous, _sigterm_installed, _sigterm_pid
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN or previous is None:  # ignored, or set outside Python
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):  # no SIGTERM here, or not allowed
        return
    _sigterm_previous, _sigterm_installed, _sigterm_pid = previous, True, os.getpid()


def _on_sigterm(signum: int, frame: Any) -> None:
    previous = _sigterm_previous
    for recorder in list(_OPEN) if os.getpid() == _sigterm_pid else []:
        try:
            if callable(previous):
                recorder._flush_for_signal(_SIGTERM_WAIT_S)
            else:  # the process ends now: commit what was captured and mark the store closed
                recorder._shutdown(final=False, wait_s=_SIGTERM_WAIT_S)
        except Exception as exc:  # noqa: BLE001 - nothing to raise to in a signal handler
            print(f"hyperlapse: on SIGTERM: {exc}", file=sys.stderr)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # end as SIGTERM would have (exit status -15)


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
