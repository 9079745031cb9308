"""``hyperlapse info``: a summary of a trajectory store as a dict and as text."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import CorruptStoreError
from . import format as fmt
from .lock import owner_text, writer_alive
from .reader import open_trajectory

__all__ = ["store_info", "format_info", "disk_usage", "human_size"]


def disk_usage(location: str | os.PathLike, prefix: str = "") -> tuple[int, int]:
    """(files, bytes) under a local folder: a store, one of its sub-folders, or any directory.

    A file counts with its size, or with the bytes allocated to it where that is less: a live
    store's shard files are preallocated to their final size but hold only the snapshots
    written so far (sparse).
    """
    root = fmt.local_path(location) / prefix
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            files += 1
            st = os.stat(os.path.join(dirpath, name))
            blocks = getattr(st, "st_blocks", None)
            size += st.st_size if blocks is None else min(st.st_size, blocks * 512)
    return files, size


def store_info(location: str | os.PathLike, *, verify: bool = False) -> dict[str, Any]:
    """Summarise a store: snapshots, steps, parameters, sizes, architecture, metrics, health.

    Args:
        location: path or URL of the store.
        verify: read every committed snapshot and every 1-D array and list the damaged ones
            under ``"damaged"`` (``{"what", "snapshot", "error"}``; empty when intact).

    Raises:
        NotAStoreError: ``location`` is not a hyperlapse store.
        CorruptStoreError: the store's metadata or its ``step`` array is damaged (without
            ``verify``, damaged snapshot data is not looked for).
        StoreNotReadyError: a writer is creating the store (no description yet).
    """
    traj = open_trajectory(location)
    attrs = traj.attrs
    n = len(traj)
    damaged = traj.verify() if verify else None
    steps: list[int | None] = [None, None]
    if damaged:
        try:
            steps = [int(traj.steps[0]), int(traj.steps[-1])]
        except CorruptStoreError:
            pass
    local = not traj.where.is_url
    params = []
    for p in attrs["parameters"]:
        numel = math.prod(p["shape"])
        itemsize = np.dtype(fmt.STORED_DTYPES.get(p["dtype"], p["dtype"])).itemsize
        if local:
            stored = disk_usage(traj.where, f"{fmt.PARAMS}/{p['name']}")[1]
        else:  # no snapshot committed: the arrays may not exist yet
            stored = int(traj.weights(p["name"]).zarr.nbytes_stored()) if n else 0
        params.append(
            {
                "name": p["name"],
                "shape": list(p["shape"]),
                "dtype": p["dtype"],
                "numel": numel,
                "stored_bytes": stored,
                "raw_bytes": numel * itemsize * n,
            }
        )
    raw = sum(p["raw_bytes"] for p in params)
    stored = sum(p["stored_bytes"] for p in params)
    float32_raw = sum(p["numel"] * 4 * n for p in params)
    files, total = disk_usage(traj.where) if local else (None, None)
    arch = attrs.get("architecture")
    return {
        "path": traj.location,
        "format": attrs["format"],
        "version": attrs["version"],
        "created": attrs.get("created"),
        "snapshots": n,
        "steps": steps if damaged or not n else [int(traj.steps[0]), int(traj.steps[-1])],
        "parameters": params,
        "numel": sum(p["numel"] for p in params),
        "raw_bytes": raw,
        "stored_bytes": stored,
        "compression_ratio": stored / raw if raw else None,
        "ratio_to_float32": stored / float32_raw if float32_raw else None,
        "total_bytes": total,
        "files": files,
        "architecture": arch,
        "widths": (arch or {}).get("widths"),
        "metrics": list(attrs.get("metrics", [])),
        "closed": bool(attrs.get("closed")),
        "dropped": int(attrs.get("dropped", 0)),
        "report_dropped": int(attrs.get("report_dropped", 0)),
        "nonfinite": int(attrs.get("nonfinite", 0)),
        "recorder": attrs.get("recorder"),
        "versions": attrs.get("versions"),
        "recording_cost": attrs.get("recording_cost"),
        "write_amplification": attrs.get("write_amplification"),
        "writer_io": attrs.get("writer_io"),
        "writes": attrs.get("writes"),
        "writer": attrs.get("writer"),
        "writer_alive": writer_alive(attrs.get("writer")),
        "checksums_bound": traj.bound_checksums,
        "verified": verify,
        "damaged": damaged,
    }


def human_size(nbytes: float | None) -> str:
    if nbytes is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"  # pragma: no cover


_NOT_CLOSED = "no (the writer did not close: it crashed or is still running)"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable text of :func:`store_info`'s dict."""
    arch = "not an MLP (no graph analysis)"
    described = info["architecture"] or {}
    if info["widths"]:
        acts = [layer["activation"] or "-" for layer in described["layers"]]
        arch = f"MLP {'-'.join(map(str, info['widths']))} (activations: {', '.join(acts)})"
    elif described.get("kind") == "population":
        widths = "-".join(map(str, (described.get("member") or {}).get("widths") or []))
        arch = (f"population of {described.get('runs')} MLPs {widths} (read its runs with "
                "hyperlapse.zoo.open_zoo)")
    lines = [
        f"store        {info['path']}",
        f"format       {info['format']} v{info['version']} (created {info['created']})",
        f"snapshots    {info['snapshots']}  steps {info['steps'][0]}..{info['steps'][1]}"
        if info["snapshots"] else f"snapshots    0: no snapshot committed yet ({_empty_why(info)})",
        f"architecture {arch}",
        f"parameters   {len(info['parameters'])} tensors, {info['numel']:,} values",
    ]
    width = max(len(p["name"]) for p in info["parameters"])
    for p in info["parameters"]:
        shape = "x".join(map(str, p["shape"])) or "scalar"
        lines.append(
            f"  {p['name']:<{width}}  {shape:>12}  {p['dtype']:<8}  "
            f"{human_size(p['stored_bytes'])} of {human_size(p['raw_bytes'])}"
        )
    lines += [
        f"size         {human_size(info['stored_bytes'])} stored / "
        f"{human_size(info['raw_bytes'])} raw"
        + (f" ({info['compression_ratio']:.2f}; {info['ratio_to_float32']:.2f} of float32)"
           if info["compression_ratio"] is not None else ""),
        f"files        {info['files'] if info['files'] is not None else 'n/a'}",
        f"metrics      {', '.join(info['metrics']) or 'none'}",
        f"closed       {'yes' if info['closed'] else _NOT_CLOSED}",
        f"dropped      {info['dropped']}  (report listener: {info['report_dropped']})",
        f"non-finite   {info['nonfinite']} snapshots",
    ]
    if info.get("writer") and not info["closed"]:
        state = {True: "running", False: "not running: crashed or killed (the lock is free)",
                 None: "on another host: cannot tell whether it runs"}[info["writer_alive"]]
        lines.append(f"writer       {owner_text(info['writer'])}, {state}")
    cost = info.get("recording_cost")
    if isinstance(cost, dict) and cost:
        lines.append("recording    " + ", ".join(_cost_text(k, v) for k, v in cost.items()))
    io = info.get("writer_io")
    if io:
        by = {"inline": "; bytes written by the training thread, committed by the writer thread",
              "background": "; by the writer thread"}.get(info.get("writes") or "", "")
        lines.append(f"writer io    {io} ({_IO_TEXT.get(io, 'unknown')}{by})")
    if isinstance(info.get("write_amplification"), (int, float)):
        lines.append(f"written      {info['write_amplification']:.2f} bytes per byte of data "
                     f"(zarr path: rewrites of partial shards at time flushes; in place: "
                     f"shard indexes and shared O_DIRECT pages; for tiny models mostly the "
                     f"fixed-size step/metric chunks)")
    lines.append("checksums    " + _checksum_text(info))
    if not info.get("verified"):
        lines.append("integrity    not verified (hyperlapse info --verify reads every snapshot)")
    elif not info["damaged"] and not info["snapshots"]:
        lines.append("integrity    verified: no snapshot committed yet, nothing damaged")
    elif not info["damaged"]:
        lines.append(f"integrity    verified: all {info['snapshots']} snapshots intact")
    else:
        lines.append(f"integrity    DAMAGED: {len(info['damaged'])} problems")
        for d in info["damaged"]:
            where = "" if d["snapshot"] is None else f" snapshot {d['snapshot']}"
            lines.append(f"  {d['what']}{where}: {d['error']}")
    return "\n".join(lines)


