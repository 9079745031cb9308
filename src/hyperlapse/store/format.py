"""The trajectory store format: names, schema version, codecs, and how a location is opened.

A store is one Zarr v3 group (see ``docs/store-format.md``)::

    run.zarr/
      zarr.json          group attrs: format, version, committed, parameters, architecture, ...
      params/<name>      (T, *shape) float32 | float16 | uint16 (bfloat16 bits) | the tensor's dtype
      step               (T,) int64
      wall_time          (T,) float64 (seconds since the epoch)
      metrics/<name>     (T,) float64, NaN where the scalar was not logged

Everything here is plain Zarr with standard codecs, so ``zarr.open_group`` (and xarray/dask)
read a store without hyperlapse. Readers must take the first ``attrs["committed"]`` entries of
every array and never trust an array's shape.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from ..errors import IncompatibleStoreError, MissingDependencyError, NotAStoreError, StoreError

FORMAT = "hyperlapse.trajectory"
VERSION = 1

PARAMS = "params"
STEP = "step"
WALL_TIME = "wall_time"
METRICS = "metrics"

#: Target bytes of one shard of one parameter when ``snapshots_per_chunk`` is not given.
SHARD_TARGET_BYTES = 64 * 2**20
MIN_SNAPSHOTS_PER_CHUNK = 16
MAX_SNAPSHOTS_PER_CHUNK = 1024
#: Chunk length of the 1-D arrays (step, wall_time, metrics), rounded to a multiple of k.
SCALAR_CHUNK = 1024

#: Logical dtype name -> numpy dtype stored in Zarr. bfloat16 has no numpy dtype: its bits are
#: stored as uint16 and the array attr ``hyperlapse_dtype`` says "bfloat16".
STORED_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}


def default_compressor(stored_dtype: str) -> Any:
    """The compressor for a stored dtype, chosen by measurement (docs/store-format.md).

    float32 weights: blosc(lz4) + bitshuffle keeps 0.88 of the raw bytes at ~370 MB/s (plain
    zstd: 0.92 at ~120-230 MB/s). 2-byte dtypes: zstd level 1 keeps 0.91 of the float16 bytes
    (bitshuffle does not help there).
    """
    itemsize = np.dtype(stored_dtype).itemsize
    if itemsize == 2:
        return ZstdCodec(level=1)
    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=itemsize)


def snapshots_per_chunk_for(snapshot_bytes: int) -> int:
    """Default shard length k: about ``SHARD_TARGET_BYTES`` per shard of the largest parameter."""
    k = SHARD_TARGET_BYTES // max(int(snapshot_bytes), 1)
    return int(min(max(k, MIN_SNAPSHOTS_PER_CHUNK), MAX_SNAPSHOTS_PER_CHUNK))


def is_url(location: str | os.PathLike) -> bool:
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def local_path(location: str | os.PathLike) -> Path:
    text = os.fspath(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(text).expanduser()


def make_store(location: str | os.PathLike, *, read_only: bool) -> Any:
    """A Zarr store for a local path or any URL fsspec understands.

    Raises:
        MissingDependencyError: the URL's protocol needs a package that is not installed.
        StoreError: the protocol is unknown.
    """
    if not is_url(location):
        return zarr.storage.LocalStore(local_path(location), read_only=read_only)
    url = str(location)
    try:
        return zarr.storage.FsspecStore.from_url(url, read_only=read_only)
    except ImportError as exc:
        raise MissingDependencyError(
            f"Opening '{url}' needs an fsspec backend for protocol "
            f"'{url.split('://')[0]}' that is not installed ({exc}). "
            f"Install it (pip install {_fsspec_package(url)}) and try again."
        ) from exc
    except ValueError as exc:
        raise StoreError(
            f"Expected a local path or a URL with a protocol fsspec knows, but got '{url}' "
            f"({exc}). Use a local path, memory://, s3://, gs://, ... and try again."
        ) from exc


def _fsspec_package(url: str) -> str:
    protocol = url.split("://")[0]
    try:
        from fsspec.registry import known_implementations

        err = known_implementations.get(protocol, {}).get("err", "")
    except ImportError:  # pragma: no cover - fsspec ships with the test extra
        err = ""
    words = [w.strip(".,'\"") for w in err.split()]
    for i, word in enumerate(words[:-1]):
        if word.lower() == "install":
            return words[i + 1]
    return "fsspec"


def store_exists(location: str | os.PathLike) -> bool:
    """Whether anything exists at ``location`` (a local path that exists, or a URL with keys)."""
    if not is_url(location):
        return local_path(location).exists()
    try:
        zarr.open_group(make_store(location, read_only=True), mode="r")
        return True
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.NodeTypeValidationError):
        return False


def open_group(location: str | os.PathLike, *, read_only: bool) -> zarr.Group:
    """Open an existing hyperlapse store; raise NotAStoreError for anything else."""
    where = os.fspath(location)
    if not is_url(location):
        path = local_path(location)
        if not path.exists():
            raise NotAStoreError(
                f"Expected a hyperlapse trajectory store at '{where}', but nothing exists there. "
                f"Check the path, or record one with hyperlapse.TrajectoryRecorder."
            )
        if not (path / "zarr.json").is_file():
            raise NotAStoreError(
                f"Expected a hyperlapse trajectory store (a Zarr v3 group) at '{where}', but it "
                f"has no zarr.json. Pass the *.zarr folder the recorder wrote."
            )
    try:
        group = zarr.open_group(
            make_store(location, read_only=read_only), mode="r" if read_only else "r+"
        )
    except (FileNotFoundError, zarr.errors.NodeTypeValidationError, KeyError) as exc:
        raise NotAStoreError(
            f"Expected a hyperlapse trajectory store at '{where}', but found no Zarr group "
            f"there ({type(exc).__name__}: {exc}). Check the path or URL."
        ) from exc
    check_format(group.attrs, where)
    return group


def check_format(attrs: Mapping[str, Any], where: str) -> None:
    """Raise unless ``attrs`` belong to a hyperlapse store of a version this code reads."""
    if attrs.get("format") != FORMAT:
        raise NotAStoreError(
            f"Expected a hyperlapse trajectory store at '{where}' (attrs format '{FORMAT}'), but "
            f"the Zarr group there has format {attrs.get('format')!r}. hyperlapse does not "
            f"touch it; choose another path."
        )
    version = attrs.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise StoreError(
            f"The store at '{where}' has format version {version!r}, but this hyperlapse reads "
            f"versions <= {VERSION}. Upgrade hyperlapse to read it."
        )


def committed(attrs: Mapping[str, Any]) -> int:
    """Number of complete snapshots: the only length a reader may trust."""
    return int(attrs.get("committed", 0))


def check_compatible(
    attrs: Mapping[str, Any],
    parameters: list[dict[str, Any]],
    architecture: dict[str, Any] | None,
    where: str,
) -> None:
    """Raise IncompatibleStoreError if an existing store was written for another model."""
    old = {p["name"]: (tuple(p["shape"]), p["dtype"]) for p in attrs.get("parameters", [])}
    new = {p["name"]: (tuple(p["shape"]), p["dtype"]) for p in parameters}
    if old != new:
        missing = sorted(set(old) - set(new))
        extra = sorted(set(new) - set(old))
        changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
        detail = "; ".join(
            part
            for part in (
                f"missing from the model: {missing[:5]}" if missing else "",
                f"new in the model: {extra[:5]}" if extra else "",
                ", ".join(f"'{n}' stored {old[n]} but model has {new[n]}" for n in changed[:5]),
            )
            if part
        )
        raise IncompatibleStoreError(
            f"Expected the model to have the parameters stored in '{where}', but they differ "
            f"({detail}). The store was left untouched; record to a new path, or use the same "
            f"model, dtype and buffers= setting to resume."
        )
    if (attrs.get("architecture") or None) != (architecture or None):
        old_w = (attrs.get("architecture") or {}).get("widths")
        new_w = (architecture or {}).get("widths")
        raise IncompatibleStoreError(
            f"Expected the same architecture as the store at '{where}' (widths {old_w}), but "
            f"the model has widths {new_w}. The store was left untouched; record to a new path."
        )
