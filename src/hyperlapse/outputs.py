"""Check an output location before the work that fills it starts.

Every command that writes a folder (``analyze``/``watch``/``sweep --out``, a zoo) or a file
(``predict fit --out``) calls :func:`check_output_dir` or :func:`check_output_file` first, so an
existing file where a folder is expected, a read-only folder or an impossible path (``/proc/x``)
is reported in seconds, not after the training or the analysis: as an
:class:`~hyperlapse.errors.OutputError` that says what was expected, what was found and what to
do. The check writes and removes a probe file, which is the only test that holds for every
cause (permissions, read-only mounts, pseudo file systems, running as root).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError, OutputError

__all__ = ["as_local_path", "check_output_dir", "check_output_file"]


def as_local_path(value: Any, *, what: str) -> Path:
    """``value`` (a ``str`` or ``os.PathLike``) as a local :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``value`` is ``bytes`` or another type, or a URL (outputs are local).

    Example:
        >>> as_local_path("~/report", what="the report folder").name
        'report'
    """
    if isinstance(value, (bytes, bytearray)):
        raise ConfigError(
            f"Expected {what} as a str or pathlib.Path, but got bytes {bytes(value)!r}. Pass "
            f"os.fsdecode(path) (or path.decode()) instead."
        )
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(
            f"Expected {what} as a str or pathlib.Path, but got {type(value).__name__} "
            f"{value!r}."
        )
    text = os.fspath(value)
    if isinstance(text, bytes):  # an os.PathLike whose __fspath__ returns bytes
        raise ConfigError(
            f"Expected {what} as a str or pathlib.Path, but got a path of bytes {text!r}. Pass "
            f"os.fsdecode(path) instead."
        )
    if "://" in text and not text.startswith("file://"):
        raise ConfigError(
            f"Expected {what} to be a local path, but got the URL '{text}'. Write to a local "
            f"folder and copy the result, or mount the remote storage."
        )
    return Path(text.removeprefix("file://")).expanduser()


def _reason(exc: OSError) -> str:
    """``"permission denied [EACCES] at '/x'"``: the cause in words, its errno name, where."""
    words = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.EROFS: "the file system is read-only", errno.ENOSPC: "the disk is full",
             errno.ENOENT: "no such file or folder (a place where nothing can be created?)"}
    text = words.get(exc.errno) or (exc.strerror or type(exc).__name__).lower()
    code = errno.errorcode.get(exc.errno or 0)
    where = f" at '{exc.filename}'" if exc.filename else ""
    return f"{text}{f' [{code}]' if code else ''}{where}"


def _blocking_file(path: Path) -> Path | None:
    """The first ancestor of ``path`` (or ``path`` itself) that exists and is not a folder."""
    for part in [*reversed(path.parents), path]:
        if part.exists() and not part.is_dir():
            return part
        if not part.exists():
            return None
    return None


def _probe(folder: Path, what: str, shown: Path) -> None:
    """Create and remove a file in ``folder``: whether this process can really write there."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hyperlapse-write-check-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"Expected {what} at '{shown}' to be writable, but writing into '{folder}' failed: "
            f"{_reason(exc)}. Choose another location (--out) or fix its permissions."
        ) from None


def check_output_dir(path: Any, *, kind: str, create: bool = True) -> Path:
    """Check that ``path`` can hold an output folder, and create it (with its parents).

    Args:
        path: the folder (``str`` or ``os.PathLike``).
        kind: what it is for, as the message names it ("the report folder (--out)").
        create: make the folder (default); False only checks that it could be made.

    Returns:
        The folder as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``path`` is bytes, another type or a URL.
        OutputError: a file is where the folder (or one of its parents) should be, or the
            folder cannot be created or written (read-only, no permission, impossible path).

    Example:
        >>> import tempfile, os
        >>> root = tempfile.mkdtemp()
        >>> check_output_dir(os.path.join(root, "a", "b"), kind="the report folder").is_dir()
        True
    """
    folder = as_local_path(path, what=kind)
    blocker = _blocking_file(folder)
    if blocker is not None:
        where = "there" if blocker == folder else f"at '{blocker}', one of its parents"
        raise OutputError(
            f"Expected {kind} at '{folder}' to be a folder, but a file is {where}. Choose "
            f"another location (--out), or move the file away."
        )
    if not create:
        existing = next(p for p in [folder, *folder.parents] if p.exists())
        _probe(existing, kind, folder)
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"Expected {kind} at '{folder}' to be a folder that can be created, but creating it "
            f"failed: {_reason(exc)}. Choose another location (--out) or fix its permissions."
        ) from None
    _probe(folder, kind, folder)
    return folder


def check_output_file(path: Any, *, kind: str) -> Path:
    """Check that a file can be written at ``path`` (its folder may not exist yet: then the
    nearest existing parent must be writable). Nothing is created; an existing file is left as
    it is (the writer replaces it).

    Raises:
        ConfigError: ``path`` is bytes, another type or a URL.
        OutputError: ``path`` is a folder, a file stands where its folder should be, or the
            folder cannot be created or written.

    Example:
        >>> import tempfile, os
        >>> root = tempfile.mkdtemp()
        >>> check_output_file(os.path.join(root, "model.pt"), kind="the predictor file").name
        'model.pt'
    """
    file = as_local_path(path, what=kind)
    if file.is_dir():
        raise OutputError(
            f"Expected {kind} at '{file}' to be a file, but it is a folder. Name a file inside "
            f"it (e.g. '{file / 'model.pt'}') or another path."
        )
    check_output_dir(file.parent, kind=f"the folder of {kind}", create=False)
    if file.exists():
        try:
            with open(file, "ab"):  # appends nothing: only asks for write access
                pass
        except OSError as exc:
            raise OutputError(
                f"Expected {kind} at '{file}' to be writable, but it cannot be opened for "
                f"writing: {_reason(exc)}. Choose another path or fix its permissions."
            ) from None
    return file
