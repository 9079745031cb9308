"""RunAnalysis: the analysis of one run, advanced a bounded number of snapshots at a time.

The same code path as ``hyperlapse analyze`` and ``watch`` (the store's committed snapshots
through :class:`~hyperlapse.online.sources.StoreSnapshots`, one
:class:`~hyperlapse.online.session.ReportSession`), cut into calls a scheduler can interleave:
a server following many runs calls :meth:`RunAnalysis.advance` on each in turn from one worker.

Restarts: after each :meth:`~RunAnalysis.advance` the analysis state (the online analyzer, the
figures' running state) is checkpointed in ``out/analysis.pt``; a new ``RunAnalysis`` on the
same store, seed and options continues from it, cutting ``reports.jsonl`` and
``embeddings.zarr`` back to the checkpoint (rows written after it are analysed again, never
duplicated). Anything else in ``out/`` (another run, other options, no checkpoint) is replaced.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, HyperlapseError, StoreNotReadyError
from ..store.embeddings import EmbeddingsWriter
from .sources import StoreSnapshots, open_mlp_store

__all__ = ["RunAnalysis", "CHECKPOINT"]

#: File name of the analysis checkpoint inside ``out``.
CHECKPOINT = "analysis.pt"
_CHECKPOINT_VERSION = 1


class RunAnalysis:
    """Analyse the committed snapshots of one store into ``out``, a bounded step at a time.

    Args:
        store: path or URL of a trajectory store (it may not exist yet: :meth:`advance` then
            analyses nothing and :meth:`status` says so).
        out: output folder (``reports.jsonl``, ``embeddings.zarr``, ``analysis.pt``, and at
            :meth:`close` the plots and ``report.html``).
        seed: seeds the analyzer; the analysis is deterministic for a fixed seed.
        threads: torch intra-op threads while analysing (one by default: a server or a trainer
            holds the other cores; ``None`` leaves torch's setting).
        quiet: no terminal line per snapshot (default).
        embeddings: write ``embeddings.zarr``.
        probes: probe inputs for the input-space geometry (tensor or ``.npy``/``.pt`` path;
            default: those stored with the run, else Gaussian noise / a grid for 2-D inputs).
        checkpoint_every_s: write ``analysis.pt`` at the end of an :meth:`advance` at most this
            often (and always at :meth:`close`); ``0``: after every call that analysed something.
        **online: further :class:`~hyperlapse.online.OnlineEncoder` arguments (``d``,
            ``refine_steps``, ``geometry_every``, ...).

    Example:
        >>> import tempfile, os, torch
        >>> from torch import nn
        >>> from hyperlapse import TrajectoryRecorder
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> root = tempfile.mkdtemp()
        >>> store = os.path.join(root, "run.zarr")
        >>> with TrajectoryRecorder(store, net, every=2) as rec:
        ...     _ = rec.attach(opt)
        ...     for _ in range(6):
        ...         opt.zero_grad(); net(torch.randn(4, 2)).sum().backward(); opt.step()
        >>> run = RunAnalysis(store, os.path.join(root, "out"), d=2, refine_steps=1)
        >>> run.advance(2), run.advance(), run.status()["analysed"]
        (2, 2, 4)
        >>> run.close(page=False)
    """

    def __init__(
        self,
        store: str | os.PathLike,
        out: str | os.PathLike,
        *,
        seed: int = 0,
        threads: int | None = 1,
        quiet: bool = True,
        embeddings: bool = True,
        probes: Any = None,
        checkpoint_every_s: float = 5.0,
        **online: Any,
    ) -> None:
        if checkpoint_every_s < 0:
            raise ConfigError(
                f"Expected checkpoint_every_s >= 0 seconds, got {checkpoint_every_s!r}."
            )
        self.store = os.fspath(store)
        self.out = Path(out)
        self.seed = int(seed)
        self.threads = threads
        self.quiet = quiet
        self.embeddings = embeddings
        self.checkpoint_every_s = float(checkpoint_every_s)
        self._probes = probes
        self._online = dict(online)
        self.session: Any = None
        self.source: StoreSnapshots | None = None
        self._sink: EmbeddingsWriter | None = None
        self._error: str | None = None
        self._closed = False
        self._saved_at = 0.0
        self._dirty = False
        self.html: Path | None = None

    # ------------------------------------------------------------------------------ state
    @property
    def analysed(self) -> int:
        """Snapshots analysed (reports in ``reports.jsonl``)."""
        return 0 if self.session is None else self.session.count

    def status(self) -> dict[str, Any]:
        """``{"store", "committed", "analysed", "pending", "closed", "state", "last_step",
        "skipped", "error"}``: committed snapshots at the last read, reports written, committed
        ones not analysed yet, whether the writer closed the store, its writing state
        (``"absent"`` before the store is opened, else
        :func:`~hyperlapse.online.sources.writing_state`: ``closed``, ``writing``, ``crashed``,
        ``unknown``), the last committed optimizer step, notes on skipped snapshots, and the
        text of the error that stops this analysis (``None`` while it is healthy)."""
        src = self.source
        committed = 0 if src is None else src.committed
        return {
            "store": self.store,
            "committed": committed,
            "analysed": self.analysed,
            "pending": 0 if src is None else src.pending,
            "closed": False if src is None else src.closed,
            "state": "absent" if src is None else src.state,
            "last_step": int(src.traj.steps[committed - 1]) if committed else None,
            "skipped": [] if src is None else [note for _, note in src.skipped],
            "error": self._error,
        }

    # ------------------------------------------------------------------------------ work
    def advance(self, max_snapshots: int | None = None) -> int:
        """Analyse the snapshots committed since the last call (at most ``max_snapshots``).

        Returns:
            How many were analysed (0 when none is new, the store does not exist yet, or the
            analysis has failed: see :meth:`status`).
        """
        if max_snapshots is not None and (
            not isinstance(max_snapshots, int) or max_snapshots < 0
        ):
            raise ConfigError(f"Expected max_snapshots to be None or an int >= 0, got "
                              f"{max_snapshots!r}.")
        if self._closed:
            raise ConfigError("This RunAnalysis is closed; create a new one to continue.")
        if self._error is not None:
            return 0
        from .analyze import torch_threads

        done = 0
        try:
            with torch_threads(self.threads):
                if self.source is None and not self._start():
                    return 0
                assert self.source is not None
                self.source.refresh()
                for snap in self.source.take(max_snapshots):
                    self.session.process(snap.index, snap.step, snap.state, snap.metrics)
                    if self._sink is not None:
                        self._sink.append(snap.step, self.session.online.z, snap.index)
                    done += 1
                if done:
                    self._dirty = True
                    if time.monotonic() - self._saved_at >= self.checkpoint_every_s:
                        self._save()
        except HyperlapseError as exc:
            self._error = str(exc)
        return done

    def _start(self) -> bool:
        """Open the store and set up the session (resuming from ``out``); False if not yet."""
        from ..store.format import store_exists

        if not store_exists(self.store):
            return False
        try:
            traj = open_mlp_store(self.store)
        except StoreNotReadyError:
            return False
        from .analyze import _with_probes
        from .session import ReportSession

        online, probes_from = _with_probes(
            self._online, self._probes, traj.architecture, traj.probes
        )
        self._identity = {
            "store": self.store,
            "created": traj.attrs.get("created"),
            "seed": self.seed,
            "options": repr(sorted(self._online.items())),
            "probes": probes_from,
        }
        self.probes_from = probes_from
        name = Path(self.store).name
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self._load()
        session = ReportSession(
            self.out, traj.architecture, quiet=self.quiet, seed=self.seed,
            title=f"hyperlapse report: {name}", append=saved is not None,
            keep_reports=False, **online,
        )
        start = 0
        if saved is not None:
            session.load_state(saved["session"])
            session.truncate_reports(saved["analysed"])
            start = int(saved["next_index"])
        if self.embeddings:
            attrs = {
                "d": session.online.config.d,
                "manifold": session.online.config.manifold,
                "c": session.online.curvature,
                "architecture": traj.architecture,
                "node_types": ["input", "hidden", "output"],
                "store": self.store,
                "seed": self.seed,
            }
            path = self.out / "embeddings.zarr"
            resume = saved["analysed"] if saved is not None and path.exists() else None
            self._sink = EmbeddingsWriter(
                path, session.online.node_table(), attrs, resume=resume
            )
        self.session = session
        self.source = StoreSnapshots(traj, start=start)
        return True

    # ------------------------------------------------------------------------------ restart
    def _load(self) -> dict[str, Any] | None:
        path = self.out / CHECKPOINT
        if not path.is_file() or not (self.out / "reports.jsonl").is_file():
            return None
        try:
            # our own file, written by _save (it holds the analyzer object, hence not
            # weights_only); anything unreadable means "start over"
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a stale or foreign checkpoint: start over
            return None
        if (
            not isinstance(saved, Mapping)
            or saved.get("version") != _CHECKPOINT_VERSION
            or saved.get("identity") != self._identity
        ):
            return None
        return dict(saved)

    def _save(self) -> None:
        if self.session is None or self.source is None:
            return
        payload = {
            "version": _CHECKPOINT_VERSION,
            "identity": self._identity,
            "analysed": self.analysed,
            "next_index": self.source.next_index,
            "session": self.session.state(),
        }
        path = self.out / CHECKPOINT
        tmp = path.with_name(path.name + ".partial")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        self._saved_at = time.monotonic()
        self._dirty = False

    # ------------------------------------------------------------------------------ close
    def close(self, page: bool = True) -> Path | None:
        """Checkpoint, close ``reports.jsonl`` and (``page``) draw the plots and ``report.html``
        of what was analysed (idempotent). Returns the page's path, or None."""
        if self._closed:
            return self.html
        self._closed = True
        if self.session is None:
            return None
        if self._dirty:
            try:
                self._save()
            except OSError as exc:  # the page is still worth drawing
                self._error = f"could not write {CHECKPOINT}: {exc}"
        self.session.plots = bool(page)
        from .sources import run_notes

        summary = {"store": self.store, "probes": self.probes_from}
        assert self.source is not None
        summary.update(run_notes(self.source.traj))
        st = self.status()
        summary["snapshots analysed"] = f"{st['analysed']} of {st['committed']} committed"
        if st["skipped"]:
            summary["skipped (non-finite)"] = (
                f"{len(st['skipped'])} snapshots; {st['skipped'][0]}"
            )
        self.html = self.session.finish(summary)
        return self.html

