"""The trajectory store format: names, schema version, codecs, and how a location is opened.

A store is one Zarr v3 group (see ``docs/store-format.md``)::

    run.zarr/
      zarr.json          group attrs: format, version, committed, parameters, architecture, ...
      params/<name>      (T, *shape) float32 | float16 | uint16 (bfloat16 bits) | the tensor's dtype
      step               (T,) int64
      wall_time          (T,) float64 (seconds since the epoch)
      metrics/<name>     (T,) float64, NaN where the scalar was not logged

Everything here is plain Zarr with standard codecs (every chunk ends with its ``crc32c``), so
``zarr.open_group`` (and xarray/dask) read a store without hyperlapse. Readers must take the
first ``attrs["committed"]`` entries of every array and never trust an array's shape (it runs
ahead while a run is live, geometrically). This module also validates what a reader relies on
(:func:`read_attrs`): malformed metadata raises ``CorruptStoreError``, never a raw traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import (
    CorruptStoreError,
    IncompatibleStoreError,
    MissingDependencyError,
    NotAStoreError,
    StoreError,
)
from .location import LocationLike, StoreLocation

FORMAT = "hyperlapse.trajectory"
#: Version written by this code. Version 2 added checksums of every inner chunk, per-layer
#: dimension names, geometric growth of live arrays and the writer lock.
VERSION = 2
#: Versions this code reads.
READ_VERSIONS = (1, 2)

PARAMS = "params"
STEP = "step"
WALL_TIME = "wall_time"
METRICS = "metrics"
#: Optional ``(B, n_0)`` float32 probe inputs stored with a run (``TrajectoryRecorder(probes=)``);
#: attrs ``probes`` = ``{"num", "features"}`` says they are there.
PROBES = "probes"
SNAPSHOT_DIM = "snapshot"

#: Target bytes of one shard of one parameter when ``snapshots_per_chunk`` is not given.
SHARD_TARGET_BYTES = 64 * 2**20
MIN_SNAPSHOTS_PER_CHUNK = 16
MAX_SNAPSHOTS_PER_CHUNK = 1024
#: Chunk length of the 1-D arrays (step, wall_time, metrics), rounded to a multiple of k.
SCALAR_CHUNK = 1024

#: Logical dtype name -> numpy dtype stored in Zarr. bfloat16 has no numpy dtype: its bits are
#: stored as uint16 and the array attr ``hyperlapse_dtype`` says "bfloat16".
STORED_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
#: Logical dtypes a store may hold (floating tensors in the recording dtype, integer and bool
#: buffers/parameters in their own).
SUPPORTED_DTYPES = (
    "float32", "float16", "bfloat16", "float64",
    "bool", "uint8", "int8", "int16", "int32", "int64",
)


def default_compressor(stored_dtype: str) -> Any:
    """The compressor for a stored dtype, chosen by measurement (docs/store-format.md).

    float32 weights: blosc(lz4) + bitshuffle keeps 0.88 of the raw bytes at ~370 MB/s (plain
    zstd: 0.92 at ~120-230 MB/s). 1- and 2-byte dtypes: zstd level 1 (0.91 of float16 bytes;
    bitshuffle does not help there).
    """
    itemsize = np.dtype(stored_dtype).itemsize
    if itemsize <= 2:
        return ZstdCodec(level=1)
    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=itemsize)


#: ``compression=`` choices of the recorder/writer: "auto" is the measured default per dtype.
COMPRESSIONS = ("auto", "none", "lz4", "zstd")


def check_compression(compression: Any) -> str:
    """Validate a ``compression=`` choice (raises ConfigError)."""
    if compression is None:
        return "none"
    if compression not in COMPRESSIONS:
        from ..errors import ConfigError

        raise ConfigError(
            f"Expected compression to be one of {list(COMPRESSIONS)} (or None for 'none'), but "
            f"got {compression!r}. 'auto' is the measured default; 'none' costs no CPU and "
            f"stores the raw bytes; compact a closed store later to save space."
        )
    return str(compression)


def resolve_compression(compression: str, location: str | os.PathLike) -> str:
    """The recorder's choice for ``compression="auto"``: "none" on local stores (fixed-size
    chunks, written in place by the fast path; ``hyperlapse compact`` compresses a closed store
    afterwards), the measured compressor per dtype on object stores (no fast path there;
    compression saves upload bytes). Other choices are returned as they are."""
    if compression == "auto" and not is_url(location):
        return "none"
    return compression


def param_compressors(stored_dtype: str, compression: str = "auto") -> list[Any]:
    """The bytes-to-bytes codecs of a params array's inner chunks (version 2).

    The last one is always ``crc32c``: every inner chunk carries its checksum, so a damaged
    snapshot is detected by hyperlapse and by plain Zarr alike. ``compression="none"`` keeps
    only ``crc32c``: inner chunks then have a fixed size (``nbytes + 4``), so a shard's index is
    known before any snapshot arrives (the planned fill-in-place writer builds on that).
    """
    compression = check_compression(compression)
    itemsize = np.dtype(stored_dtype).itemsize
    if compression == "auto":
        return [default_compressor(stored_dtype), Crc32cCodec()]
    if compression == "none":
        return [Crc32cCodec()]
    if compression == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=itemsize),
                Crc32cCodec()]
    return [ZstdCodec(level=1), Crc32cCodec()]


def dimension_names(
    parameters: list[dict[str, Any]], architecture: dict[str, Any] | None
) -> dict[str, tuple[str, ...]]:
    """Dimension names of every params array, unique wherever sizes differ (xarray-safe).

    Layers of an MLP share names between their weight and bias: ``<layer>_out`` (rows of the
    weight, the bias) and ``<layer>_in``. Other tensors get ``<name>_out``/``<name>_in`` (2-D)
    or ``<name>_dim<i>``. The first dimension is always ``snapshot``.
    """
    out: dict[str, tuple[str, ...]] = {}
    for layer in (architecture or {}).get("layers", []):
        out[layer["weight"]] = (f"{layer['name']}_out", f"{layer['name']}_in")
        if layer.get("bias"):
            out[layer["bias"]] = (f"{layer['name']}_out",)
    sizes: dict[str, int] = {}
    result = {}
    for p in parameters:
        shape = list(p["shape"])
        names = out.get(p["name"])
        if names is None or len(names) != len(shape):
            if len(shape) == 2:
                names = (f"{p['name']}_out", f"{p['name']}_in")
            else:
                names = tuple(f"{p['name']}_dim{i}" for i in range(len(shape)))
        if any(sizes.setdefault(n, s) != s for n, s in zip(names, shape, strict=True)):
            names = tuple(f"{p['name']}_dim{i}" for i in range(len(shape)))  # sizes disagree
            for n, s in zip(names, shape, strict=True):
                sizes[n] = s
        result[p["name"]] = (SNAPSHOT_DIM, *names)
    return result


def snapshots_per_chunk_for(snapshot_bytes: int) -> int:
    """Default shard length k: about ``SHARD_TARGET_BYTES`` per shard of the largest parameter."""
    k = SHARD_TARGET_BYTES // max(int(snapshot_bytes), 1)
    return int(min(max(k, MIN_SNAPSHOTS_PER_CHUNK), MAX_SNAPSHOTS_PER_CHUNK))


def is_url(location: LocationLike) -> bool:
    return StoreLocation.of(location).is_url


def local_path(location: LocationLike) -> Path:
    return StoreLocation.of(location).local()


def make_store(location: LocationLike, *, read_only: bool) -> Any:
    """A Zarr store for a local path or any URL fsspec understands.

    Raises:
        MissingDependencyError: the URL's protocol needs a package that is not installed.
        StoreError: the protocol is unknown.
    """
    loc = StoreLocation.of(location)
    if loc.url is None:
        return zarr.storage.LocalStore(loc.local(), read_only=read_only)
    url = loc.url
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
    """Whether anything exists at ``location`` (a local path, even a broken link, or a URL with
    a ``zarr.json``)."""
    if not is_url(location):
        return os.path.lexists(local_path(location))
    try:
        return sync(make_store(location, read_only=True).exists("zarr.json"))
    except (FileNotFoundError, OSError):
        return False


_DAMAGED = (
    "Restore the store from a copy, or record to a new path; `hyperlapse info --verify STORE` "
    "lists every damaged snapshot."
)


def check_location(location: str | os.PathLike) -> None:
    """Raise NotAStoreError unless a local ``location`` is a folder with a ``zarr.json``."""
    if is_url(location):
        return
    where = str(StoreLocation.of(location))
    path = local_path(location)
    if not os.path.lexists(path):
        raise NotAStoreError(
            f"Expected a hyperlapse trajectory store at '{where}', but nothing exists there. "
            f"Check the path, or record one with hyperlapse.TrajectoryRecorder."
        )
    try:
        path.stat()
    except OSError as exc:  # a symlink loop or a dangling link
        raise NotAStoreError(
            f"Expected a hyperlapse trajectory store at '{where}', but it is a link that does "
            f"not resolve ({exc.strerror or exc}). Fix or remove the link and pass the *.zarr "
            f"folder itself."
        ) from exc
    if not path.is_dir():
        raise NotAStoreError(
            f"Expected a hyperlapse trajectory store (a folder) at '{where}', but found a file. "
            f"Pass the *.zarr folder the recorder wrote."
        )
    if not (path / "zarr.json").exists():
        raise NotAStoreError(
            f"Expected a hyperlapse trajectory store (a Zarr v3 group) at '{where}', but it "
            f"has no zarr.json. Pass the *.zarr folder the recorder wrote."
        )


def read_attrs(store: Any, where: str) -> dict[str, Any]:
    """The validated group attributes of the store: one read of the group's ``zarr.json``.

    Raises:
        NotAStoreError: no Zarr group, or not a hyperlapse store, is there.
        CorruptStoreError: the metadata is unreadable or its attributes have the wrong types.
        StoreError: a newer format version.
    """
    try:
        buf = sync(store.get("zarr.json", prototype=default_buffer_prototype()))
    except (OSError, RuntimeError) as exc:
        raise CorruptStoreError(
            f"Expected to read the group metadata of the store at '{where}', but reading "
            f"zarr.json failed ({type(exc).__name__}: {exc}). {_DAMAGED}"
        ) from exc
    if buf is None:
        raise NotAStoreError(
            f"Expected a hyperlapse trajectory store at '{where}', but found no Zarr group "
            f"there (no zarr.json). Check the path or URL."
        )
    try:
        meta = json.loads(buf.to_bytes())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptStoreError(
            f"Expected the store's zarr.json at '{where}' to hold JSON group metadata, but it "
            f"is not valid JSON ({exc}; {len(buf)} bytes). {_DAMAGED}"
        ) from exc
    if not isinstance(meta, dict):
        raise CorruptStoreError(
            f"Expected the store's zarr.json at '{where}' to hold a JSON object, but it holds a "
            f"{type(meta).__name__}. {_DAMAGED}"
        )
    if meta.get("node_type") == "array":
        raise NotAStoreError(
            f"Expected a hyperlapse trajectory store (a Zarr group) at '{where}', but found a "
            f"Zarr array there. Pass the store's root folder, not one of its arrays."
        )
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise NotAStoreError(
            f"Expected a Zarr v3 group at '{where}', but its zarr.json says zarr_format="
            f"{meta.get('zarr_format')!r}, node_type={meta.get('node_type')!r}. Pass a "
            f"store written by hyperlapse."
        )
    attrs = meta.get("attributes", {})
    if not isinstance(attrs, dict):
        raise CorruptStoreError(
            f"Expected the attributes in zarr.json at '{where}' to be an object, but they are a "
            f"{type(attrs).__name__}. {_DAMAGED}"
        )
    check_format(attrs, where)
    validate_attrs(attrs, where)
    return attrs


def open_group(location: str | os.PathLike, *, read_only: bool) -> zarr.Group:
    """Open an existing hyperlapse store; raise NotAStoreError for anything else."""
    where = str(StoreLocation.of(location))
    check_location(location)
    store = make_store(location, read_only=read_only)
    read_attrs(store, where)
    try:
        return zarr.open_group(store, mode="r" if read_only else "r+")
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for a bad group
        raise CorruptStoreError(
            f"Expected a Zarr group at '{where}', but zarr could not open it "
            f"({type(exc).__name__}: {exc}). {_DAMAGED}"
        ) from exc


def check_format(attrs: Mapping[str, Any], where: str) -> None:
    """Raise unless ``attrs`` belong to a hyperlapse store of a version this code reads."""
    if attrs.get("format") != FORMAT:
        raise NotAStoreError(
            f"Expected a hyperlapse trajectory store at '{where}' (attrs format '{FORMAT}'), but "
            f"the Zarr group there has format {attrs.get('format')!r}. hyperlapse does not "
            f"touch it; choose another path."
        )
    version = attrs.get("version")
    if not _is_int(version) or version < 1:
        raise CorruptStoreError(
            f"Expected the store at '{where}' to have an integer format version, but its attrs "
            f"say version={version!r}. {_DAMAGED}"
        )
    if version not in READ_VERSIONS:
        raise StoreError(
            f"The store at '{where}' has format version {version!r}, but this hyperlapse reads "
            f"versions {list(READ_VERSIONS)}. Upgrade hyperlapse to read it."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_attr(where: str, key: str, expected: str, value: Any) -> CorruptStoreError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CorruptStoreError(
        f"The store at '{where}' is damaged: its attribute '{key}' should be {expected}, but it "
        f"is {shown} ({type(value).__name__}). {_DAMAGED}"
    )


def validate_attrs(attrs: Mapping[str, Any], where: str) -> None:
    """Check the types of the attributes a reader relies on (CorruptStoreError otherwise)."""
    for key in ("committed", "snapshots_per_chunk"):
        if key not in attrs:
            raise _bad_attr(where, key, "present", None)
    if not _is_int(attrs["committed"]) or attrs["committed"] < 0:
        raise _bad_attr(where, "committed", "a non-negative integer", attrs["committed"])
    k = attrs["snapshots_per_chunk"]
    if not _is_int(k) or k < 1:
        raise _bad_attr(where, "snapshots_per_chunk", "a positive integer", k)
    params = attrs.get("parameters")
    if not isinstance(params, list) or not params:
        raise _bad_attr(where, "parameters", "a non-empty list of {name, shape, dtype}", params)
    for p in params:
        ok = (
            isinstance(p, dict)
            and isinstance(p.get("name"), str)
            and isinstance(p.get("shape"), list)
            and all(_is_int(s) and s >= 0 for s in p["shape"])
            and p.get("dtype") in SUPPORTED_DTYPES + ("uint16",)
        )
        if not ok:
            raise _bad_attr(where, "parameters", "a list of {name, shape, dtype}", p)
    metrics = attrs.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise _bad_attr(where, "metrics", "a list of names", metrics)
    for key in ("dropped", "report_dropped", "nonfinite"):
        if key in attrs and (not _is_int(attrs[key]) or attrs[key] < 0):
            raise _bad_attr(where, key, "a non-negative integer", attrs[key])
    if "closed" in attrs and not isinstance(attrs["closed"], bool):
        raise _bad_attr(where, "closed", "true or false", attrs["closed"])
    arch = attrs.get("architecture")
    if arch is not None and not isinstance(arch, dict):
        raise _bad_attr(where, "architecture", "an object or null", arch)


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
