"""The board's one background analyser: follows every MLP store of the folder and analyses
its new snapshots through :class:`hyperlapse.online.runner.RunAnalysis` (the code path of
``analyze`` and ``watch``), one snapshot per run per round so no run starves the others.

Only one board per folder analyses: the first takes an exclusive ``flock`` on
``DIR/.hyperlapse-board/analyser.lock`` (released by the kernel however the process ends); a
second board finds it taken and only reads what the first one writes.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

from .runs import RunIndex

__all__ = ["Analyser", "LOCK_NAME"]

LOCK_NAME = "analyser.lock"
#: Statuses whose stores are analysed (a damaged or half-created store is retried when its
#: metadata changes).
_ANALYSABLE = ("recording", "closed", "crashed-uncommitted", "writer-elsewhere")


def _try_lock(path: str) -> int | None:
    """An exclusive non-blocking flock on ``path`` (a file descriptor), or None if taken."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Analyser:
    """Analyses new snapshots of every store under ``index.root`` on one worker thread.

    Args:
        index: the folder's :class:`RunIndex`.
        threads: torch threads of the analysis (default 1: on a shared machine the board must
            not compete with training).
        seed: encoder seed, as ``hyperlapse analyze --seed``.
        poll_s: seconds to sleep when nothing is new.
        online: further keyword arguments of ``RunAnalysis`` (``refine_steps``, ...).

    Attributes:
        role: ``"analyser"`` (holds the lock), ``"reader"`` (another board analyses this folder)
            or ``"off"`` (``analyse=False`` or the folder is read-only).
    """

    def __init__(self, index: RunIndex, *, threads: int = 1, seed: int = 0,
                 poll_s: float = 1.0, analyse: bool = True, **online: Any) -> None:
        self.index = index
        self.threads = threads
        self.seed = seed
        self.poll_s = poll_s
        self.online = online
        self.states: dict[str, dict[str, Any]] = {}
        self._runs: dict[str, Any] = {}
        self._failed: dict[str, Any] = {}
        self._done: set[str] = set()
        self._done_key: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self.role = "off"
        self.note = "analysis switched off (--no-analysis)"
        if analyse:
            try:
                index.state_dir.mkdir(parents=True, exist_ok=True)
                self._fd = _try_lock(str(index.state_dir / LOCK_NAME))
            except OSError as exc:
                self.note = f"the folder is not writable ({exc.strerror}): showing runs only"
                return
            if self._fd is None:
                self.role = "reader"
                self.note = ("another board analyses this folder: this one only reads its "
                             "results")
            else:
                self.role = "analyser"
                self.note = f"analysing new snapshots on one worker ({threads} torch thread)"

    def start(self) -> None:
        if self.role == "analyser" and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hyperlapse-board-analyser",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the snapshot in progress, close every analysis, release the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for name, run in list(self._runs.items()):
            try:
                run.close(page=False)
            except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the rest
                self.states[name] = {"state": "error", "error": str(exc)}
        self._runs.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def state(self, name: str) -> dict[str, Any]:
        """What the analysis of ``name`` is doing, for the page."""
        if self.role != "analyser":
            return {"state": self.role, "error": None}
        return self.states.get(name, {"state": "waiting", "error": None})

    def _get(self, name: str, key: Any):
        run = self._runs.get(name)
        if run is None:
            if self._failed.get(name) == key:  # failed on this version of the store
                return None
            from ..online.runner import RunAnalysis

            out = self.index.analysis_dir(name)
            out.mkdir(parents=True, exist_ok=True)
            run = RunAnalysis(str(self.index.path(name)), str(out), seed=self.seed,
                              threads=self.threads, **self.online)
            self._runs[name] = run
        return run

    def step_once(self) -> int:
        """One round: at most one new snapshot per run. Returns how many were analysed."""
        done = 0
        for name in self.index.names():
            if self._stop.is_set():
                break
            info = self.index.describe(name)
            if not info.get("mlp") or info["status"] not in _ANALYSABLE:
                self.states[name] = {"state": "skipped", "error": info.get("detail") or None}
                continue
            key = (info["status"], info["snapshots"])
            if name in self._done and key == self._done_key.get(name):
                continue
            try:
                run = self._get(name, key)
                if run is None:
                    continue
                self.states[name] = {"state": "analysing", "error": None}
                new = int(run.advance(max_snapshots=1))
                done += new
                status = run.status()
                if status.get("error"):
                    raise RuntimeError(status["error"])
                behind = int(status.get("committed", 0)) - int(status.get("analysed", 0))
                if new == 0 and behind <= 0:
                    self.states[name] = {"state": "up to date", "error": None}
                    if info["status"] == "closed":
                        run.close(page=True)  # report.html beside reports.jsonl
                        self._runs.pop(name, None)
                        self._done.add(name)
                        self._done_key[name] = key
            except Exception as exc:  # noqa: BLE001 - a bad store shows its error, others go on
                self._runs.pop(name, None)
                self._failed[name] = key
                self.states[name] = {"state": "error", "error": f"{type(exc).__name__}: {exc}"}
        return done

    def _warm_up(self) -> None:
        """Analyse a 3-snapshot run of a tiny MLP in a temporary folder: the first analysis in
        a process pays for compiling geoopt's TorchScript functions and building the encoder
        (2.5 s against 0.4 s for the next run, measured on the 2-core machine), which would
        otherwise delay the first real snapshot."""
        import tempfile

        import torch
        from torch import nn

        from ..online.runner import RunAnalysis
        from ..record.recorder import TrajectoryRecorder

        net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        with tempfile.TemporaryDirectory(prefix="hyperlapse-board-warm-") as tmp:
            with TrajectoryRecorder(f"{tmp}/warm.zarr", net, every=1) as rec:
                rec.attach(opt)
                for _ in range(2):
                    opt.zero_grad()
                    net(torch.randn(8, 2)).pow(2).mean().backward()
                    opt.step()
            run = RunAnalysis(f"{tmp}/warm.zarr", f"{tmp}/out", seed=self.seed,
                              threads=self.threads, **self.online)
            run.advance()
            run.close(page=False)

    def _loop(self) -> None:
        try:
            self._warm_up()
        except Exception:  # noqa: BLE001 - only a speed-up: the real runs still work
            pass
        while not self._stop.is_set():
            if self.step_once() == 0:
                self._stop.wait(self.poll_s)
            else:
                time.sleep(0)  # let the server threads run between snapshots
