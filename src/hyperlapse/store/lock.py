"""One writer per store: an exclusive lock while a :class:`~hyperlapse.store.writer.StoreWriter`
is open.

* **Local folders**: ``flock(LOCK_EX | LOCK_NB)`` on the store folder itself (no lock file, so
  the Zarr hierarchy holds nothing foreign). The kernel releases it when the writer's process
  ends, however it ends: a SIGKILLed writer never blocks the resume. The owner (host, pid,
  start time) is written to the group attrs under ``"writer"`` so a second writer's error can
  name it.
* **URL stores, and local file systems without flock** (some network mounts): a lease in the
  same ``"writer"`` attribute, renewed at every commit. A second writer is refused while the
  lease is fresh (``heartbeat + lease_s`` in the future) or while its owner process is alive on
  this host; an expired lease, or one whose process on this host is gone, is taken over.
  Limits: object stores offer no atomic "create if absent" through Zarr's store API, so two
  writers starting within one read-write round trip of each other can both win; a writer that
  does not commit for ``lease_s`` seconds loses its lease (it notices at its next commit).

Break a stale lease (a crashed writer on another host): :func:`break_lock`, after making sure
no writer is running.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import socket
import time
import uuid
from typing import Any

from ..errors import StoreLockedError
from . import format as fmt

#: Seconds a lease stays valid without a commit renewing it (URL stores, no-flock mounts).
LEASE_S = 600.0

__all__ = ["WriterLock", "break_lock", "owner_text", "writer_alive"]

#: Local store folders whose flock this process holds: a second writer here is told that an
#: unclosed writer of its own process holds the lock, not "another writer (pid <its own>)".
_HELD_HERE: set[str] = set()


def _owner() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
        "heartbeat": time.time(),
        "lease_s": LEASE_S,
    }


def owner_text(owner: Any) -> str:
    """'pid 123 on host h (since 2026-...)' for a ``"writer"`` attribute."""
    if not isinstance(owner, dict):
        return "another process (owner not recorded yet)"
    return (
        f"pid {owner.get('pid')} on host '{owner.get('host')}' (since {owner.get('started')})"
    )


def writer_alive(owner: Any) -> bool | None:
    """Whether the writer named by a ``"writer"`` attribute still runs (``None``: it ran on
    another host, so this process cannot tell)."""
    if not isinstance(owner, dict):
        return False
    if owner.get("host") != socket.gethostname():
        return None
    return _alive(owner.get("pid"))


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WriterLock:
    """The exclusive write lock of one store, held from :meth:`acquire` to :meth:`release`.

    Attributes:
        owner: the ``"writer"`` attribute this writer stores (host, pid, started, token,
            heartbeat, lease_s).
        mode: ``"flock"`` or ``"lease"``.
    """

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = os.fspath(location)
        self.owner = _owner()
        self.mode = "lease"
        self._fd: int | None = None
        self._key: str | None = None
        self._claimed = False  # the first commit writes our owner record

    def acquire(self, current: dict[str, Any] | None) -> None:
        """Take the lock (local: flock; else: lease).

        Args:
            current: the store's attrs if a store exists there (for the owner and the lease).

        Raises:
            StoreLockedError: another writer holds the store.
        """
        if not fmt.is_url(self.location):
            path = fmt.local_path(self.location)
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.mode = "flock"
                if _key(path) in _HELD_HERE:
                    raise self._held_here() from None
                owner = (current or {}).get("writer") or _read_owner(self.location)
                raise self._locked(owner) from None
            except (ImportError, OSError) as exc:  # no flock here (Windows, some NFS): lease
                os.close(fd)
                if isinstance(exc, OSError) and exc.errno not in (
                    errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL, errno.ENOSYS
                ):
                    raise
            else:
                self._fd = fd
                self.mode = "flock"
                self._key = _key(path)
                _HELD_HERE.add(self._key)
                return
        self._check_lease((current or {}).get("writer"))

    def _check_lease(self, owner: Any) -> None:
        if not isinstance(owner, dict) or owner.get("token") == self.owner["token"]:
            return
        same_host = owner.get("host") == self.owner["host"]
        if same_host and not _alive(owner.get("pid")):
            return  # its process is gone: stale
        heartbeat, lease = owner.get("heartbeat"), owner.get("lease_s")
        fresh = (
            isinstance(heartbeat, (int, float))
            and isinstance(lease, (int, float))
            and heartbeat + lease > time.time()
        )
        if fresh or same_host:
            raise self._locked(owner)

    def renew(self, current_owner: Any) -> dict[str, Any]:
        """The owner record for the next commit (lease mode checks nobody took it over).

        Raises:
            StoreLockedError: another writer took the lease over (it had expired).
        """
        if self._claimed and self.mode == "lease" and isinstance(current_owner, dict):
            if current_owner.get("token") not in (None, self.owner["token"]):
                raise self._locked(current_owner, lost=True)
        self._claimed = True
        self.owner["heartbeat"] = time.time()
        return self.owner

    def _held_here(self) -> StoreLockedError:
        return StoreLockedError(
            f"Expected to be the only writer of the store at '{self.location}', but an unclosed "
            f"recorder (or StoreWriter) in this process (pid {os.getpid()}) holds it. close() "
            f"that recorder first (or use `with TrajectoryRecorder(...) as rec:`), or record "
            f"to another path."
        )

    def _locked(self, owner: Any, lost: bool = False) -> StoreLockedError:
        if lost:
            return StoreLockedError(
                f"Expected to still hold the write lease of '{self.location}', but "
                f"{owner_text(owner)} took it over after this writer did not commit for "
                f"{LEASE_S:.0f} s. Nothing more was written; record to a new path."
            )
        if fmt.is_url(self.location) or self.mode == "lease":
            how = (
                f"Wait for it to finish, or record to another path. If that writer crashed, its "
                f"lease expires {LEASE_S:.0f} s after its last commit (at once if it ran on "
                f"this host), or break it with hyperlapse.store.lock.break_lock("
                f"'{self.location}')."
            )
        else:
            how = (
                "Wait for it to finish or stop it, or record to another path (the lock is "
                "released when that process ends, even if it is killed)."
            )
        return StoreLockedError(
            f"Expected to be the only writer of the store at '{self.location}', but it is "
            f"being written by {owner_text(owner)}. {how}"
        )

    def release(self) -> None:
        """Give the lock back (idempotent). The lease attribute is cleared by the writer."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock
            _HELD_HERE.discard(self._key or "")

    def __del__(self) -> None:
        self.release()


def _key(path: Any) -> str:
    return os.path.realpath(os.fspath(path))


def _read_owner(location: str | os.PathLike) -> Any:
    try:
        attrs = fmt.read_attrs(fmt.make_store(location, read_only=True), os.fspath(location))
    except Exception:  # noqa: BLE001 - only for the error message
        return None
    return attrs.get("writer")


def break_lock(location: str | os.PathLike) -> None:
    """Clear a stale write lease (a writer that crashed on another host, or a mount without
    flock). Only call it when no writer is running: a live writer loses its lease."""
    group = fmt.open_group(location, read_only=False)
    group.attrs.update({"writer": None})
