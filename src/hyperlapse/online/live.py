"""LiveReport: the recorder's report listener that encodes and reports while training runs.

``TrajectoryRecorder(path, model, report=LiveReport(out_dir, model=model))`` calls
:meth:`LiveReport.on_snapshot` on its listener thread. ``on_snapshot`` only queues the snapshot
(at most ``max_pending``) and returns; a worker thread of the LiveReport encodes each snapshot
with an :class:`~hyperlapse.online.analyzer.OnlineEncoder` and appends its report (flushed) to
``out_dir/reports.jsonl``. Training never waits for the encoding. :meth:`LiveReport.close`
(called by ``recorder.close()``) lets the worker finish the queued snapshots, then draws the
plots and ``out_dir/report.html``.

A LiveReport never misses a snapshot of the run it is attached to: the recorder tells it where
the store is (:meth:`LiveReport.on_store`), and every snapshot that was not handed over (the
recorder's hand-over queue or this LiveReport's own queue was full, e.g. on a busy machine) is
read back from the store, in order, once it is committed (at the latest when the recorder
closes). Only a LiveReport fed by hand (no store) drops and counts in
:attr:`LiveReport.dropped`.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..arch import describe_mlp
from ..errors import ArchitectureError, ConfigError
from ..report.schema import Report
from ..store.reader import open_trajectory
from .session import ReportSession
from .sources import StoreSnapshots, nonfinite, snapshot

__all__ = ["LiveReport", "architecture_from_state"]

_CATCH_UP_POLL_S = 0.05
_CATCH_UP_STALL_S = 120.0  # no commit for this long while waiting for one: stop waiting


def architecture_from_state(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Guess an MLP architecture from a state dict: its 2-D ``*weight`` tensors in order.

    Activations cannot be seen in a state dict and are recorded as ``None``, so the input-space
    geometry of such an architecture is that of a linear network: pass ``model=`` instead.

    Raises:
        ArchitectureError: the 2-D weights do not form a chain.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> architecture_from_state(net.state_dict())["widths"]
        [3, 4, 2]
    """
    layers = []
    for name, tensor in state.items():
        if not (name.endswith("weight") and tensor.dim() == 2):
            continue
        out_f, in_f = tensor.shape
        if layers and layers[-1]["out_features"] != in_f:
            raise ArchitectureError(
                f"Expected the 2-D weights of the state dict to form an MLP chain, but {name!r} "
                f"takes {in_f} inputs after a layer with {layers[-1]['out_features']} outputs. "
                f"Pass LiveReport(..., model=model) so the architecture is read from the model."
            )
        prefix = name[: -len("weight")]
        bias = prefix + "bias" if prefix + "bias" in state else None
        layers.append(
            {
                "name": prefix.rstrip("."),
                "weight": name,
                "bias": bias,
                "in_features": int(in_f),
                "out_features": int(out_f),
                "activation": None,
            }
        )
    if not layers:
        raise ArchitectureError(
            "Expected 2-D weight tensors in the snapshot, found none. Pass LiveReport(..., "
            "model=model)."
        )
    widths = [layers[0]["in_features"]] + [layer["out_features"] for layer in layers]
    return {"kind": "mlp", "widths": widths, "layers": layers}


