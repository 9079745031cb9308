"""``StoreWriter(mode="replace")``: a new store built beside the old one and swapped in at its
first commit, so that a crash at any moment leaves one whole store at the path.

Until the new store's first commit is durable, the old store is untouched and readable (its
write lock is held, so no other writer changes it meanwhile). Then the two folders are
exchanged atomically (Linux ``renameat2(RENAME_EXCHANGE)``), or, where the OS cannot, the old
one is renamed aside and the new one into place; the old one is deleted. The next writer of the
path tidies whatever a crash left (:func:`finish_interrupted_replace`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .location import LocationLike, StoreLocation
from .lock import WriterLock

__all__ = ["Replacement", "finish_interrupted_replace"]

_NEW = ".replacing"
_ASIDE = ".replaced"


class Replacement:
    """mode="replace": a new store built beside the old one (``<name>.replacing``) and swapped
    in at its first commit. Until then the old store is untouched and readable (its lock is
    held, so no other writer changes it meanwhile); a crash leaves it whole, and the next
    writer deletes the leftover (:func:`finish_interrupted_replace`).

    The writer works in the new folder through a descriptor path (``/proc/self/fd/N``) that
    names the folder itself whatever it is called, so the swap changes no path the writer (or
    a thread writing shard files inline) uses.
    """

    def __init__(self, target: StoreLocation, old_lock: WriterLock) -> None:
        self.target = target
        self.old_lock = old_lock
        self.new_path = target.sibling(_NEW).local()
        self.new_lock = WriterLock(self.new_path)
        self.new_lock.acquire(None)  # creates the folder
        self._fd: int | None = os.open(
            self.new_path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        )
        handle = _descriptor_path(self._fd, self.new_path)
        self.follows = handle is not None  # the descriptor path follows the folder's renames
        self.new = target.at(handle or self.new_path)
        self.swapped = False

    @classmethod
    def begin(cls, target: StoreLocation, attrs: dict[str, Any] | None) -> Replacement:
        old_lock = WriterLock(target)
        old_lock.acquire(attrs)  # StoreLockedError while another writer works on it
        try:
            return cls(target, old_lock)
        except BaseException:
            old_lock.release()
            raise

    def swap(self, fsync: bool) -> bool:
        """Put the new store at the target's path; delete the old one. Returns whether the
        writer must re-point its handles (no descriptor path)."""
        target = self.target.local()
        if _exchange(self.new_path, target):
            if fsync:
                _fsync(target.parent)
            self.swapped = True
            old = self.new_path  # the old store now has the temporary name
        else:  # rename aside, then into place (a crash in between: finish_interrupted_replace)
            old = target.with_name(target.name + _ASIDE)
            os.rename(target, old)
            os.rename(self.new_path, target)
            if fsync:
                _fsync(target.parent)
            self.swapped = True
        shutil.rmtree(old, ignore_errors=True)
        self.old_lock.release()
        self.new_lock.location = self.target.shown
        return not self.follows

    def end(self) -> None:
        """The writer is done: a replacement that was never swapped in is deleted."""
        if not self.swapped:
            shutil.rmtree(self.new_path, ignore_errors=True)
            self.new_lock.release()
        self.old_lock.release()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _descriptor_path(fd: int, path: Path) -> Path | None:
    """A path naming the folder open as ``fd`` whatever it is renamed to (Linux procfs), or
    ``None`` where there is none."""
    handle = Path(f"/proc/self/fd/{fd}")
    try:
        return handle if os.path.samestat(os.stat(handle), os.stat(path)) else None
    except OSError:
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two folders (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where
    the OS or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def finish_interrupted_replace(location: LocationLike) -> str | None:
    """Tidy what a ``mode="replace"`` writer that crashed left beside ``location`` (a local
    store); folders a live writer still holds are left alone. Returns what was done."""
    target = StoreLocation.of(location).local()
    new = target.with_name(target.name + _NEW)
    aside = target.with_name(target.name + _ASIDE)
    done = []
    with _unheld(new) as new_free, _unheld(aside) as aside_free:
        if aside_free and not os.path.lexists(target):
            # crashed between the two renames of a swap: the new store was committed
            if new_free:
                os.rename(new, target)
                done.append(f"moved the committed replacement {new.name} into place")
                new_free = False
            else:
                os.rename(aside, target)
                done.append(f"restored the original from {aside.name}")
                aside_free = False
        for leftover, free in ((new, new_free), (aside, aside_free)):
            if free:
                shutil.rmtree(leftover, ignore_errors=True)
                done.append(f"removed the leftover {leftover.name}")
    return "; ".join(done) or None


@contextlib.contextmanager
def _unheld(path: Path) -> Iterator[bool]:
    """Whether ``path`` is a folder no writer holds (its flock is taken for the block)."""
    if not path.is_dir() or path.is_symlink():
        yield False
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except (ImportError, OSError):  # no flock here: nothing can hold it
            pass
        yield True
    finally:
        os.close(fd)




def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