def _empty_why(info: dict[str, Any]) -> str:
    if info["closed"]:
        return "closed without any"
    alive = info.get("writer_alive")
    if alive:
        return "its writer is running: wait for its first commit, or `hyperlapse watch` it"
    if alive is None and info.get("writer"):
        return "its writer runs on another host, or was killed there before its first commit"
    return "its writer was killed before its first commit; record again, or resume it"


def _checksum_text(info: dict[str, Any]) -> str:
    if info.get("checksums_bound"):
        return "CRC32C of every chunk, bound to its parameter and snapshot"
    what = (
        "no chunk checksums" if info["version"] < 2 else "each chunk's bytes are checked, but"
        " the checksums are not bound to their place (swapped shard files would read as data)"
    )
    return (f"format version {info['version']}: {what}; `hyperlapse compact` rewrites the "
            f"store as version {fmt.VERSION}")


_IO_TEXT = {
    "odirect": "snapshots written in place into preallocated shards, O_DIRECT from aligned "
    "buffers; small tensors buffered",
    "buffered": "snapshots written in place into preallocated shards, buffered pwrite",
    "zarr": "shards assembled and written through Zarr's store API",
}


def _cost_text(key: str, value: Any) -> str:
    if isinstance(value, float):
        if key.endswith("_s"):
            return f"{key} {value * 1e3:.1f} ms" if value < 1 else f"{key} {value:.2f} s"
        return f"{key} {value:.3g}"
    if key.startswith("bytes") and isinstance(value, int):
        return f"{key} {human_size(value)}"
    return f"{key} {value}"
