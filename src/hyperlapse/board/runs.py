"""The folder of runs a board follows: which stores are there and what state each is in.

Everything here is read from disk on demand and cached by file modification time, so the
board's memory holds one small entry per run, never per snapshot.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import CorruptStoreError, HyperlapseError, NotAStoreError, StoreNotReadyError
from ..store import format as fmt
from ..store.lock import writer_alive

__all__ = ["STATE_DIR", "RunIndex", "describe_store", "count_lines"]

#: The board's own folder inside DIR: analysis outputs (one sub-folder per run) and the lock
#: that makes the first board the only analyser.
STATE_DIR = ".hyperlapse-board"
#: How deep below DIR stores are looked for (``runs/sweep1/a.zarr`` is depth 2).
MAX_DEPTH = 3


def _cost(attrs: dict[str, Any]) -> dict[str, Any] | None:
    cost = attrs.get("recording_cost")
    if not isinstance(cost, dict):
        return None
    keep = ("training_blocked_fraction", "capture_mean_s", "capture_max_s", "writer_cpu_s",
            "bytes_per_snapshot", "snapshots_dropped", "elapsed_s")
    return {k: cost[k] for k in keep if isinstance(cost.get(k), (int, float))}


def _last_step(path: Path, n: int) -> int | None:
    import zarr

    if n <= 0:
        return None
    arr = zarr.open_array(str(path), path=fmt.STEP, mode="r")
    return int(arr[n - 1])


def describe_store(path: str | os.PathLike) -> dict[str, Any]:
    """What the board shows about one store, read from its metadata (one small file) and its
    last step (one chunk).

    Returns:
        ``status``: ``recording`` (a live writer holds it), ``closed`` (the writer closed it),
        ``crashed-uncommitted`` (no writer runs and it was not closed: snapshots after the last
        commit were lost), ``writer-elsewhere`` (not closed, written from another host),
        ``not-ready`` (a writer is creating it), ``damaged`` (``CorruptStoreError``) or
        ``not-a-store``; with ``snapshots``, ``last_step``, ``metrics``, ``widths``, ``mlp``
        (whether the graph analysis applies), ``recording_cost`` and ``detail`` (a sentence).
    """
    path = Path(path)
    out: dict[str, Any] = {"snapshots": 0, "last_step": None, "metrics": [], "widths": None,
                           "mlp": False, "recording_cost": None, "detail": ""}
    if not (path / "zarr.json").exists():
        return {**out, "status": "not-ready",
                "detail": "no metadata yet: a writer is creating the store"}
    try:
        attrs = fmt.read_attrs(fmt.make_store(path, read_only=True), str(path))
        n = fmt.committed(attrs)
        last = _last_step(path, n)
    except StoreNotReadyError as exc:
        return {**out, "status": "not-ready", "detail": str(exc)}
    except NotAStoreError as exc:
        return {**out, "status": "not-a-store", "detail": str(exc)}
    except CorruptStoreError as exc:
        return {**out, "status": "damaged", "detail": str(exc)}
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for damaged arrays
        return {**out, "status": "damaged", "detail": f"{type(exc).__name__}: {exc}"}
    arch = attrs.get("architecture") or {}
    widths = arch.get("widths")
    out.update(snapshots=n, last_step=last, metrics=list(attrs.get("metrics", [])),
               widths=widths, mlp=bool(widths), recording_cost=_cost(attrs),
               created=attrs.get("created"))
    if not widths:
        out["detail"] = "not an MLP: recorded, but the graph analysis does not apply"
    if attrs.get("closed"):
        out["status"] = "closed"
        return out
    alive = writer_alive(attrs.get("writer"))
    if alive is None:
        out["status"] = "writer-elsewhere"
        out["detail"] = out["detail"] or "not closed; written from another host"
    elif alive:
        out["status"] = "recording"
    else:
        out["status"] = "crashed-uncommitted"
        out["detail"] = out["detail"] or (
            "the writer stopped without closing: snapshots after its last commit are lost")
    return out


def count_lines(path: Path, cache: dict[str, Any]) -> int:
    """Complete lines of an append-only file, counting only the bytes added since the last
    call (``cache`` keeps the offset and the count: constant memory)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        cache.clear()
        return 0
    if size < cache.get("offset", 0):  # rewritten from scratch
        cache.clear()
    offset, count = cache.get("offset", 0), cache.get("count", 0)
    if size > offset:
        with open(path, "rb") as f:
            f.seek(offset)
            while True:
                block = f.read(1 << 16)
                if not block:
                    break
                end = block.rfind(b"\n")
                if end < 0:  # a torn last line: wait for its newline
                    break
                count += block.count(b"\n", 0, end + 1)
                offset += end + 1
                f.seek(offset)
    cache.update(offset=offset, count=count)
    return count


