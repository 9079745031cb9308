"""Where a store lives, resolved once: a local folder or a URL (zarr's ``StorePath`` idea).

Every function of :mod:`hyperlapse.store` that takes a location accepts a
:class:`StoreLocation` or anything :meth:`StoreLocation.of` turns into one (a path, a
``file://`` or remote URL, bytes), so the text is parsed here and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

from ..errors import StoreError

__all__ = ["StoreLocation", "LocationLike"]

LocationLike = Union["StoreLocation", str, bytes, os.PathLike]


@dataclass(frozen=True)
class StoreLocation:
    """A store's location.

    Attributes:
        shown: the location as the user gave it (for messages).
        url: the fsspec URL of a remote store (``s3://...``, ``memory://...``), else ``None``.
        path: the local folder, else ``None``. The writer may point it at another name of the
            same folder (a descriptor path that survives renames) while ``shown`` stays.
    """

    shown: str
    url: str | None = None
    path: Path | None = None

    @classmethod
    def of(cls, location: LocationLike) -> StoreLocation:
        """Resolve ``location`` once.

        Raises:
            StoreError: ``location`` is neither a path nor a URL.
        """
        if isinstance(location, StoreLocation):
            return location
        if isinstance(location, bytes):
            location = os.fsdecode(location)
        if not isinstance(location, (str, os.PathLike)):
            raise StoreError(
                f"Expected a store location (a path or a URL such as 's3://bucket/run.zarr'), "
                f"but got {type(location).__name__} {location!r}. Pass a str or pathlib.Path."
            )
        text = os.fspath(location)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        if "://" in text and not text.startswith("file://"):
            return cls(shown=text, url=text)
        local = text[len("file://") :] if text.startswith("file://") else text
        return cls(shown=text, path=Path(local).expanduser())

    @property
    def is_url(self) -> bool:
        return self.url is not None

    @property
    def protocol(self) -> str | None:
        return self.url.split("://", 1)[0] if self.url is not None else None

    def local(self) -> Path:
        """The local folder (raises for a URL: callers check :attr:`is_url` first)."""
        if self.path is None:
            raise StoreError(f"Expected a local store, got the URL '{self.shown}'.")
        return self.path

    def sibling(self, suffix: str) -> StoreLocation:
        """A local location next to this one: ``<name><suffix>`` in the same folder."""
        path = self.local()
        return StoreLocation(shown=f"{self.shown}{suffix}", path=path.with_name(path.name + suffix))

    def at(self, path: Path) -> StoreLocation:
        """The same store (same :attr:`shown`) reached through another local path."""
        return replace(self, path=path)

    def __str__(self) -> str:
        return self.shown

    def __fspath__(self) -> str:  # lets old helpers taking str | PathLike accept it
        return self.url if self.url is not None else str(self.local())

    def make_store(self, *, read_only: bool) -> Any:
        """A Zarr store here (see :func:`hyperlapse.store.format.make_store`)."""
        from .format import make_store

        return make_store(self, read_only=read_only)
