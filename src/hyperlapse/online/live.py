"""LiveReport: the recorder's report listener that encodes and reports while training runs.

``TrajectoryRecorder(path, model, report=LiveReport(out_dir, model=model))`` calls
:meth:`LiveReport.on_snapshot` on its listener thread. ``on_snapshot`` only queues the snapshot
(at most ``max_pending``; beyond that it drops and counts in :attr:`LiveReport.dropped`) and
returns; a worker thread of the LiveReport encodes each snapshot with an
:class:`~hyperlapse.online.encoder.OnlineEncoder` and appends its report (flushed) to
``out_dir/reports.jsonl``. Training never waits for the encoding. :meth:`LiveReport.close`
(called by ``recorder.close()``) lets the worker finish the queued snapshots, then draws the
plots and ``out_dir/report.html``.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..arch import describe_mlp
from ..errors import ArchitectureError, ConfigError
from ..report.schema import Report
from .session import ReportSession

__all__ = ["LiveReport", "architecture_from_state"]


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
        quiet: no terminal line per snapshot.
        plots: draw the plots and page at :meth:`close`.
        points, labels: 2-D data drawn on the volume-element maps (2-D inputs only).
        max_pending: snapshots queued for the worker at most (the oldest is kept, the newest
            dropped and counted when full); ``0`` encodes on the caller's thread instead.
        **online: passed to :class:`~hyperlapse.online.encoder.OnlineEncoder` (``seed``,
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
        plots: bool = True,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        title: str = "hyperlapse live report",
        max_pending: int = 64,
        **online: Any,
    ) -> None:
        if not isinstance(max_pending, int) or max_pending < 0:
            raise ConfigError(f"Expected max_pending to be an int >= 0, got {max_pending!r}.")
        if model is not None and architecture is None:
            architecture = describe_mlp(model)
        self.out_dir = Path(out_dir)
        self._kwargs = dict(
            quiet=quiet, plots=plots, points=points, labels=labels, title=title, **online
        )
        self._lock = threading.Lock()
        self._session: ReportSession | None = None
        self._closed = False
        self.html: Path | None = None
        #: Snapshots dropped because ``max_pending`` were already queued (or after close).
        self.dropped = 0
        self.error: BaseException | None = None
        self.max_pending = max_pending
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
        with self._lock:
            if self.error is not None:
                raise self.error
            if self._closed or (self.max_pending and len(self._pending) >= self.max_pending):
                self.dropped += 1
                return
            if not self.max_pending:
                self._process(*item)
                return
            self._pending.append(item)
            self._wake.notify()

    def _process(self, index, step, state, metrics) -> None:
        if self._session is None:
            self._session = ReportSession(
                self.out_dir, architecture_from_state(state), **self._kwargs
            )
        self._session.process(index, step, state, metrics)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if not self._pending:
                    return
                item = self._pending.popleft()
            try:
                self._process(*item)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                with self._lock:
                    self.error = exc
                    self._pending.clear()
                return

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
        if self._session is not None:
            self.html = self._session.finish()
        if self.error is not None:
            raise self.error
