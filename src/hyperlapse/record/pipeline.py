"""The capture -> write -> commit pipeline behind a :class:`~hyperlapse.TrajectoryRecorder`.

Threads:

* training thread (:meth:`Pipeline.admit`, :meth:`Pipeline.submit`): takes a free capture
  buffer of a small pool (or waits, or drops: backpressure), and after the recorder's copy puts
  the snapshot on the work queue. With ``writes="inline"`` it first writes the snapshot's bytes
  into their slot of the shard file and returns the buffer at once.
* writer thread: waits for the copy (CUDA event), writes (background writes) or just counts
  (inline writes) the snapshot in the :class:`~hyperlapse.store.writer.StoreWriter`, commits
  whole shards, flushes at least every ``flush_every_s`` seconds, returns the buffer.
* report thread (only with ``report=``): calls ``report.on_snapshot`` from its own small queue,
  which drops (and counts) when the listener falls behind, so a slow report never blocks training.

Backpressure holds in every ``writes`` mode: at most ``queue_size`` snapshots are captured and
not yet taken by the writer, and none of them is older than a quarter of ``flush_every_s``
(the writer then commits each within ``flush_every_s`` plus one flush). When the writer falls
behind, the training thread waits (``on_full="block"``) or the snapshot is dropped and counted
(``on_full="drop"``).

The pipeline owns the error slot (a failure on either thread ends the recording and is raised
on the training thread as :class:`~hyperlapse.errors.WriterError`) and the counters, which reach
the writer at each append, flush and close.
"""

from __future__ import annotations

import collections
import math
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import HyperlapseWarning, WriterError
from ..store.writer import StoreWriter
from .capture import CaptureBuffer, CaptureLayout

__all__ = ["MetricsSlot", "Pipeline"]

_REPORT_QUEUE = 4
_POOL_BYTES = 64 * 2**20  # host memory for capture buffers when queue_size is not given
_CLOSE = object()
_DEAD = object()  # put on the buffer pool when the writer thread ends: wakes a waiting capture
_POLL_S = 0.1  # bounded waits on the training thread re-check that the writer is alive
#: a snapshot waits on the work queue at most this fraction of flush_every_s before training
#: waits for the writer (the rest of the promise is the time flush itself)
_LAG_FRACTION = 0.25


