"""A one-line progress bar with rate and ETA (stderr), no dependency."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``Progress(total, "runs")``; ``update(done)`` redraws at most every ``min_interval`` s.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> p = Progress(10, "runs", stream=out, min_interval=0)
        >>> p.update(5); p.close()
        >>> "10/10 runs" in out.getvalue()
        True
    """

    def __init__(
        self,
        total: int,
        unit: str,
        *,
        start: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
        min_interval: float = 0.5,
    ) -> None:
        self.total, self.unit, self.start = max(int(total), 1), unit, int(start)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.min_interval = enabled, min_interval
        self.t0 = time.monotonic()
        self._last = -1.0
        self.done = self.start

    def update(self, done: float) -> None:
        self.done = done
        now = time.monotonic()
        if self.enabled and now - self._last >= self.min_interval:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        elapsed = now - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        eta_s = f"{eta:5.0f}s" if eta == eta else "    ?"
        self.stream.write(
            f"\r[{bar}] {int(self.done)}/{self.total} {self.unit} {100 * frac:5.1f}% "
            f"{rate:6.1f} {self.unit}/s ETA {eta_s}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.done = self.total
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
