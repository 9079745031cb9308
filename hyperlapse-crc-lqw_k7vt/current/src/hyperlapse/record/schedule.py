"""Capture schedules: which optimizer steps get a snapshot.

A schedule is a pure predicate ``step -> bool`` (``step`` counts optimizer steps from 1). The
recorder adds the initial state (before the first step) and the final state (at close) itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Every:
    """Capture every ``n`` optimizer steps: steps n, 2n, 3n, ...

    Example:
        >>> [s for s in range(1, 31) if Every(10)(s)]
        [10, 20, 30]
    """

    n: int

    def __call__(self, step: int) -> bool:
        return step % self.n == 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "every", "n": self.n}


@dataclass(frozen=True)
class LogSpaced:
    """Log-spaced captures, dense early: about ``per_decade`` snapshots per decade of steps.

    Steps ``1..per_decade`` are all captured; after that, step s is captured when it enters a
    new bucket ``floor(per_decade * log10(s))``. Over S steps that is about
    ``per_decade * (1 + log10(S / per_decade))`` snapshots.

    Example:
        >>> s = LogSpaced(per_decade=10)
        >>> [t for t in range(1, 101) if s(t)]
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 16, 20, 26, 32, 40, 51, 64, 80, 100]
    """

    per_decade: int = 20

    def __call__(self, step: int) -> bool:
        if step <= self.per_decade:
            return step >= 1
        return self._bucket(step) > self._bucket(step - 1)

    def _bucket(self, step: int) -> int:
        # the small epsilon puts exact powers of ten in their own (upper) bucket
        return math.floor(self.per_decade * math.log10(step) + 1e-9)

    def describe(self) -> dict[str, Any]:
        return {"kind": "log", "per_decade": self.per_decade}


@dataclass(frozen=True)
class Predicate:
    """A user predicate ``fn(step) -> bool``."""

    fn: Callable[[int], bool]

    def __call__(self, step: int) -> bool:
        return bool(self.fn(step))

    def describe(self) -> dict[str, Any]:
        return {"kind": "callable", "name": getattr(self.fn, "__qualname__", repr(self.fn))}


Schedule = Every | LogSpaced | Predicate


def make_schedule(every: Any = None, schedule: Any = None) -> Schedule:
    """Build a schedule from the recorder's ``every=`` / ``schedule=`` arguments.

    ``every=N`` (int > 0), ``schedule="log"``, ``schedule=N``, ``schedule=callable`` or a
    schedule object. Neither given: every step.

    Raises:
        ConfigError: both given, ``every <= 0``, an unknown schedule name or type.
    """
    if every is not None and schedule is not None:
        raise ConfigError(
            f"Expected either every= or schedule=, but got both (every={every!r}, "
            f"schedule={schedule!r}). Pass one of them."
        )
    spec = every if every is not None else schedule
    if spec is None:
        return Every(1)
    if isinstance(spec, (Every, LogSpaced, Predicate)):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec <= 0:
            raise ConfigError(
                f"Expected every= to be a positive number of optimizer steps, but got {spec}. "
                f"Use every=1 to record every step."
            )
        return Every(spec)
    if isinstance(spec, str):
        if spec == "log":
            return LogSpaced()
        raise ConfigError(
            f"Expected schedule to be 'log', a positive int or a callable(step) -> bool, but "
            f"got the unknown name {spec!r}."
        )
    if callable(spec):
        return Predicate(spec)
    raise ConfigError(
        f"Expected every=/schedule= to be a positive int, 'log' or a callable(step) -> bool, "
        f"but got {type(spec).__name__} {spec!r}."
    )