def default_queue_size(snapshot_bytes: int) -> int:
    """Capture buffers for ~64 MB of snapshots, 4..64."""
    return min(max(_POOL_BYTES // max(snapshot_bytes, 1), 4), 64)


class MetricsSlot:
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
            return {k: to_float(v) for k, v in self.values.items()}


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
        metrics: MetricsSlot,
        finite: bool | None = None,
    ):
        self.buf, self.step, self.wall_time, self.metrics = buf, step, wall_time, metrics
        self.finite = finite


class Pipeline:
    """Capture buffers, the writer and report threads, the error slot and the counters.

    Args:
        writer: the open store writer (the pipeline closes it).
        layout: the capture layout (buffers, conversion to arrays).
        path: the store's path, for messages.
        queue_size: snapshots in flight (captured, not yet taken by the writer).
        on_full: "block" or "drop".
        inline: the training thread writes each snapshot's bytes (``writes="inline"``).
        flush_every_s: the writer's time flush interval (``None``: whole shards only).
        report: the report listener or ``None``.
        architecture: passed to the listener's ``on_start``.
    """

    def __init__(
        self,
        writer: StoreWriter,
        layout: CaptureLayout,
        *,
        path: str,
        queue_size: int,
        on_full: str,
        inline: bool,
        flush_every_s: float | None,
        report: Any,
        architecture: Any,
    ) -> None:
        self.writer, self.layout, self.path = writer, layout, path
        self.queue_size, self.on_full, self.inline = queue_size, on_full, inline
        self.report, self.architecture = report, architecture
        self.max_lag_s = None if flush_every_s is None else flush_every_s * _LAG_FRACTION
        self.first_index = writer.committed  # index of this session's first snapshot
        # error slot
        self.error: BaseException | None = None
        self._error_raised = False
        self.nonfinite_seen = False
        self._nonfinite_warned = False
        self.report_failure: BaseException | None = None
        self._report_failure_warned = False
        # counters
        self.captures = 0
        self.dropped = 0
        self.report_dropped = writer.report_dropped
        self.report_delivered = 0
        self.blocked_s = 0.0
        self.capture_max_s = 0.0
        self.bytes_handed = 0
        self.writer_cpu_s = 0.0
        self._io_cpu_s = 0.0
        self.report_cpu_s = 0.0
        self.started = time.perf_counter()
        # capture times of the snapshots queued and not yet taken by the writer (monotonic)
        self._queued: collections.deque[float] = collections.deque()
        self._taken = threading.Event()
        self._free = _BufferPool()
        for _ in range(queue_size):
            self._free.put(layout.new_buffer())
        # SimpleQueue: its put() is reentrant, so the SIGTERM handler may use it
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._report_q: queue.Queue[Any] | None = None
        self._report_thread: threading.Thread | None = None
        self._last_report: tuple[int, int, dict[str, torch.Tensor], MetricsSlot] | None = None
        if report is not None:
            self._report_q = queue.Queue(maxsize=_REPORT_QUEUE)
            self._report_thread = threading.Thread(
                target=self._report_loop, name="hyperlapse-report", daemon=True
            )
            self._report_thread.start()
        self._thread = threading.Thread(
            target=self._writer_loop, name="hyperlapse-writer", daemon=True
        )
        self._thread.start()

    # -- training thread ---------------------------------------------------------------------
    def admit(self, force: bool = False) -> CaptureBuffer | None:
        """A free capture buffer for the next snapshot, once the backlog allows one.

        Blocks while the writer is behind (``on_full="block"``, or ``force``: the final
        state); returns ``None`` for a dropped snapshot (``on_full="drop"``, counted).

        Raises:
            WriterError: the writer failed or its thread ended.
        """
        if self.on_full == "drop" and not force:
            if self._behind():
                self.dropped += 1
                return None
            try:
                buf = self._free.get_nowait()
            except queue.Empty:
                self.dropped += 1
                return None
            if buf is _DEAD:
                self._free.put(_DEAD)
                self.raise_pending(always=True, dead=True)
            return buf
        while self._behind():
            self._taken.clear()
            if self._behind() and not self._taken.wait(_POLL_S) and not self._thread.is_alive():
                self.raise_pending(always=True, dead=True)
            self.raise_pending(always=True)
        return self._take_buffer()

    def _behind(self) -> bool:
        """Whether the writer is too far behind for another snapshot: ``queue_size`` queued, or
        the oldest queued one waited longer than its share of ``flush_every_s``."""
        queued = self._queued
        if len(queued) >= self.queue_size:
            return True
        if self.max_lag_s is None or not queued:
            return False
        try:
            oldest = queued[0]
        except IndexError:  # taken meanwhile
            return False
        return time.monotonic() - oldest > self.max_lag_s

    def _take_buffer(self) -> CaptureBuffer:
        """A free capture buffer; waits while the writer is busy, raises once it is dead."""
        while True:
            try:
                buf = self._free.get(timeout=_POLL_S)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                buf = _DEAD
            if buf is _DEAD:
                self._free.put(_DEAD)  # for any later waiter
                self.raise_pending(always=True, dead=True)
            return buf

    def submit(self, buf: CaptureBuffer, step: int, slot: MetricsSlot) -> None:
        """Hand a filled buffer to the writer (inline writes: write its bytes first)."""
        finite = None
        if self.inline:
            finite = self._write_inline(buf)
            if self.report is None:  # nobody else reads the copy: the buffer is free again
                self._free.put(buf)
                buf = None  # type: ignore[assignment]
        self._queued.append(time.monotonic())
        self._work.put(_Item(buf, step, time.time(), slot, finite))
        self.captures += 1

    def _write_inline(self, buf: CaptureBuffer) -> bool:
        """Write the snapshot's bytes into its slot on this (the training) thread; a failure
        ends the recording like a writer failure does (WriterError now and at every capture)."""
        try:
            return self.writer.write_data(self.layout.to_numpy(buf))
        except BaseException as exc:  # noqa: BLE001 - raised below as WriterError
            self._free.put(buf)
            self.set_error(exc, inline=True)
            self.raise_pending(always=True)
            raise

    def count_capture_time(self, spent: float) -> None:
        self.blocked_s += spent
        self.capture_max_s = max(self.capture_max_s, spent)

    def request(self, kind: str, *args: Any, wait_s: float | None = None) -> dict[str, Any]:
        """Ask the writer thread to ``"flush"`` or ``"truncate"`` (step) and wait for it.

        Returns:
            The writer thread's answer (``last_step`` after a truncate); ``{"done": False}``
            when the wait timed out or the writer thread ended first.
        """
        done, result = threading.Event(), {}
        self._work.put((kind, args, done, result))
        result["done"] = self._wait(done, wait_s)
        return result

    def _wait(self, done: threading.Event, timeout: float | None = None) -> bool:
        """Wait for the writer to set ``done``; never past the writer thread's death."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(_POLL_S):
            if not self._thread.is_alive():
                return done.is_set()
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, wait_s: float | None = None) -> None:
        """Commit everything queued, close the store, stop the threads."""
        self._work.put(_CLOSE)
        if threading.current_thread() in (self._thread, self._report_thread):
            return  # a garbage collection on one of our own threads: they finish by themselves
        self._thread.join(wait_s)
        if not self._thread.is_alive():
            # a writer that failed never reached writer.close(): give the lock back, so a
            # retry at the same path in this process is not refused
            self.writer.release()
        if self._report_thread is not None:
            self._put_report(_CLOSE)
            self._report_thread.join(wait_s)
        if self.report is not None:
            try:
                self.report.close()
            except Exception as exc:  # noqa: BLE001 - a listener never costs the recording
                if exc is not self.report_failure:
                    self._detach_report(exc)

    # -- counters ----------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """What the writer stores in the attrs at its next commit (``counters=`` of append,
        flush and close)."""
        return {
            "dropped": self.dropped,
            "report_dropped": self.report_dropped,
            "recording_cost": self.overhead(),
            "writes": "inline" if self.inline else "background",
        }

    def overhead(self) -> dict[str, float | int]:
        """See :meth:`hyperlapse.TrajectoryRecorder.overhead`."""
        elapsed = time.perf_counter() - self.started
        n = self.captures
        return {
            "snapshots": n,
            "snapshots_dropped": self.dropped,
            "training_blocked_s": self.blocked_s,
            "capture_mean_s": self.blocked_s / n if n else 0.0,
            "capture_max_s": self.capture_max_s,
            "writer_cpu_s": self.writer_cpu_s,
            "report_cpu_s": self.report_cpu_s,
            "bytes_written": self.bytes_handed,
            "bytes_per_snapshot": self.layout.nbytes,
            "elapsed_s": elapsed,
            "training_blocked_fraction": self.blocked_s / elapsed if elapsed > 0 else 0.0,
        }

    # -- writer thread -----------------------------------------------------------------------
    def _writer_loop(self) -> None:
        try:
            lower_thread_priority(WRITER_NICENESS)
            self._writer_main()
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self.set_error(exc)
        finally:
            # A capture waiting for a buffer wakes up and sees why (never blocks on a dead
            # writer); after a normal close nobody waits.
            self._free.put(_DEAD)
            self._taken.set()

    def _writer_main(self) -> None:
        writer = self.writer
        cpu0 = time.thread_time()
        while True:
            self.writer_cpu_s = time.thread_time() - cpu0 + self._io_cpu_s
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
                self.writer_cpu_s = time.thread_time() - cpu0 + self._io_cpu_s
                return
            if isinstance(item, tuple):  # (kind, args, done, result)
                kind, args, done, result = item
                if kind == "flush":
                    self._guarded(self._flush)
                else:  # "truncate"
                    self._guarded(writer.truncate_after_step, *args)
                    result["last_step"] = writer.last_step
                done.set()
                continue
            self._guarded(self._write, item)
            if self._queued:
                self._queued.popleft()
            self._taken.set()
            if item.buf is not None:
                self._free.put(item.buf)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` unless the writer already failed; keep its exception for the trainer.

        Also counts the CPU time zarr's I/O threads spend meanwhile (the store's writes run
        there while the writer thread waits for them) into ``writer_cpu_s``.
        """
        if self.error is not None:
            return None
        helpers = _io_threads_cpu_s()
        try:
            return fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self.set_error(exc)
            return None
        finally:
            self._io_cpu_s += _io_threads_cpu_s() - helpers

    def _write(self, item: _Item) -> None:
        writer = self.writer
        buf = item.buf
        if buf is not None:
            buf.wait()
        index = writer.committed + writer.pending
        report_state = (
            self.layout.to_tensors(buf)
            if buf is not None and self.report is not None and self.report_failure is None
            else None
        )
        state = None if item.finite is not None else self.layout.to_numpy(buf)  # type: ignore[arg-type]
        if writer.append(  # commits when the previous shard is complete: counters go along
            state, item.step, item.wall_time, item.metrics.seal, finite=item.finite,
            counters=self.counters(),
        ):
            self.nonfinite_seen = True
        self.bytes_handed += self.layout.nbytes
        if self._last_report is not None:  # the previous snapshot's metrics are final now
            self._emit_report(*self._last_report)
        self._last_report = None
        if report_state is not None:
            self._last_report = (index, item.step, report_state, item.metrics)

    def _flush(self, close: bool = False) -> None:
        writer = self.writer
        if self._last_report is not None:  # before the commit, so its drop count is stored
            self._emit_report(*self._last_report)
            self._last_report = None
        if close:
            writer.close(counters=self.counters())
        else:
            writer.flush(counters=self.counters())

    # -- report thread -----------------------------------------------------------------------
    def _emit_report(
        self, index: int, step: int, state: dict[str, torch.Tensor], slot: MetricsSlot
    ) -> None:
        if self._report_q is None or self.report_failure is not None:
            return
        try:
            self._report_q.put_nowait((index, step, state, slot.seal()))
        except queue.Full:
            self.report_dropped += 1

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
            lower_thread_priority(WRITER_NICENESS)
            self._report_main(cpu0)
        except BaseException as exc:  # noqa: BLE001 - the listener is detached, recording goes on
            self._detach_report(exc)
        finally:
            self.report_cpu_s = time.thread_time() - cpu0

    def _report_main(self, cpu0: float) -> None:
        assert self._report_q is not None
        report = self.report
        on_store = getattr(report, "on_store", None)
        on_start = getattr(report, "on_start", None)
        try:
            if callable(on_store):
                on_store(self.writer.location, self.first_index)
            if callable(on_start) and self.architecture is not None:
                on_start(self.architecture)
        except Exception as exc:  # noqa: BLE001 - the listener is detached, recording goes on
            self._detach_report(exc)
        while True:
            item = self._report_q.get()
            if item is _CLOSE:
                return
            if self.report_failure is not None:
                continue  # detached: drain
            try:
                report.on_snapshot(*item)
                self.report_delivered += 1
            except Exception as exc:  # noqa: BLE001 - the listener is detached, recording goes on
                self._detach_report(exc)
            self.report_cpu_s = time.thread_time() - cpu0

    def _detach_report(self, exc: BaseException) -> None:
        if self.report_failure is None:
            self.report_failure = exc

    # -- the error slot ----------------------------------------------------------------------
    _inline_failure = False

    def set_error(self, exc: BaseException, inline: bool = False) -> None:
        if self.error is None:
            self.error = exc
            self._inline_failure = inline

    def raise_pending(self, closing: bool = False, always: bool = False, dead: bool = False):
        """Raise a writer failure as WriterError (and warn about other events).

        ``always``: raise even if it was raised before (captures after a failure must not
        silently record nothing); ``dead``: the writer thread ended without a recorded error.
        """
        self._warn_nonfinite()
        self._warn_report_failure()
        if self.error is None and dead:
            self.error = RuntimeError("the writer thread ended unexpectedly")
        if self.error is not None and (always or not self._error_raised):
            again = self._error_raised
            self._error_raised = True
            todo = "see" if closing else "close() the recorder and see"
            where = (
                "on the training thread (inline write of a snapshot's bytes)"
                if self._inline_failure
                else "in the background (writer thread)"
            )
            raise WriterError(
                f"Recording to '{self.path}' failed {where} "
                f"({type(self.error).__name__}: {self.error}){' earlier' if again else ''}. "
                f"Snapshots committed before the failure are intact; nothing is recorded after "
                f"it; {todo} the cause below."
            ) from self.error

    def _warn_nonfinite(self) -> None:
        if self.nonfinite_seen and not self._nonfinite_warned:
            self._nonfinite_warned = True
            warnings.warn(
                f"The model being recorded to '{self.path}' holds NaN or infinite values. They "
                f"are recorded as they are and counted in the store's attrs 'nonfinite'; "
                f"training has probably diverged (lower the learning rate or clip gradients).",
                HyperlapseWarning,
                stacklevel=4,
            )

    def _warn_report_failure(self) -> None:
        exc = self.report_failure
        if exc is None or self._report_failure_warned:
            return
        self._report_failure_warned = True
        warnings.warn(
            f"The report listener {type(self.report).__name__} of '{self.path}' failed "
            f"({type(exc).__name__}: {exc}) and was detached after {self.report_delivered} "
            f"snapshots; recording goes on without it and the store keeps every snapshot.",
            HyperlapseWarning,
            stacklevel=5,
        )


def to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return math.nan


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


# Background threads run at a lower scheduling priority than training: on a machine whose
# cores are all busy with the training threads, compression then fills idle time instead of
# preempting training (measured in benchmarks/recording_overhead.py). Linux only; elsewhere
# (or if refused) the threads keep the default priority.
WRITER_NICENESS = int(os.environ.get("HYPERLAPSE_WRITER_NICENESS", "10"))


def lower_thread_priority(niceness: int) -> None:
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except (OSError, AttributeError):
        pass
