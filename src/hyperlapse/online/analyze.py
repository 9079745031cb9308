"""Post-hoc and follow-along analysis of a trajectory store (``hyperlapse analyze`` / ``watch``).

:func:`analyze_store` encodes every committed snapshot of a store and writes ``reports.jsonl``,
the embeddings as a Zarr array ``(T, N, d)`` with the node table (``embeddings.zarr``), the
plots and ``report.html``. :func:`watch_store` follows a store that is still being written,
processing snapshots as they are committed, until the writer closes it (attrs ``closed``) or
the user presses Ctrl-C.

Both run torch with ``threads`` intra-op threads (the CLI's default is 1): on a 2-core machine
that also trains, torch's default thread count made the encoder 8-30x slower than one thread,
because its parallel regions wait on cores the trainer holds. ``select_snapshots`` picks part of a
long run (``stride``, a step range).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, EmptyStoreError
from ..progress import Progress
from ..store.embeddings import EMBEDDINGS_FORMAT, EmbeddingsWriter, read_embeddings
from .session import ReportSession
from .sources import StoreSnapshots, open_mlp_store, run_notes, wait_for_store

__all__ = [
    "analyze_store",
    "watch_store",
    "EMBEDDINGS_FORMAT",
    "read_embeddings",
    "select_snapshots",
    "parse_step_range",
    "load_probes",
    "torch_threads",
]

def _check_count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"Expected {name} to be a whole number >= 1, got {value!r}.")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` torch intra-op threads (None: leave as is), then restore."""
    before = torch.get_num_threads()
    if threads is None:
        yield before
        return
    _check_count("threads", threads)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def parse_step_range(text: str | None) -> tuple[int | None, int | None]:
    """Parse ``"A:B"`` (either side may be empty) into inclusive optimizer-step bounds.

    Example:
        >>> parse_step_range("100:"), parse_step_range(":50"), parse_step_range(None)
        ((100, None), (None, 50), (None, None))
    """
    if text is None:
        return None, None
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ConfigError(
            f"Expected a step range 'A:B' of optimizer steps (either side may be empty, e.g. "
            f"'1000:' or ':500'), got {text!r}."
        ) from None
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"Expected the start of the step range {text!r} to be <= its end.")
    return lo, hi


def select_snapshots(
    steps: Sequence[int], stride: int = 1, step_range: tuple[int | None, int | None] = (None, None)
) -> list[int]:
    """Indices of the snapshots to analyse: those whose step lies in ``step_range`` (inclusive),
    then every ``stride``-th of them, always keeping the last one (the final state).

    Example:
        >>> select_snapshots([0, 10, 20, 30, 40, 50, 60], stride=3)
        [0, 3, 6]
        >>> select_snapshots([0, 10, 20, 30, 40, 50], stride=2, step_range=(10, 40))
        [1, 3, 4]
    """
    _check_count("stride", stride)
    lo, hi = step_range
    chosen = [
        t for t, s in enumerate(steps)
        if (lo is None or s >= lo) and (hi is None or s <= hi)
    ]
    if not chosen:
        return []
    picked = chosen[::stride]
    if picked[-1] != chosen[-1]:
        picked.append(chosen[-1])
    return picked


