"""Rewrite a closed store with another compression, bit-exact and crash-safe.

``hyperlapse compact STORE`` records with cheap settings during the run and saves storage when
it is over. The copy is written beside the store (``STORE.compacting``), compared snapshot by
snapshot with the original, and only then swapped in: the original is renamed to
``STORE.pre-compact``, the copy to ``STORE``, and the original is deleted. A crash at any point
leaves either the untouched original or the complete copy at ``STORE``; the next ``compact`` (or
:func:`finish_interrupted_compaction`) tidies what is left.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from . import format as fmt
from .info import disk_usage
from .inplace import fsync_path
from .location import LocationLike, StoreLocation
from .reader import open_trajectory
from .writer import StoreWriter

__all__ = ["compact_store", "finish_interrupted_compaction"]

_COPY = ".compacting"
_OLD = ".pre-compact"


def finish_interrupted_compaction(location: LocationLike) -> str | None:
    """Tidy what an interrupted compaction left; returns what was done (None: nothing)."""
    path = StoreLocation.of(location).local()
    copy, old = Path(f"{path}{_COPY}"), Path(f"{path}{_OLD}")
    if old.exists() and not path.exists():  # crashed between the two renames: restore
        old.rename(path)
        done = f"restored the original from {old.name}"
    elif old.exists():  # the copy is in place: the original only waits to be deleted
        shutil.rmtree(old)
        done = f"removed the replaced original {old.name}"
    else:
        done = None
    if copy.exists():  # an incomplete copy
        shutil.rmtree(copy)
        done = (done + "; " if done else "") + f"removed the incomplete copy {copy.name}"
    return done


def compact_store(location: LocationLike, *, compression: str = "zstd") -> dict[str, Any]:
    """Rewrite the closed store at ``location`` with ``compression`` (lossless, bit-exact).

    Returns:
        ``{"snapshots", "bytes_before", "bytes_after", "ratio", "compression", "tidied"}``:
        the bytes the store's files take on disk before and after. The copy keeps the
        original's ``created`` and is written in the current format version.

    Raises:
        StoreError: a URL (local stores only), a store that is not closed (still being written,
            or crashed: open it with a recorder and close it first), or a copy that does not
            equal the original (the original is kept).
        StoreLockedError: a writer holds the store.
    """
    where = StoreLocation.of(location)
    if where.is_url:
        raise StoreError(
            f"Expected a local store to compact, got the URL '{where}'. Compact a local copy "
            f"and upload it."
        )
    compression = fmt.check_compression(compression)
    path = where.local()
    tidied = finish_interrupted_compaction(path)
    traj = open_trajectory(path)
    attrs = traj.attrs
    if not attrs.get("closed"):
        raise StoreError(
            f"Expected a closed store, but '{path}' is still being written or its writer "
            f"crashed (attrs closed is false). Let the run finish, or resume and close it with "
            f"a TrajectoryRecorder, then compact."
        )
    before = disk_usage(path)[1]
    copy = Path(f"{path}{_COPY}")
    writer = StoreWriter(
        copy,
        attrs["parameters"],
        architecture=attrs.get("architecture"),
        config={**(attrs.get("recorder") or {}), "compression": compression},
        snapshots_per_chunk=int(attrs["snapshots_per_chunk"]),
        flush_every_s=None,
        compression=compression,
    )
    try:
        names = [p["name"] for p in attrs["parameters"]]
        views = {name: traj.weights(name) for name in names}
        metrics = traj.metrics
        for t in range(len(traj)):
            state = {name: np.asarray(views[name][t]) for name in names}
            writer.append(state, int(traj.steps[t]), float(traj.wall_time[t]),
                          {m: float(v[t]) for m, v in metrics.items()})
        if traj.probes is not None:
            writer.write_probes(traj.probes.numpy())
        writer.close(counters={"dropped": int(attrs.get("dropped", 0)),
                               "report_dropped": int(attrs.get("report_dropped", 0)),
                               "recording_cost": attrs.get("recording_cost")})
    finally:
        writer.release()
    # the run was recorded when it was, not when it was compacted
    fmt.open_group(copy, read_only=False).attrs.update({"created": attrs.get("created")})
    fsync_path(copy / "zarr.json")
    _check_equal(traj, open_trajectory(copy), path)
    old = Path(f"{path}{_OLD}")
    path.rename(old)
    copy.rename(path)
    shutil.rmtree(old)
    after = disk_usage(path)[1]
    return {"snapshots": len(traj), "bytes_before": before, "bytes_after": after,
            "ratio": after / max(before, 1), "compression": compression, "tidied": tidied}


def _check_equal(a: Any, b: Any, where: Path) -> None:
    """Every snapshot, step and metric of ``b`` equals ``a`` bit for bit (else StoreError)."""
    problem = None
    if len(a) != len(b) or not np.array_equal(a.steps, b.steps):
        problem = "snapshot counts or steps differ"
    else:
        for name in a.param_names:
            x, y = np.asarray(a.weights(name)), np.asarray(b.weights(name))
            if x.shape != y.shape or x.tobytes() != y.tobytes():
                problem = f"parameter '{name}' differs"
                break
        for m, v in a.metrics.items():
            if problem is None and not np.array_equal(v, b.metrics.get(m), equal_nan=True):
                problem = f"metric '{m}' differs"
    if problem is not None:
        raise StoreError(
            f"The compacted copy of '{where}' does not equal the original ({problem}); the "
            f"original is kept unchanged and the copy is left at '{where}{_COPY}' for a report."
        )