class RunIndex:
    """The stores below ``root``, rescanned at most every ``rescan_s`` seconds.

    Args:
        root: the folder of runs (``hyperlapse board DIR``).
        rescan_s: minimum seconds between two directory walks.
    """

    def __init__(self, root: str | os.PathLike, *, rescan_s: float = 1.0) -> None:
        self.root = Path(root).resolve()
        self.rescan_s = rescan_s
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}
        self._scanned = -math.inf
        self._cache: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._lines: dict[str, dict[str, Any]] = {}

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def analysis_dir(self, name: str) -> Path:
        """Where the board's analysis of run ``name`` goes: ``DIR/.hyperlapse-board/<name>``."""
        return self.state_dir / name

    def _walk(self) -> dict[str, Path]:
        found: dict[str, Path] = {}

        def visit(folder: Path, depth: int) -> None:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                return
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                p = Path(entry.path)
                if entry.name.endswith(".zarr") or (p / "zarr.json").exists():
                    found[p.relative_to(self.root).as_posix()] = p
                elif depth < MAX_DEPTH:
                    visit(p, depth + 1)

        visit(self.root, 1)
        return found

    def names(self) -> list[str]:
        """Run names (paths relative to ``root``), rescanning the folder when due."""
        with self._lock:
            now = time.monotonic()
            if now - self._scanned >= self.rescan_s:
                self._paths = self._walk()
                self._scanned = now
                for gone in set(self._cache) - set(self._paths):
                    self._cache.pop(gone, None)
                    self._lines.pop(gone, None)
            return list(self._paths)

    def path(self, name: str) -> Path:
        """The store of run ``name``.

        Raises:
            KeyError: no such run below ``root``.
        """
        if name not in self._paths:
            self.names()
        with self._lock:
            return self._paths[name]

    def describe(self, name: str) -> dict[str, Any]:
        """:func:`describe_store` of run ``name``, re-read only when its metadata changed (a
        live writer rewrites ``zarr.json`` at every commit)."""
        path = self.path(name)
        try:
            st = (path / "zarr.json").stat()
            key: Any = (st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        with self._lock:
            hit = self._cache.get(name)
        # a recording store's status depends on its writer's process too: re-check it
        if hit is not None and hit[0] == key and key is not None and \
                hit[1]["status"] not in ("recording", "not-ready"):
            return dict(hit[1])
        info = describe_store(path)
        with self._lock:
            self._cache[name] = (key, info)
        return dict(info)

    def analysed(self, name: str) -> int:
        """Snapshots of ``name`` whose report and embedding row are both written (the report
        line comes first: a page must not ask for a row that is not there yet)."""
        with self._lock:
            cache = self._lines.setdefault(name, {})
        out = self.analysis_dir(name)
        lines = count_lines(out / "reports.jsonl", cache)
        try:
            with open(out / "embeddings.zarr" / "zarr.json", encoding="utf-8") as f:
                rows = json.load(f).get("attributes", {}).get("committed")
        except (OSError, ValueError):
            return 0 if (out / "embeddings.zarr").exists() else lines
        return lines if rows is None else min(lines, int(rows))

    def runs(self) -> list[dict[str, Any]]:
        """One entry per run (``GET /api/runs``)."""
        out = []
        for name in self.names():
            try:
                info = self.describe(name)
            except KeyError:  # removed between the scan and now
                continue
            except HyperlapseError as exc:  # pragma: no cover - describe_store catches these
                info = {"status": "damaged", "detail": str(exc)}
            out.append({"name": name, **info, "analysed": self.analysed(name)})
        return out
