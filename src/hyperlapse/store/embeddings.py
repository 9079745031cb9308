"""The embeddings format: ``embeddings.zarr`` beside an analysis' ``reports.jsonl``.

One Zarr v3 group, written by ``hyperlapse analyze`` / ``watch`` / the board's analysis::

    embeddings.zarr/
      zarr.json     attrs: format "hyperlapse.embeddings", version, d, manifold, c,
                    architecture, node_types, store, seed, source_index (list), committed
      z             (T, N, d) float32, one chunk per snapshot
      step          (T,) int64 optimizer step of each row
      node_layer, node_index, node_type    (N,) int64 node table

Rows are appended one snapshot at a time; like a trajectory store, a reader trusts only
``attrs["committed"]`` (updated after the rows' data is written), never an array's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NotAStoreError

__all__ = [
    "EMBEDDINGS_FORMAT",
    "EMBEDDINGS_VERSION",
    "EmbeddingsWriter",
    "open_embeddings",
    "read_embeddings",
]

#: ``format`` attribute of ``embeddings.zarr``.
EMBEDDINGS_FORMAT = "hyperlapse.embeddings"
#: 2: xarray dimension names on every array; 3: appendable, ``committed`` attribute.
EMBEDDINGS_VERSION = 3
_STEP_CHUNK = 1024


class EmbeddingsWriter:
    """Append ``z_t`` rows to ``embeddings.zarr``.

    Args:
        path: the group's folder.
        table: ``{"node_layer", "node_index", "node_type"}`` ``[N]`` int64.
        attrs: must hold ``d``; stored as the group's attributes.
        resume: keep the first ``resume`` committed rows of an existing group of the same
            shape and append after them (``None``: start a new group).

    Example:
        >>> import tempfile
        >>> table = {k: torch.arange(3) for k in ("node_layer", "node_index", "node_type")}
        >>> path = Path(tempfile.mkdtemp()) / "embeddings.zarr"
        >>> w = EmbeddingsWriter(path, table, {"d": 2})
        >>> w.append(0, torch.zeros(3, 2)); w.append(10, torch.ones(3, 2))
        >>> read_embeddings(path)["step"].tolist()
        [0, 10]
    """

    def __init__(
        self,
        path: str | Path,
        table: Mapping[str, torch.Tensor],
        attrs: Mapping[str, Any],
        *,
        resume: int | None = None,
    ) -> None:
        import zarr

        self.path = Path(path)
        n = int(table["node_layer"].numel())
        d = int(attrs["d"])
        if resume is not None:
            self.group = zarr.open_group(str(self.path), mode="r+")
            self.z, self.step = self.group["z"], self.group["step"]
            self.count = int(resume)
            self.z.resize((self.count, n, d))
            self.step.resize((self.count,))
            self.group.attrs.update({"committed": self.count})
            self.source_index = list(self.group.attrs.get("source_index", []))[: self.count]
            return
        self.group = zarr.open_group(str(self.path), mode="w")
        self.group.attrs.update(
            {"format": EMBEDDINGS_FORMAT, "version": EMBEDDINGS_VERSION, **attrs,
             "source_index": [], "committed": 0}
        )
        self.z = self.group.create_array(
            "z", shape=(0, n, d), chunks=(1, n, d), dtype="f4",
            dimension_names=("snapshot", "node", "dim"),
        )
        self.step = self.group.create_array(
            "step", shape=(0,), chunks=(_STEP_CHUNK,), dtype="i8", dimension_names=("snapshot",)
        )
        for name, values in table.items():
            arr = self.group.create_array(
                name, shape=(n,), chunks=(n,), dtype="i8", dimension_names=("node",)
            )
            arr[:] = values.numpy().astype(np.int64)
        self.count = 0
        self.source_index: list[int] = []

    def append(self, step: int, z: torch.Tensor, source_index: int | None = None) -> None:
        """Append one row (``z`` ``[N, d]``) and commit it."""
        t = self.count
        self.z.resize((t + 1, *self.z.shape[1:]))
        self.z[t] = z.detach().to(torch.float32).cpu().numpy()
        self.step.resize((t + 1,))
        self.step[t] = int(step)
        self.count = t + 1
        self.source_index.append(t if source_index is None else int(source_index))
        self.group.attrs.update({"committed": self.count, "source_index": self.source_index})

    def close(self) -> None:
        """Nothing buffered: every row is committed by :meth:`append` (kept for symmetry)."""


def open_embeddings(path: str | Path) -> tuple[Any, dict[str, Any], int]:
    """Open ``embeddings.zarr`` read-only without loading it: ``(group, attrs, committed)``;
    readers take rows ``[:committed]`` only (rows past it may still be being written).

    Raises:
        NotAStoreError: ``path`` is not (yet) an embeddings store written by hyperlapse.
    """
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for "not there"
        raise NotAStoreError(
            f"Expected an embeddings store written by hyperlapse at '{path}', but could not "
            f"open it ({type(exc).__name__}: {exc}). If an analysis is running, wait for its "
            f"first snapshot."
        ) from None
    attrs = dict(group.attrs)
    if attrs.get("format") != EMBEDDINGS_FORMAT:
        raise NotAStoreError(
            f"Expected format {EMBEDDINGS_FORMAT!r} at '{path}', got {attrs.get('format')!r}."
        )
    n = attrs.get("committed")
    n = int(group["step"].shape[0]) if n is None else int(n)  # version 2: whole arrays
    return group, attrs, n


def read_embeddings(path: str | Path) -> dict[str, Any]:
    """Read ``embeddings.zarr``: ``{"z" [T, N, d], "step" [T], "node_layer", "node_index",
    "node_type" [N], "attrs"}`` as tensors (the committed rows only).

    Raises:
        NotAStoreError: ``path`` is not an embeddings store written by hyperlapse.
    """
    group, attrs, n = open_embeddings(path)
    out: dict[str, Any] = {
        name: torch.from_numpy(np.asarray(group[name][:n]))
        for name in ("z", "step")
    }
    for name in ("node_layer", "node_index", "node_type"):
        out[name] = torch.from_numpy(np.asarray(group[name][...]))
    out["attrs"] = attrs
    return out
