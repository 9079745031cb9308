"""One progress display for the whole package: a one-line bar on stderr, and lines above it.

:class:`Progress` wraps an iterable (``for t in Progress(range(n), desc="embed")``) or is moved
by hand (``bar.update(done, total=..., lag=3)``: the total may change, e.g. while following a
store that grows). The bar shows the count, the rate, the ETA and any postfix; :func:`write`
prints a line *above* it (the bar is cleared, the line printed, the bar redrawn), so
per-snapshot lines and the bar share a terminal cleanly.

The bar is drawn only where it can be redrawn in place: a terminal (``isatty()``) or a Jupyter
output stream. Anywhere else (a pipe, a log file, CI) it stays silent, and :func:`write` is a
plain print. It has no dependency: the bar looks the same in every install (tqdm is not a core
dependency, and before this module a core install showed some bars and silently not others).
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = ["Progress", "progress_bar", "write"]

_LOCK = threading.RLock()  # one terminal: drawing, clearing and writing never interleave
_VISIBLE: list[Progress] = []  # bars on screen, cleared and redrawn around write()
_BAR_CELLS = 20


def _interactive(stream: Any) -> bool:
    """Whether ``stream`` redraws a line on ``\\r``: a terminal or a Jupyter output stream."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False
    return type(stream).__module__.startswith("ipykernel")


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A progress bar: count, percentage, rate, ETA and a postfix, redrawn in place.

    Args:
        iterable: wrap it; iterating advances the bar by one per item and closes it at the end
            (also on ``break``). Its ``len()``, if any, is the default total.
        total: the expected count, or None when unknown (count and rate only); may change
            with :meth:`update`.
        desc: a short label in front of the bar.
        unit: what is counted ("it", "runs", "snap"), shown after the count and in the rate.
        start: the count already done when the bar starts (a resumed job): the rate and ETA
            count only what is done from here.
        enabled: False draws nothing (``quiet``); iteration and updates still work.
        stream: where the bar goes (default ``sys.stderr``); it is drawn only when the stream
            is a terminal or a Jupyter output.
        min_interval: redraw at most this often (seconds); the last state is always drawn when
            the bar closes.

    Example:
        >>> import io
        >>> [t for t in Progress(range(3), desc="x", stream=io.StringIO())]  # not a TTY: silent
        [0, 1, 2]
        >>> bar = Progress(total=10, unit="runs", enabled=False)
        >>> bar.update(4, total=12, lag=8)
        >>> bar.n, bar.total, bar.postfix
        (4, 12, {'lag': 8})
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        start: float = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc, self.unit = desc, unit
        self.start = self.n = start
        self.postfix: dict[str, Any] = {}
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = float(min_interval)
        self.visible = bool(enabled) and _interactive(self.stream)
        self.closed = False
        self._t0 = time.monotonic()
        self._last_draw = -math.inf
        self._drawn = 0  # characters of the line on screen (cleared by padding: no ANSI codes)
        if self.visible:
            with _LOCK:
                _VISIBLE.append(self)
                self._draw()

    # -- moving the bar ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("Progress(total=...) without an iterable is moved by update().")
        try:
            for item in self.iterable:
                yield item
                self.update(self.n + 1)
        finally:
            self.close()

    def update(self, done: float, *, total: float | None = None, **postfix: Any) -> None:
        """Set the count done so far (not an increment), and optionally a new total and postfix.

        Args:
            done: how much is done now.
            total: the new expected count (e.g. a store that has grown); None keeps it.
            **postfix: ``name=value`` pairs shown after the ETA (e.g. ``lag=3``); they replace
                the previous ones of the same name.
        """
        self.n = done
        if total is not None:
            self.total = total
        if postfix:
            self.postfix.update(postfix)
        if self.visible and time.monotonic() - self._last_draw >= self.min_interval:
            with _LOCK:
                self._draw()

    def set_postfix(self, **postfix: Any) -> None:
        """Show ``name=value`` pairs after the ETA (e.g. ``loss="0.0123"``)."""
        self.update(self.n, **postfix)

    def write(self, line: str, file: TextIO | None = None) -> None:
        """Print ``line`` above the bar (see :func:`write`)."""
        write(line, file)

    def close(self) -> None:
        """Draw the final state and leave it on its own line (no-op when hidden or closed)."""
        if self.closed:
            return
        self.closed = True
        if self.visible:
            with _LOCK:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = 0
                if self in _VISIBLE:
                    _VISIBLE.remove(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- drawing -------------------------------------------------------------------------------
    def line(self) -> str:
        """The text of the bar as it is drawn now (without the carriage return)."""
        elapsed = time.monotonic() - self._t0
        rate = (self.n - self.start) / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(max(self.n / self.total, 0.0), 1.0)
            cells = int(_BAR_CELLS * frac)
            parts.append(f"{100 * frac:3.0f}%|{'#' * cells}{'-' * (_BAR_CELLS - cells)}|")
            parts.append(f"{_count(self.n)}/{_count(self.total)} {self.unit}")
        else:
            parts.append(f"{_count(self.n)} {self.unit}")
        parts.append(f"{rate:.1f} {self.unit}/s")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and self.n < self.total:
            eta = (self.total - self.n) / rate if rate > 0 else math.inf
            parts.append(f"ETA {_clock(eta)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return "  ".join(parts)

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        width = shutil.get_terminal_size(fallback=(80, 24)).columns - 1
        text = self.line()[:width]  # a wrapped line could not be redrawn in place
        self.stream.write("\r" + text + " " * max(self._drawn - len(text), 0))
        self.stream.flush()
        self._drawn = len(text)

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def write(line: str, file: TextIO | None = None) -> None:
    """Print ``line`` (default: to stdout) above every bar on screen, then redraw the bars.

    Without a bar on screen this is ``print(line, file=file, flush=True)``.
    """
    with _LOCK:
        for bar in _VISIBLE:
            bar._clear()
        print(line, file=file if file is not None else sys.stdout, flush=True)
        for bar in _VISIBLE:
            bar._draw()


def progress_bar(iterable: Iterable[Any], enabled: bool, desc: str) -> Progress:
    """``Progress(iterable, desc=desc, enabled=enabled)``: the shorthand of the training loops.

    Example:
        >>> list(progress_bar(range(3), False, "x"))
        [0, 1, 2]
    """
    return Progress(iterable, desc=desc, enabled=enabled)
