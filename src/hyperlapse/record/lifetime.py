"""Process lifetime of recorders: interpreter exit, SIGTERM, and a recorder dropped unclosed.

* Interpreter exit closes every open recorder (nothing captured is lost).
* SIGTERM (how schedulers stop jobs; it skips atexit) commits what open recorders captured,
  then does what the previous handler would have done.
* A recorder garbage-collected without ``close()`` commits what it captured and gives its
  store's lock back (``weakref.finalize``), so a new recorder on the same path in the same
  process is not refused.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any

from ..errors import HyperlapseWarning, WriterError

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .recorder import TrajectoryRecorder

__all__ = ["register", "unregister"]

_OPEN: weakref.WeakSet[TrajectoryRecorder] = weakref.WeakSet()
_FINALIZERS: dict[int, weakref.finalize] = {}
_GC_WAIT_S = 30.0  # a recorder collected unclosed: wait at most this long for its commit


def register(recorder: TrajectoryRecorder, pipeline: Pipeline) -> None:
    """Track an open recorder: closed at exit and on SIGTERM, released if dropped unclosed."""
    _OPEN.add(recorder)
    for key in [k for k, f in _FINALIZERS.items() if not f.alive]:  # collected ones
        del _FINALIZERS[key]
    # the callback holds the pipeline, never the recorder (which could then not be collected)
    _FINALIZERS[id(recorder)] = weakref.finalize(recorder, _release_dropped, pipeline)
    _install_sigterm_handler()


def unregister(recorder: TrajectoryRecorder) -> None:
    """The recorder closed itself: forget it."""
    _OPEN.discard(recorder)
    finalizer = _FINALIZERS.pop(id(recorder), None)
    if finalizer is not None:
        finalizer.detach()


def _release_dropped(pipeline: Pipeline) -> None:
    """A recorder was garbage-collected without close(): commit what it captured, close the
    store (which releases its lock)."""
    try:
        pipeline.close(_GC_WAIT_S)
    except Exception as exc:  # noqa: BLE001 - nothing to raise to in a finalizer
        warnings.warn(
            f"A TrajectoryRecorder of '{pipeline.path}' was dropped without close() and "
            f"closing it failed ({type(exc).__name__}: {exc}).",
            HyperlapseWarning,
            stacklevel=2,
        )


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


# SIGTERM: the handler commits what open recorders captured, then does what the previous
# handler would have done: with the default action the recorders are closed and the process
# ends by SIGTERM as before; a Python handler of the program's own is called after a flush (the
# recorders stay open: that handler decides whether the program ends). Installed once, from the
# main thread only (Python's rule), when the first recorder is created; an ignored SIGTERM
# stays ignored.
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
