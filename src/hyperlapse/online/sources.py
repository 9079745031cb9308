"""The one way snapshots reach the analysis: the committed snapshots of a trajectory store, read
in order as they are committed (:class:`StoreSnapshots`), and the hand-over from a live recorder
(:func:`snapshot`). ``analyze``, ``watch``, :class:`~hyperlapse.online.live.LiveReport` and
:class:`~hyperlapse.online.runner.RunAnalysis` all read through here, so they agree on what a
snapshot is: its logged scalars without the NaNs of "not logged at this snapshot", and a
snapshot with a non-finite parameter skipped with a note (the analysis of such a state is
meaningless and its linear algebra fails).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ArchitectureError, NotAStoreError, StoreError, StoreNotReadyError

__all__ = [
    "Snapshot",
    "StoreSnapshots",
    "snapshot",
    "clean_metrics",
    "nonfinite",
    "open_mlp_store",
    "wait_for_store",
    "writing_state",
    "run_notes",
]


@dataclass(frozen=True)
class Snapshot:
    """One snapshot as the analysis sees it.

    Attributes:
        index: its index in the store (or in the recorder's hand-over).
        step: optimizer step.
        state: parameters by qualified name.
        metrics: the scalars logged with it (never NaN: a scalar not logged is absent).
    """

    index: int
    step: int
    state: Mapping[str, Tensor]
    metrics: Mapping[str, float] = field(default_factory=dict)


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The logged scalars of one snapshot, without the NaNs that mean "not logged".

    Example:
        >>> clean_metrics({"loss": 0.5, "val": float("nan")})
        {'loss': 0.5}
    """
    out = {}
    for name, value in (metrics or {}).items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(value):
            out[str(name)] = value
    return out


def nonfinite(state: Mapping[str, Tensor]) -> list[str]:
    """Names of the tensors of ``state`` holding a NaN or an infinity."""
    return [
        name for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def snapshot(
    index: int, step: int, state: Mapping[str, Tensor], metrics: Mapping[str, Any] | None = None
) -> Snapshot:
    """A :class:`Snapshot` from a recorder's hand-over (metrics cleaned as a store's are)."""
    return Snapshot(int(index), int(step), state, clean_metrics(metrics))


def open_mlp_store(store: str | Path):
    """Open a trajectory store whose model is an MLP.

    Raises:
        NotAStoreError, StoreError: as :func:`hyperlapse.open_trajectory`.
        ArchitectureError: the recorded model is not an MLP.
    """
    from ..graph.state import check_architecture
    from ..store.reader import open_trajectory

    traj = open_trajectory(store)
    if traj.architecture is None:
        raise ArchitectureError(
            f"The store at '{store}' was recorded from a model that hyperlapse did not recognise "
            f"as an MLP (a chain of nn.Linear layers with elementwise activations), so it cannot "
            f"be turned into a parameter graph. Its weights are still readable "
            f"(`hyperlapse info {store}`, hyperlapse.open_trajectory). If the model is such an "
            f"MLP built another way, record it again with "
            f"TrajectoryRecorder(..., model=nn.Sequential(...)) of its Linear layers."
        )
    check_architecture(traj.architecture)
    return traj


def wait_for_store(
    store: str | Path,
    timeout_s: float | None,
    poll_s: float,
    say: Callable[[str], None] = lambda line: None,
):
    """Open ``store`` (an MLP's), waiting for it to appear when it does not exist yet.

    Raises:
        NotAStoreError: none appeared within ``timeout_s`` (``None``: wait for ever).
    """
    from ..store.format import store_exists

    start = time.monotonic()
    if store_exists(store):
        try:
            return open_mlp_store(store)
        except StoreNotReadyError:  # being created by its writer: wait below
            pass
    say(f"hyperlapse watch: waiting for '{store}' to appear"
        + (f" (up to {timeout_s:g} s)" if timeout_s is not None else " (Ctrl-C to stop)"))
    last: StoreError | None = None
    while True:
        if store_exists(store):
            try:
                return open_mlp_store(store)
            except StoreError as exc:  # being created: attrs or arrays may not be there yet
                last = exc
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            if last is not None:
                raise last
            raise NotAStoreError(
                f"Waited {timeout_s:g} s for a trajectory store at '{store}', but none appeared. "
                f"Start the recorder first, check the path, or raise --timeout."
            )
        time.sleep(poll_s)


def writing_state(traj: Any) -> str:
    """``"closed"`` (the writer closed the store), ``"writing"`` (its writer runs),
    ``"crashed"`` (not closed, and its writer no longer runs: the committed snapshots are all
    there is) or ``"unknown"`` (not closed; its writer ran on another host), as last read."""
    from ..store.lock import writer_alive

    attrs = traj.attrs
    if attrs.get("closed"):
        return "closed"
    alive = writer_alive(attrs.get("writer"))
    return {True: "writing", False: "crashed", None: "unknown"}[alive]


def run_notes(traj: Any) -> dict[str, str]:
    """What an analysis of ``traj`` must tell its reader besides the numbers (terminal and page):
    a run still being written, and activations that could not be determined."""
    from ..arch import activations_known

    notes = {}
    state = writing_state(traj)
    if state in ("writing", "unknown"):
        notes["still being written"] = (
            f"still being written: {len(traj)} committed (this analysis covers those; follow the "
            f"run as it grows with `hyperlapse watch {traj.location} OUT`)"
            if state == "writing" else
            f"not closed, its writer on another host: {len(traj)} committed (it may still be "
            f"written; `hyperlapse watch {traj.location} OUT` follows it)"
        )
    if not activations_known(traj.architecture):
        notes["activations"] = (
            "activations unknown: an activation of this MLP could not be determined when it "
            "was recorded (e.g. a functional call in forward), so the input-space geometry and "
            "the neuron ablations are skipped rather than computed as if the layers were "
            "linear. Record the model as an nn.Sequential of Linear and activation modules "
            "to get them."
        )
    return notes


class StoreSnapshots:
    """The committed snapshots of one store, in order, each read once, as they are committed.

    Args:
        traj: an open :class:`~hyperlapse.store.reader.Trajectory` (see :func:`open_mlp_store`).
        start: index of the first snapshot to give.
        indices: give only these store indices (ascending; e.g. ``select_snapshots``), else all.
        stride: give every ``stride``-th index (counted from 0), else all.

    Attributes:
        next_index: the store index the next call looks at.
        skipped: ``[(index, note)]`` of the snapshots left out because a parameter was not
            finite.

    Example:
        >>> import tempfile, os, torch
        >>> from torch import nn
        >>> from hyperlapse import TrajectoryRecorder
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> path = os.path.join(tempfile.mkdtemp(), "run.zarr")
        >>> with TrajectoryRecorder(path, net) as rec:
        ...     _ = rec.capture(step=0); rec.log(loss=1.0); _ = rec.capture(step=5)
        >>> source = StoreSnapshots(open_mlp_store(path))
        >>> [(s.index, s.step, dict(s.metrics)) for s in source.take()]
        [(0, 0, {'loss': 1.0}), (1, 5, {})]
        >>> list(source.take()), source.closed
        ([], True)
    """

    def __init__(
        self,
        traj: Any,
        *,
        start: int = 0,
        indices: Sequence[int] | None = None,
        stride: int = 1,
    ) -> None:
        self.traj = traj
        self.next_index = int(start)
        self.indices = None if indices is None else sorted(int(i) for i in indices)
        self.stride = int(stride)
        self.skipped: list[tuple[int, str]] = []
        self._stop: int | None = None

    @property
    def committed(self) -> int:
        """Snapshots committed when the store was last read."""
        return len(self.traj)

    @property
    def closed(self) -> bool:
        """Whether the writer closed the store (when it was last read)."""
        return bool(self.traj.attrs.get("closed"))

    @property
    def state(self) -> str:
        """:func:`writing_state` of the store (when it was last read)."""
        return writing_state(self.traj)

    @property
    def pending(self) -> int:
        """Committed snapshots (of the selection) not given yet."""
        return sum(1 for _ in self._wanted(len(self.traj)))

    def refresh(self) -> int:
        """Re-read the store; returns the number of committed snapshots."""
        self.traj.refresh()
        return len(self.traj)

    def _wanted(self, end: int) -> Iterator[int]:
        end = end if self._stop is None else min(end, self._stop)
        if self.indices is not None:
            yield from (i for i in self.indices if self.next_index <= i < end)
            return
        for i in range(self.next_index, end):
            if i % self.stride == 0:
                yield i

    def take(self, limit: int | None = None, *, stop: int | None = None) -> Iterator[Snapshot]:
        """Give the committed snapshots not given yet (at most ``limit``; only indices below
        ``stop``), without re-reading the store (call :meth:`refresh` for new ones). Non-finite
        snapshots are skipped and noted in :attr:`skipped`."""
        traj = self.traj
        given = 0
        self._stop = stop
        wanted = list(self._wanted(len(traj)))
        self._stop = None
        for i in wanted:
            if limit is not None and given >= limit:
                return
            state = traj[i]
            self.next_index = i + 1
            bad = nonfinite(state)
            if bad:
                self.skipped.append(
                    (i, f"snapshot {i} (step {int(traj.steps[i])}) skipped: non-finite values in "
                        f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
                )
                continue
            given += 1
            metrics = {name: values[i] for name, values in traj.metrics.items()}
            yield Snapshot(i, int(traj.steps[i]), state, clean_metrics(metrics))
        if self.indices is None:
            end = len(traj) if stop is None else min(stop, len(traj))
            self.next_index = max(self.next_index, end)

    def follow(
        self,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_poll: Callable[[StoreSnapshots], None] | None = None,
    ) -> Iterator[Snapshot]:
        """Give every snapshot as it is committed until the writer closes the store and all are
        given, or ``timeout_s`` seconds pass (then :attr:`timed_out` is True)."""
        start = time.monotonic()
        self.timed_out = False
        while True:
            self.refresh()
            closed = self.closed
            yield from self.take()
            if on_poll is not None:
                on_poll(self)
            if closed:
                self.refresh()  # committed while we were closing?
                if not self.pending:
                    return
                continue
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                self.timed_out = True
                return
            time.sleep(poll_s)