class LiveReport:
    """Report listener for :class:`~hyperlapse.record.recorder.TrajectoryRecorder`.

    Args:
        out_dir: folder for ``reports.jsonl``, the PNG plots and ``report.html``.
        model: the recorded model (its architecture, activations included, is read now);
            or ``architecture=`` (``describe_mlp`` output); with neither, it is guessed from the
            first snapshot without activations (see :func:`architecture_from_state`).
        verbose: print a line per snapshot to stdout (``False``, the default, keeps your
            training output clean: one line on stderr says where the report goes and how to get
            the per-snapshot lines).
        quiet: not even that one line.
        plots: draw the plots and page at :meth:`close`.
        points, labels: 2-D data drawn on the volume-element maps (2-D inputs only).
        max_pending: snapshots queued for the worker at most; when full, the newest is left
            out (read back from the store later, or without a store dropped and counted);
            ``0`` encodes on the caller's thread instead.
        catch_up: read snapshots that were not handed over back from the store (default), so
            none is missed; ``recorder.close()`` then waits until every snapshot is encoded.
            ``False``: drop and count them in :attr:`dropped` instead (bounded wait at close).
        **online: passed to :class:`~hyperlapse.online.analyzer.OnlineEncoder` (``seed``,
            ``encoder``, ``probes``, ``refine_steps``, ``geometry_every``, ...).

    Example:
        >>> import tempfile, os, torch
        >>> from hyperlapse import TrajectoryRecorder
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> out = tempfile.mkdtemp()
        >>> live = LiveReport(os.path.join(out, "report"), model=net, quiet=True, plots=False)
        >>> path = os.path.join(out, "run.zarr")
        >>> with TrajectoryRecorder(path, net, every=5, report=live) as rec:
        ...     _ = rec.attach(opt)
        ...     for _ in range(10):
        ...         opt.zero_grad()
        ...         net(torch.randn(8, 2)).pow(2).mean().backward()
        ...         opt.step()
        >>> [r["step"] for r in live.reports]
        [0, 5, 10]
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        model: nn.Module | None = None,
        architecture: Mapping[str, Any] | None = None,
        quiet: bool = False,
        verbose: bool = False,
        plots: bool = True,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        title: str = "hyperlapse live report",
        max_pending: int = 64,
        catch_up: bool = True,
        **online: Any,
    ) -> None:
        if not isinstance(max_pending, int) or max_pending < 0:
            raise ConfigError(f"Expected max_pending to be an int >= 0, got {max_pending!r}.")
        if model is not None and architecture is None:
            architecture = describe_mlp(model)
        self.out_dir = Path(out_dir)
        self._kwargs = dict(
            quiet=not verbose, plots=plots, points=points, labels=labels, title=title, **online
        )
        self._announce = not quiet and not verbose
        self._lock = threading.Lock()
        self._session: ReportSession | None = None
        self._closed = False
        self.html: Path | None = None
        #: Snapshots never reported: without a store, dropped because ``max_pending`` were
        #: already queued (or after close); with one, only those the store could not give back.
        self.dropped = 0
        #: Snapshots handed over by the recorder (``on_snapshot`` calls).
        self.received = 0
        #: Snapshots reported from the store because they were not handed over or not queued.
        self.from_store = 0
        self._store: str | None = None
        self._next: int | None = None  # index of the next snapshot to report (with a store)
        self._source: StoreSnapshots | None = None
        #: Notes on snapshots left out because a parameter was not finite.
        self.skipped: list[str] = []
        self._skipped_handed: list[str] = []
        self.error: BaseException | None = None
        self.max_pending = max_pending
        self.catch_up = bool(catch_up)
        self._pending: collections.deque = collections.deque()
        self._wake = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        if architecture is not None:
            # Built now, on the caller's thread (the encoder's seeded initialisation must not
            # interleave with the training thread's use of the global RNG).
            self._session = ReportSession(self.out_dir, architecture, **self._kwargs)
        if max_pending:
            self._worker = threading.Thread(
                target=self._work, name="hyperlapse-live-report", daemon=True
            )
            self._worker.start()

    @property
    def reports(self) -> list[Report]:
        """The reports emitted so far."""
        return [] if self._session is None else self._session.reports

    def on_start(self, architecture: Mapping[str, Any]) -> None:
        """Optional hook: the architecture of the recorded model (ignored if already known)."""
        with self._lock:
            if self._session is None and architecture is not None:
                self._session = ReportSession(self.out_dir, architecture, **self._kwargs)

    def on_store(self, location: str, first_index: int) -> None:
        """Optional listener hook (called by the recorder before any snapshot): the store the
        snapshots are written to and the index of the first one this run will hand over. Every
        snapshot from ``first_index`` on is then reported, from the store if need be."""
        if not self.catch_up:
            return
        with self._lock:
            self._store, self._next = str(location), int(first_index)

    def on_snapshot(
        self,
        index: int,
        step: int,
        state: Mapping[str, Tensor],
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Queue one snapshot for the worker (called on the recorder's listener thread).

        Raises the worker's error, if it failed (the recorder hands it to the training thread).
        """
        item = (index, step, state, dict(metrics or {}))
        if self._announce:
            self._announce = False
            print(
                f"hyperlapse LiveReport: reporting into {self.out_dir} (reports.jsonl; "
                f"report.html at close). LiveReport(..., verbose=True) prints a line per "
                f"snapshot; quiet=True silences this line.",
                file=sys.stderr,
                flush=True,
            )
        with self._lock:
            if self.error is not None:
                raise self.error
            self.received += 1
            if self._closed or (self.max_pending and len(self._pending) >= self.max_pending):
                if self._store is None or self._closed:
                    self.dropped += 1
                return  # with a store: read back from it when the worker gets there
            if not self.max_pending:
                self._handle(item)
                return
            self._pending.append(item)
            self._wake.notify()

    def _handle(self, item: tuple) -> None:
        """Report ``item``, first catching up from the store on the snapshots before it."""
        index = item[0]
        if self._store is not None and self._next is not None:
            if index < self._next:
                return  # reported already (read from the store)
            self._catch_up(index)
            self._next = index + 1
        self._process(*item)

    def _catch_up(self, upto: int | None) -> None:
        """Report snapshots ``[_next, upto)`` from the store (to its end if ``upto`` is None),
        waiting for them to be committed while the run goes on."""
        assert self._next is not None
        waited_since = time.monotonic()
        while upto is None or self._next < upto:
            try:
                if self._source is None:
                    self._source = StoreSnapshots(open_trajectory(self._store))  # type: ignore[arg-type]
                else:
                    self._source.refresh()
            except Exception:  # noqa: BLE001 - the store cannot give them back: count them
                self._give_up(upto)
                return
            src = self._source
            src.next_index = self._next  # handed-over snapshots moved it on
            if self._next >= src.committed:
                if upto is None:
                    return
                # not committed yet: the recorder commits at least every flush interval and at
                # close; give up only if it closed (or stalls for minutes) without it
                if (
                    self._closed
                    or src.closed
                    or (time.monotonic() - waited_since > _CATCH_UP_STALL_S)
                ):
                    self._give_up(upto)
                    return
                time.sleep(_CATCH_UP_POLL_S)
                continue
            waited_since = time.monotonic()
            for snap in src.take(stop=upto):
                self._session_for(snap.state).process(
                    snap.index, snap.step, snap.state, snap.metrics
                )
                self.from_store += 1
            self._next = src.next_index
            self.skipped = [note for _, note in src.skipped] + self._skipped_handed

    def _give_up(self, upto: int | None) -> None:
        if upto is not None and self._next is not None and upto > self._next:
            self.dropped += upto - self._next
            self._next = upto

    def _session_for(self, state: Mapping[str, Tensor]) -> ReportSession:
        if self._session is None:
            self._session = ReportSession(
                self.out_dir, architecture_from_state(state), **self._kwargs
            )
        return self._session

    def _process(self, index, step, state, metrics) -> None:
        """A handed-over snapshot, cleaned as a store's would be (:mod:`.sources`)."""
        bad = nonfinite(state)
        if bad:
            self._skipped_handed.append(
                f"snapshot {index} (step {step}) skipped: non-finite values in {', '.join(bad[:3])}"
            )
            self.skipped.append(self._skipped_handed[-1])
            return
        snap = snapshot(index, step, state, metrics)
        self._session_for(state).process(snap.index, snap.step, snap.state, snap.metrics)

    def _work(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._pending and not self._closed:
                        self._wake.wait()
                    if not self._pending:
                        break
                    item = self._pending.popleft()
                self._handle(item)
            self._finish_from_store()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            with self._lock:
                self.error = exc
                self._pending.clear()

    def _finish_from_store(self) -> None:
        """At close: report what the store holds after the last snapshot handed over."""
        if self._store is not None and self._next is not None:
            self._catch_up(None)

    @property
    def pending(self) -> int:
        """Snapshots queued and not yet encoded."""
        return len(self._pending)

    def close(self) -> None:
        """Finish the queued snapshots, then write the plots and ``report.html`` (idempotent).

        Raises:
            the worker's error, if it failed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join()
        elif self.error is None:
            try:
                self._finish_from_store()
            except BaseException as exc:  # noqa: BLE001 - raised below
                self.error = exc
        if self._session is not None:
            self.html = self._session.finish()
        if self.error is not None:
            raise self.error
