"""filelock's API on racefree's locks: ``from racefree.compat import filelock``.

Names: :class:`FileLock`, :class:`SoftFileLock`, :class:`AsyncFileLock`,
:class:`AsyncSoftFileLock`, :class:`ReadWriteLock`, :class:`Timeout`,
:class:`AcquireReturnProxy`, :class:`AsyncAcquireReturnProxy`. The idioms
that work unchanged::

    lock = FileLock("app.lock", 10)            # positional timeout; -1 waits forever
    with lock: ...
    with lock.acquire(timeout=5): ...          # Timeout (a TimeoutError) if not taken
    lock.acquire(blocking=False)               # one try
    try: lock.acquire() finally: lock.release()  # release of an unheld lock: no-op
    lock.is_locked, lock.lock_counter, lock.lock_file, lock.timeout = 3
    @lock  def f(): ...                        # a context decorator
    async with AsyncFileLock("app.lock"): ...  # await lock.acquire() / release()
    with ReadWriteLock("db.lock").read_lock(): ...

``FileLock`` is :class:`racefree.FileLock` (``flock`` on a file that is never
deleted, the same kernel lock as filelock's ``FileLock`` on Unix, so a process
on filelock and one on this module exclude each other on one path).
``SoftFileLock`` is :class:`racefree.LockFile`. What differs, on purpose:

- **Owners.** A hold belongs to the asyncio task that took it, else the thread
  (filelock: the thread with ``thread_local=True``, its default; the object
  with ``thread_local=False``). Two threads or tasks sharing one instance
  exclude each other even with ``thread_local=False`` (filelock lets both
  in). Only the owner can release: with ``thread_local=False``, a release
  from another thread raises ``RuntimeError`` instead of releasing; a release
  by an owner that holds nothing is a no-op, as in filelock.
- **No polling.** Waiters block in the kernel and take a released lock at
  once; ``poll_interval`` is checked and ignored (so is ``is_singleton``:
  every instance on one file shares one state anyway). ``cancel_check``,
  ``on_acquired`` and the other 4.x options are not offered.
- **Collected objects.** A lock object dropped while held is not released by
  the garbage collector (filelock releases it): release it, or use ``with``.
- **Files.** Missing directories are created (as filelock does). ``mode``
  gives a new lock file exactly those bits; default ``0o666 & ~umask``
  (filelock 3.x forced ``0o644``). ``SoftFileLock``'s file holds racefree's
  owner record, not filelock's: a filelock ``SoftFileLock`` takes it over as
  malformed after 2 s, so the two exclude each other only for short holds.
  filelock's marker is never deleted by racefree (it is not racefree's file):
  ``SoftFileLock`` waits, polling, until its filelock holder removes it. ``lifetime`` is racefree's
  lease (``stale_after``): a holder that keeps running keeps its lock.
- **ReadWriteLock** uses ``flock`` (shared and exclusive) on the file, not an
  SQLite database: it does not exclude filelock's ``ReadWriteLock``. As in
  filelock, an owner changing mode gets ``RuntimeError``; another thread
  asking for a conflicting mode waits (filelock raises).
- **Async.** ``AsyncFileLock`` waits without blocking the loop and owns per
  task; ``loop``, ``run_in_executor`` and ``executor`` are accepted and unused.
  A synchronous ``FileLock.acquire()`` in a coroutine blocks the loop while it
  waits, as filelock's does (racefree's own ``FileLock.acquire()`` refuses).
"""

from __future__ import annotations

import contextlib
import os
import time
from types import TracebackType
from typing import Any

import racefree
from racefree._errors import LockTimeout, WouldBlock
from racefree.compat._filelock_async import (
    AsyncAcquireReturnProxy,
    AsyncFileLock,
    AsyncSoftFileLock,
    BaseAsyncFileLock,
)
from racefree.compat._filelock_core import AcquireReturnProxy, Common, Timeout
from racefree.compat._filelock_rw import ReadWriteLock
from racefree.compat._holds import check_poll_interval, seconds

__all__ = [
    "AcquireReturnProxy",
    "AsyncAcquireReturnProxy",
    "AsyncFileLock",
    "AsyncSoftFileLock",
    "BaseAsyncFileLock",
    "BaseFileLock",
    "FileLock",
    "ReadWriteLock",
    "SoftFileLock",
    "Timeout",
    "UnixFileLock",
]


class BaseFileLock(Common, contextlib.ContextDecorator):
    """filelock's synchronous lock API over a racefree lock (see the module docstring)."""

    def __init__(
        self,
        lock_file: str | os.PathLike[str],
        timeout: float = -1,
        mode: int | None = None,
        thread_local: bool = True,  # filelock's positional parameter
        *,
        blocking: bool = True,
        is_singleton: bool = False,
        poll_interval: float = 0.05,
        lifetime: float | None = None,
    ) -> None:
        super().__init__(
            lock_file, timeout, mode, thread_local, blocking, is_singleton, poll_interval,
            lifetime,
        )

    def acquire(
        self,
        timeout: float | None = None,
        poll_interval: float | None = None,
        *,
        poll_intervall: float | None = None,
        blocking: bool | None = None,
    ) -> AcquireReturnProxy[BaseFileLock]:
        """Wait for the lock (``timeout`` seconds, negative: forever; ``blocking=False``: one
        try); :class:`Timeout` if not taken, and nothing is held then."""
        check_poll_interval(poll_intervall)
        blocking, t = self._timeouts(timeout, poll_interval, blocking)
        try:
            self._take(blocking, t)
        except (LockTimeout, WouldBlock):
            raise Timeout(self._lock_file, t) from None
        self._taken()
        return AcquireReturnProxy(self)

    def _take(self, blocking: bool, timeout: float | None) -> None:
        if blocking:
            self._lock.acquire(timeout=timeout)
        else:
            self._lock.acquire_nowait()

    def release(self, force: bool = False) -> None:
        """Drop one hold of the current owner (``force``: all of them); no-op if it holds none."""
        self._release(force)

    def __enter__(self) -> BaseFileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._lock_file!r} on {self._lock!r}>"


class FileLock(BaseFileLock):
    """filelock's ``FileLock`` on :class:`racefree.FileLock` (``flock``, no polling)."""


class SoftFileLock(BaseFileLock):
    """filelock's ``SoftFileLock`` on :class:`racefree.LockFile` (for network file systems).

    ``lifetime`` becomes the lease ``stale_after`` (default 30 s): a lock whose
    holder stopped refreshing it for that long is reclaimed; a running holder
    keeps it. The lock file's contents are racefree's owner record.
    """

    def _make(self, path: str, mode: int | None, lifetime: float | None) -> Any:
        stale = 30.0 if lifetime is None else seconds("lifetime", lifetime)
        return racefree.LockFile(path, mode=mode, stale_after=stale)

    def _take(self, blocking: bool, timeout: float | None) -> None:
        """As racefree's ``LockFile``, but a lock file that is not racefree's is waited out.

        A file at the path that holds no racefree owner record (filelock's own
        marker, during a rolling migration) is another program's lock: racefree
        never deletes it (``docs/security.md``, case 9), so this waits, polling,
        until its holder removes it, within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                super()._take(blocking, left)
                return
            except racefree.FormatError:
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    raise racefree.LockTimeout(self._lock_file, timeout) from None
                time.sleep(_FOREIGN_POLL if left is None else min(_FOREIGN_POLL, left))


#: How often a SoftFileLock looks again at a lock file that is another program's.
_FOREIGN_POLL = 0.05

UnixFileLock = FileLock
