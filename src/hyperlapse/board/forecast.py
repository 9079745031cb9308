"""The sweep forecast beside each live run (``GET /api/forecast``).

The runs of the followed folder are taken as one sweep: :func:`hyperlapse.predict.
forecast_sweep` is fitted on the finished ones and forecasts, for every run still in progress
past the cut, its final metric with an interval and a rank. Each forecast is shown beside the
run's current value of the same metric (the signal successive halving / ASHA would cut on):
a forecast without that comparison is not shown. Refitting costs seconds, so the result is
cached for ``ttl_s``; a folder that is not a sweep (too few finished runs, no planned length,
no metric) gets the reason instead, which the run list prints.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from ..errors import HyperlapseError

__all__ = ["SweepForecastCache"]


class SweepForecastCache:
    """The folder's sweep forecast, refitted at most every ``ttl_s`` seconds.

    Args:
        index: the board's :class:`~hyperlapse.board.runs.RunIndex`.
        at: the cut, a fraction of the planned steps.
        ttl_s: seconds a forecast is reused before it is refitted.
    """

    def __init__(self, index: Any, *, at: float = 0.2, ttl_s: float = 30.0) -> None:
        self.index = index
        self.at = at
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._at = -math.inf

    def get(self) -> dict[str, Any]:
        """``{"available": bool, "reason", "metric", "goal", "at", "finished", "runs": {name:
        {"predicted", "low", "high", "rank", "step", "current"}}, "waiting": [names]}``."""
        with self._lock:  # one fit at a time; concurrent requests share it
            if self._value is None or time.monotonic() - self._at > self.ttl_s:
                self._value = self._compute()
                self._at = time.monotonic()
            return self._value

    def _compute(self) -> dict[str, Any]:
        try:
            from ..predict.sweep_forecast import forecast_sweep
        except ImportError as exc:  # scikit-learn is an optional dependency
            return _unavailable(f"forecasting needs scikit-learn ({exc})")
        names = {}
        for run in self.index.runs():
            if run.get("status") in ("recording", "closed", "crashed-uncommitted") and run.get(
                    "snapshots"):
                names[str(self.index.path(run["name"]))] = run["name"]
        if not names:
            return _unavailable("no run with committed snapshots yet")
        try:
            res = forecast_sweep(list(names), at=self.at)
        except (HyperlapseError, ValueError) as exc:
            return _unavailable(str(exc))
        except Exception as exc:  # noqa: BLE001 - the run list must stay up; the page says why
            return _unavailable(f"the forecast failed ({type(exc).__name__}: {exc})")
        runs = {}
        for row in res.rows:
            name = names.get(str(row["run"]), str(row["run"]))
            runs[name] = {k: row[k] for k in ("predicted", "low", "high", "rank", "step")}
            runs[name]["current"] = _current(self.index.path(name), res.metric)
        return {
            "available": True, "reason": None, "metric": res.metric, "goal": res.goal,
            "at": res.at, "finished": res.finished, "runs": runs,
            "waiting": [names.get(str(w), str(w)) for w in res.waiting],
        }


def _unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason, "runs": {}, "waiting": []}


def _current(store: Any, metric: str) -> float | None:
    """The last logged finite value of ``metric`` in ``store`` (None when there is none)."""
    from ..store.reader import open_trajectory

    try:
        values = open_trajectory(store).metrics.get(metric)
    except HyperlapseError:
        return None
    if values is None:
        return None
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return finite[-1] if finite else None
