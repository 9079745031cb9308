"""Post-hoc and follow-along analysis of a trajectory store (``hyperlapse analyze`` / ``watch``).

:func:`analyze_store` encodes every committed snapshot of a store and writes ``reports.jsonl``,
the embeddings as a Zarr array ``(T, N, d)`` with the node table (``embeddings.zarr``), the
plots and ``report.html``. :func:`watch_store` follows a store that is still being written,
processing snapshots as they are committed, until the writer closes it (attrs ``closed``) or
the user presses Ctrl-C.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, EmptyStoreError, NotAStoreError
from ..graph.state import check_architecture
from .session import ReportSession

__all__ = ["analyze_store", "watch_store", "EMBEDDINGS_FORMAT", "read_embeddings"]

#: ``format`` attribute of ``embeddings.zarr``.
EMBEDDINGS_FORMAT = "hyperlapse.embeddings"
_EMBEDDINGS_VERSION = 1


def _metrics_at(traj: Any, t: int) -> dict[str, float]:
    return {name: float(values[t]) for name, values in traj.metrics.items()}


def _open(store: str | Path):
    from ..store.reader import open_trajectory

    traj = open_trajectory(store)
    check_architecture(traj.architecture)
    return traj


class _EmbeddingSink:
    """Writes ``z_t`` into ``embeddings.zarr/z`` (T, N, d) float32, one chunk per snapshot."""

    def __init__(self, path: Path, num: int, table: dict[str, torch.Tensor], attrs: dict) -> None:
        import zarr

        n = int(table["node_layer"].numel())
        d = int(attrs["d"])
        self.group = zarr.open_group(str(path), mode="w")
        self.group.attrs.update(
            {"format": EMBEDDINGS_FORMAT, "version": _EMBEDDINGS_VERSION, **attrs}
        )
        self.z = self.group.create_array("z", shape=(num, n, d), chunks=(1, n, d), dtype="f4")
        self.step = self.group.create_array("step", shape=(num,), chunks=(num,), dtype="i8")
        for name, values in table.items():
            arr = self.group.create_array(name, shape=(n,), chunks=(n,), dtype="i8")
            arr[:] = values.numpy().astype(np.int64)
        self.steps = np.zeros(num, dtype=np.int64)

    def write(self, t: int, step: int, z: torch.Tensor) -> None:
        self.z[t] = z.detach().to(torch.float32).numpy()
        self.steps[t] = step

    def close(self) -> None:
        self.step[:] = self.steps


def read_embeddings(path: str | Path) -> dict[str, Any]:
    """Read ``embeddings.zarr``: ``{"z" [T, N, d], "step" [T], "node_layer", "node_index",
    "node_type" [N], "attrs"}`` as tensors.

    Raises:
        NotAStoreError: ``path`` is not an embeddings store written by :func:`analyze_store`.
    """
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for "not there"
        raise NotAStoreError(
            f"Expected an embeddings store written by `hyperlapse analyze` at '{path}', but "
            f"could not open it ({type(exc).__name__}: {exc})."
        ) from None
    attrs = dict(group.attrs)
    if attrs.get("format") != EMBEDDINGS_FORMAT:
        raise NotAStoreError(
            f"Expected format {EMBEDDINGS_FORMAT!r} at '{path}', got {attrs.get('format')!r}."
        )
    out: dict[str, Any] = {
        name: torch.from_numpy(np.asarray(group[name][...]))
        for name in ("z", "step", "node_layer", "node_index", "node_type")
    }
    out["attrs"] = attrs
    return out


def analyze_store(
    store: str | Path,
    out: str | Path,
    seed: int = 0,
    encoder: Any = None,
    quiet: bool = False,
    *,
    plots: bool = True,
    embeddings: bool = True,
    **online: Any,
) -> dict[str, Any]:
    """Encode every committed snapshot of ``store`` and write the report into ``out``.

    Args:
        store: path or URL of a trajectory store.
        out: output folder (``reports.jsonl``, ``embeddings.zarr``, PNGs, ``report.html``).
        seed: seeds the encoder; the analysis is deterministic for a fixed seed.
        encoder: None (self-supervised on the run), a TemporalEncoder or a path to a saved one.
        quiet: no terminal output.
        plots: draw the plots and the page.
        embeddings: write ``embeddings.zarr``.
        **online: further :class:`~hyperlapse.online.encoder.OnlineEncoder` arguments.

    Returns:
        ``{"snapshots", "reports", "embeddings", "html", "seconds_per_snapshot"}`` (paths as
        strings, None where not written).

    Raises:
        NotAStoreError: ``store`` is not a trajectory store.
        EmptyStoreError: it holds no committed snapshot.
        ArchitectureError: the recorded model is not an MLP.
    """
    traj = _open(store)
    if len(traj) == 0:
        raise EmptyStoreError(
            f"The store at '{store}' holds no committed snapshot yet. Wait for the recorder's "
            f"first flush, or follow it with `hyperlapse watch`."
        )
    out = Path(out)
    session = ReportSession(out, traj.architecture, quiet=quiet, plots=plots, seed=seed,
                            encoder=encoder, title=f"hyperlapse report: {Path(str(store)).name}",
                            total=len(traj), **online)
    sink = None
    if embeddings:
        sink = _EmbeddingSink(
            out / "embeddings.zarr",
            len(traj),
            session.online.node_table(),
            {
                "d": session.online.config.d,
                "manifold": session.online.config.manifold,
                "c": session.online.curvature,
                "architecture": traj.architecture,
                "node_types": ["input", "hidden", "output"],
                "store": str(store),
                "seed": seed,
            },
        )
    try:
        for t in range(len(traj)):
            session.process(t, int(traj.steps[t]), traj[t], _metrics_at(traj, t))
            if sink is not None:
                sink.write(t, int(traj.steps[t]), session.online.z)
    finally:
        if sink is not None:
            sink.close()
        session.close_writer()
    html = session.finish({"store": str(store)})
    return {
        "snapshots": len(traj),
        "reports": str(out / "reports.jsonl"),
        "embeddings": str(out / "embeddings.zarr") if embeddings else None,
        "html": None if html is None else str(html),
        "seconds_per_snapshot": session.seconds / len(traj),
    }


def watch_store(
    store: str | Path,
    out: str | Path,
    seed: int = 0,
    encoder: Any = None,
    quiet: bool = False,
    *,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    plots: bool = True,
    **online: Any,
) -> dict[str, Any]:
    """Follow a store that is being written: report on each snapshot as it is committed.

    Returns when the writer has closed the store (attrs ``closed``) and every committed snapshot
    is processed, after ``timeout_s`` seconds without the store closing, or on Ctrl-C (the
    page is still written). The store must exist (start ``watch`` after the recorder).

    Returns:
        ``{"snapshots", "reports", "html", "closed", "interrupted", "timed_out"}``.

    Raises:
        NotAStoreError, ArchitectureError: as :func:`analyze_store`.
    """
    if poll_s <= 0:
        raise ConfigError(f"Expected poll_s > 0 seconds, got {poll_s}.")
    traj = _open(store)
    out = Path(out)
    session = ReportSession(out, traj.architecture, quiet=quiet, plots=plots, seed=seed,
                            encoder=encoder, title=f"hyperlapse watch: {Path(str(store)).name}",
                            **online)
    done = 0
    interrupted = timed_out = closed = False
    start = time.monotonic()
    try:
        while True:
            traj.refresh()
            closed = bool(traj.attrs.get("closed"))
            while done < len(traj):
                session.process(done, int(traj.steps[done]), traj[done], _metrics_at(traj, done))
                done += 1
            if closed:
                traj.refresh()  # snapshots committed while we were closing?
                if done >= len(traj):
                    break
                continue
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                timed_out = True
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        session.close_writer()
    html = session.finish({"store": str(store), "writer closed": closed})
    return {
        "snapshots": done,
        "reports": str(out / "reports.jsonl"),
        "html": None if html is None else str(html),
        "closed": closed,
        "interrupted": interrupted,
        "timed_out": timed_out,
    }
