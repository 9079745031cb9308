"""What a recorder does with a store already at its path (``RecorderConfig.mode``).

Resuming is a decision, not an accident: a new run is never appended to an old one. ``"auto"``
creates a store when nothing is there and continues one only when the model is the stored
run's continuation: its recorded tensors equal the last committed snapshot bit for bit in the
stored dtype (read back with hyperlapse's own reader), or the recorder's ``load_state_dict``
restores a checkpoint. Otherwise the recorder refuses with a
:class:`~hyperlapse.errors.StoreExistsError` naming the store's last step and the choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import HyperlapseError, NotAStoreError, StoreExistsError
from ..store import format as fmt
from ..store.writer import StoreWriter

__all__ = ["ExistingRun", "existing_run", "open_writer", "refusal"]

#: the StoreWriter modes of each recorder mode (contract C1 of the store branch)
_WRITER_MODES = {"auto": "append", "resume": "append", "overwrite": "replace", "new": "create"}


class ExistingRun:
    """The committed part of a store found at a recorder's path."""

    def __init__(
        self, path: str, attrs: dict[str, Any], committed: int, last_step: int, last: Any
    ) -> None:
        self.path, self.attrs, self.committed = path, attrs, committed
        self.last_step, self._last = last_step, last

    def continued_by(self, names: Sequence[str], tensors: Sequence[torch.Tensor],
                     dtype: torch.dtype) -> bool | None:
        """Whether ``tensors`` equal the last committed snapshot bit for bit, in the stored
        dtype (floating tensors are stored as ``dtype``); ``None`` when the store holds other
        tensors (the writer then says how they differ)."""
        state = self._last
        if set(state) != set(names):
            return None
        for name, tensor in zip(names, tensors, strict=True):
            stored = state[name]
            here = tensor.detach()
            if here.is_floating_point():
                here = here.to(dtype)
            here = here.to("cpu", stored.dtype)
            if tuple(here.shape) != tuple(stored.shape):
                return None
            if not torch.equal(_bits(here), _bits(stored)):
                return False
        return True


def existing_run(path: str) -> ExistingRun | None:
    """The store at ``path`` when it holds committed snapshots, else ``None`` (nothing there,
    an empty folder, a store killed before its first commit, or something the writer will
    refuse with its own error)."""
    if not fmt.store_exists(path) or _is_empty_dir(path):
        return None
    from ..store.reader import open_trajectory

    try:
        traj = open_trajectory(path)
        committed = len(traj)
        if committed == 0:
            return None
        return ExistingRun(
            path, dict(traj.attrs), committed, int(traj.steps[-1]), traj[committed - 1]
        )
    except HyperlapseError:  # empty, not ready, not a store, damaged: the writer decides
        return None


def refusal(run: ExistingRun, mode: str) -> StoreExistsError:
    """The error for a model that does not continue ``run``."""
    return StoreExistsError(
        f"Expected a new store or the continuation of the run stored at '{run.path}' "
        f"(mode={mode!r}), but it holds {run.committed} committed snapshots up to step "
        f"{run.last_step} and the model's weights differ from the last one (a freshly "
        f"initialised model?). Nothing was written. Choose: mode='overwrite' to replace that "
        f"store, mode='new' with another path to keep it, or resume the run: load the "
        f"checkpoint into the model and call recorder.load_state_dict(checkpoint['recorder'])."
    )


def open_writer(path: str, mode: str, parameters: list[dict[str, Any]], **kwargs: Any
                ) -> StoreWriter:
    """A :class:`StoreWriter` for the recorder's ``mode``.

    Raises:
        NotAStoreError: ``mode="resume"`` and no store holds a committed snapshot at ``path``.
        StoreExistsError: ``mode="new"`` and something exists at ``path`` (the writer's).
    """
    if mode == "resume" and existing_run(path) is None:
        raise NotAStoreError(
            f"Expected a store to resume at '{path}' (mode='resume'), but none with a "
            f"committed snapshot is there. Check the path, or pass mode='auto' to create one."
        )
    try:
        return StoreWriter(path, parameters, mode=_WRITER_MODES[mode], **kwargs)
    except StoreExistsError as exc:  # said in the recorder's words, not the writer's modes
        if mode != "new":
            raise
        raise StoreExistsError(
            f"Expected nothing at '{path}' (mode='new'), but something is there. Pass another "
            f"path, mode='overwrite' to replace it, or mode='auto' to continue the stored run "
            f"with its continuation. ({exc})"
        ) from exc


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _is_empty_dir(location: str) -> bool:
    if fmt.is_url(location):
        return False
    path = fmt.local_path(location)
    return path.is_dir() and not any(path.iterdir())