def load_probes(path: str | Path, in_features: int) -> torch.Tensor:
    """Probe inputs ``[B, in_features]`` from a ``.npy`` or ``.pt`` file (a tensor or array).

    Raises:
        ConfigError: the file is missing, not readable as an array, or of the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Expected a probe file (.npy or .pt), but '{path}' does not exist.")
    try:
        if path.suffix == ".npy":
            data = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix in (".pt", ".pth"):
            data = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ConfigError(
                f"Expected a probe file ending in .npy or .pt, got '{path.name}'. Save the "
                f"probe inputs with numpy.save or torch.save."
            )
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy and torch raise many types here
        raise ConfigError(
            f"Could not read probe inputs from '{path}' ({type(exc).__name__}: {exc}). Save a "
            f"[B, {in_features}] array with numpy.save or a tensor with torch.save."
        ) from None
    data = torch.as_tensor(data)
    if data.dim() != 2 or data.shape[1] != in_features or data.shape[0] == 0:
        raise ConfigError(
            f"Expected probe inputs of shape [B, {in_features}] (the model's input width), got "
            f"{tuple(data.shape)} from '{path}'. Flatten each input to {in_features} numbers."
        )
    if not data.is_floating_point():
        data = data.double()
    return data


def _probes_note(online: dict[str, Any], probes_from: str | None, in_features: int) -> str:
    """What the geometry's probes are, as used (the page's rows name them the same way)."""
    if probes_from:
        return probes_from
    if not online.get("geometry_every", True):
        return "none (input-space geometry off)"
    if in_features == 2:
        return "default: a 32x32 grid over [-3, 3]^2 (grid probes), not the training data"
    return "default: 64 Gaussian-noise points (random probes), not the training data"


def _say(quiet: bool, line: str) -> None:
    if not quiet:
        print(line, file=sys.stderr, flush=True)


def analyze_store(
    store: str | Path,
    out: str | Path,
    seed: int = 0,
    encoder: Any = None,
    quiet: bool = False,
    *,
    plots: bool = True,
    embeddings: bool = True,
    stride: int = 1,
    steps: tuple[int | None, int | None] | str | None = None,
    threads: int | None = None,
    probes: Any = None,
    **online: Any,
) -> dict[str, Any]:
    """Encode the committed snapshots of ``store`` and write the report into ``out``.

    Ctrl-C stops the encoding and still writes the page, the plots and the embeddings of the
    snapshots done (the page says it was interrupted).

    Args:
        store: path or URL of a trajectory store.
        out: output folder (``reports.jsonl``, ``embeddings.zarr``, PNGs, ``report.html``).
        seed: seeds the encoder; the analysis is deterministic for a fixed seed.
        encoder: None (self-supervised on the run), a TemporalEncoder or a path to a saved one.
        quiet: no terminal output.
        plots: draw the plots and the page.
        embeddings: write ``embeddings.zarr``.
        stride: analyse every ``stride``-th snapshot (the last one is always included).
        steps: only snapshots whose optimizer step lies in this inclusive range (``(lo, hi)``
            or ``"lo:hi"``, either side may be None/empty).
        threads: torch intra-op threads while encoding (None: leave torch's setting).
        probes: probe inputs ``[B, n_0]`` for the input-space geometry, or a path to a ``.npy``
            / ``.pt`` file holding them (default: the probes stored with the run by
            ``TrajectoryRecorder(probes=)``, else Gaussian noise, a grid for 2-D inputs).
        **online: further :class:`~hyperlapse.online.analyzer.OnlineEncoder` arguments.

    Returns:
        ``{"snapshots", "reports", "embeddings", "html", "seconds_per_snapshot",
        "interrupted", "selected"}`` (paths as strings, None where not written).

    Raises:
        NotAStoreError: ``store`` is not a trajectory store.
        EmptyStoreError: it holds no committed snapshot, or none in the selection.
        ArchitectureError: the recorded model is not an MLP.
    """
    traj = open_mlp_store(store)
    notes = run_notes(traj)
    if len(traj) == 0:
        raise EmptyStoreError(
            f"The store at '{store}' holds no committed snapshot yet. Wait for the recorder's "
            f"first flush, or follow it with `hyperlapse watch {store} OUT`."
        )
    step_range = parse_step_range(steps) if isinstance(steps, str) or steps is None else steps
    all_steps = [int(s) for s in traj.steps]
    chosen = select_snapshots(all_steps, stride, step_range)
    if not chosen:
        raise EmptyStoreError(
            f"No snapshot of '{store}' lies in the step range {step_range} (its steps run from "
            f"{all_steps[0]} to {all_steps[-1]}). Widen --steps."
        )
    online, probes_from = _with_probes(online, probes, traj.architecture, traj.probes)
    out = Path(out)
    name = Path(str(store)).name
    source = StoreSnapshots(traj, indices=chosen)
    with torch_threads(threads) as nthreads:
        _say(quiet, f"hyperlapse analyze: {len(chosen)} of {len(traj)} snapshots of {name} "
                    f"(widths {traj.architecture['widths']}), torch threads: {nthreads}")
        for line in notes.values():
            _say(quiet, f"hyperlapse analyze: {line}")
        session = ReportSession(out, traj.architecture, quiet=quiet, plots=plots, seed=seed,
                                encoder=encoder, title=f"hyperlapse report: {name}",
                                total=len(chosen), **online)
        sink = _embeddings(out, session, traj, store, seed) if embeddings else None
        progress = Progress(total=len(chosen), desc="analyze", unit="snap", enabled=not quiet)
        done, interrupted = 0, False
        try:
            for snap in source.take():
                session.process(snap.index, snap.step, snap.state, snap.metrics)
                if sink is not None:
                    sink.append(snap.step, session.online.z, snap.index)
                done += 1
                progress.update(done + len(source.skipped))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            progress.close()
            session.close_writer()
        for _, note in source.skipped:
            _say(quiet, f"hyperlapse analyze: {note}")
        summary: dict[str, Any] = {"store": str(store), "probes": probes_from, **notes}
        summary["snapshots analysed"] = (
            f"{done} of {len(traj)}" + (f" (stride {stride})" if stride > 1 else "")
            + (f" (steps {step_range[0]}:{step_range[1]})" if step_range != (None, None) else "")
        )
        if source.skipped:
            summary["skipped (non-finite)"] = _skipped_text(source)
        if interrupted:
            summary["interrupted"] = f"yes: Ctrl-C after {done} of {len(chosen)} snapshots"
        html = session.finish(summary)
    return {
        "snapshots": done,
        "selected": len(chosen),
        "skipped": [note for _, note in source.skipped],
        "reports": str(out / "reports.jsonl"),
        "embeddings": str(out / "embeddings.zarr") if embeddings else None,
        "html": None if html is None else str(html),
        "seconds_per_snapshot": session.seconds / max(done, 1),
        "interrupted": interrupted,
        "still_being_written": "still being written" in notes,
    }


def _skipped_text(source: StoreSnapshots) -> str:
    first = source.skipped[0][1]
    more = len(source.skipped) - 1
    return f"{len(source.skipped)} snapshots; {first}" + (f" (and {more} more)" if more else "")


def _embeddings(out: Path, session: ReportSession, traj: Any, store: Any,
                seed: int) -> EmbeddingsWriter:
    online = session.online
    return EmbeddingsWriter(
        out / "embeddings.zarr",
        online.node_table(),
        {
            "d": online.config.d,
            "manifold": online.config.manifold,
            "c": online.curvature,
            "architecture": traj.architecture,
            "node_types": ["input", "hidden", "output"],
            "store": str(store),
            "seed": seed,
        },
    )


def _with_probes(
    online: dict[str, Any], probes: Any, architecture: dict[str, Any],
    stored: torch.Tensor | None = None,
) -> tuple[dict[str, Any], str]:
    """Resolve ``probes`` (tensor, array or file path; default: those stored with the run) into
    the online arguments, and say which."""
    online = dict(online)
    if probes is None and stored is not None and online.get("geometry_every", True):
        online["probes"] = stored.to(torch.float64)
        return online, f"{stored.shape[0]} inputs stored with the run (recorder probes=)"
    if probes is None:
        return online, _probes_note(online, None, int(architecture["widths"][0]))
    in_features = int(architecture["widths"][0])
    if isinstance(probes, (str, Path)):
        tensor = load_probes(probes, in_features)
        note = f"{tensor.shape[0]} inputs from {probes}"
    else:
        tensor = torch.as_tensor(probes)
        note = f"{tensor.shape[0]} inputs given by the caller"
    online["probes"] = tensor
    return online, note


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
    stride: int = 1,
    threads: int | None = None,
    probes: Any = None,
    **online: Any,
) -> dict[str, Any]:
    """Follow a store that is being written: report on each snapshot as it is committed.

    Waits for the store to appear if it does not exist yet (up to ``timeout_s``). Returns when
    the writer has closed the store (attrs ``closed``) and every committed snapshot is
    processed, after ``timeout_s`` seconds without the store closing, or on Ctrl-C (the page is
    still written). The progress bar shows the lag behind the writer.

    Args:
        stride: report on every ``stride``-th committed snapshot (keeps up with fast writers).
        threads, probes: as :func:`analyze_store`.

    Returns:
        ``{"snapshots", "reports", "html", "closed", "interrupted", "timed_out"}``.

    Raises:
        NotAStoreError, ArchitectureError: as :func:`analyze_store`; NotAStoreError also when
            no store appeared within ``timeout_s``.
    """
    if poll_s <= 0:
        raise ConfigError(f"Expected poll_s > 0 seconds, got {poll_s}.")
    _check_count("stride", stride)
    traj = wait_for_store(store, timeout_s, poll_s, lambda line: _say(quiet, line))
    online, probes_from = _with_probes(online, probes, traj.architecture, traj.probes)
    out = Path(out)
    name = Path(str(store)).name
    source = StoreSnapshots(traj, stride=stride)
    processed = 0
    interrupted = False
    with torch_threads(threads) as nthreads:
        _say(quiet, f"hyperlapse watch: following {name} (widths "
                    f"{traj.architecture['widths']}), torch threads: {nthreads}")
        notes = run_notes(traj)
        notes.pop("still being written", None)  # that is what watch is for
        for line in notes.values():
            _say(quiet, f"hyperlapse watch: {line}")
        session = ReportSession(out, traj.architecture, quiet=quiet, plots=plots, seed=seed,
                                encoder=encoder, title=f"hyperlapse watch: {name}", **online)
        # no total (hence no ETA) while the run grows: its length is not known until it closes
        progress = Progress(desc="watch", unit="snap", enabled=not quiet)

        def show(src: StoreSnapshots) -> None:
            lag = src.committed - src.next_index
            progress.update(src.next_index, total=src.committed if src.closed else None, lag=lag)

        try:
            for snap in source.follow(poll_s=poll_s, timeout_s=timeout_s, on_poll=show):
                session.process(snap.index, snap.step, snap.state, snap.metrics)
                processed += 1
                show(source)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            progress.close()
            session.close_writer()
        for _, note in source.skipped:
            _say(quiet, f"hyperlapse watch: {note}")
        # read after the last snapshot was processed: the writer may have closed meanwhile
        with contextlib.suppress(Exception):
            source.refresh()
        closed = source.closed
        summary: dict[str, Any] = {"store": str(store), "writer closed": closed,
                                   "probes": probes_from, **notes}
        if source.skipped:
            summary["skipped (non-finite)"] = _skipped_text(source)
        if interrupted:
            summary["interrupted"] = f"yes: Ctrl-C after {processed} snapshots"
        html = session.finish(summary)
    timed_out = bool(getattr(source, "timed_out", False))
    return {
        "snapshots": processed,
        "reports": str(out / "reports.jsonl"),
        "html": None if html is None else str(html),
        "closed": closed,
        "interrupted": interrupted,
        "timed_out": timed_out,
        "skipped": [note for _, note in source.skipped],
    }
