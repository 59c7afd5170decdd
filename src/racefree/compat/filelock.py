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
  malformed after 2 s, and racefree reclaims filelock's marker by age, so
  the two do not exclude each other reliably. ``lifetime`` is racefree's
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
import warnings
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

import racefree
from racefree._errors import LockTimeout, WouldBlock
from racefree.compat._holds import (
    Holds,
    check_blocking,
    check_poll_interval,
    finished_task_owners,
    seconds,
    wait_for,
)
from racefree.lock.registry import current_owner

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

_T = TypeVar("_T")


class Timeout(LockTimeout):
    """filelock's ``Timeout``: the lock was not acquired in time; nothing is held.

    Also a :class:`racefree.LockTimeout` and a ``TimeoutError``. ``lock_file``
    is the lock's path; it pickles.
    """

    def __init__(self, lock_file: str, timeout: float | None = None) -> None:
        super().__init__(lock_file, timeout)

    @property
    def lock_file(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return f"The file lock '{self.path}' could not be acquired."

    def __repr__(self) -> str:
        return f"Timeout({self.path!r})"


class AcquireReturnProxy(Generic[_T]):
    """What ``acquire()`` returns: ``with lock.acquire():`` releases on exit (no second acquire)."""

    def __init__(self, lock: _T) -> None:
        self.lock = lock

    def __enter__(self) -> _T:
        return self.lock

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()  # type: ignore[attr-defined]


class AsyncAcquireReturnProxy:
    """What ``await AsyncFileLock.acquire()`` returns: ``async with`` releases on exit."""

    def __init__(self, lock: BaseAsyncFileLock) -> None:
        self.lock = lock

    async def __aenter__(self) -> BaseAsyncFileLock:
        return self.lock

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.lock.release()


class _Common:
    """The state and the properties both the sync and the async locks have."""

    _lock: Any  # racefree.FileLock or racefree.LockFile

    def __init__(
        self, lock_file: str | os.PathLike[str], timeout: float, mode: int | None,
        thread_local: bool, blocking: bool, is_singleton: bool, poll_interval: float,
        lifetime: float | None,
    ) -> None:
        path = os.fspath(lock_file)
        if not isinstance(path, str):
            raise TypeError("lock_file must be a str or os.PathLike[str]")
        self._lock_file = path
        self._timeout = seconds("timeout", timeout)
        self._blocking = check_blocking(blocking)
        check_poll_interval(poll_interval)
        self._poll_interval = float(poll_interval)
        self._thread_local = bool(thread_local)
        self._is_singleton = bool(is_singleton)
        self._holds = Holds()
        self._lock = self._make(path, mode, lifetime)

    def _make(self, path: str, mode: int | None, lifetime: float | None) -> Any:
        if lifetime is not None:
            # As filelock does for its kernel locks: a kernel lock cannot be broken by age.
            warnings.warn(
                f"lifetime is ignored by {type(self).__name__}: a kernel lock dies with its"
                " holder, never by age", stacklevel=4,
            )
        return racefree.FileLock(path, mode=mode)

    @property
    def lock_file(self) -> str:
        """The path of the lock file, as given."""
        return self._lock_file

    @property
    def timeout(self) -> float:
        """The default timeout in seconds; negative waits forever."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = seconds("timeout", value)

    @property
    def blocking(self) -> bool:
        return self._blocking

    @blocking.setter
    def blocking(self, value: bool) -> None:
        self._blocking = check_blocking(value)

    @property
    def poll_interval(self) -> float:
        """Accepted for filelock's sake; racefree waits in the kernel, never polls."""
        return self._poll_interval

    @poll_interval.setter
    def poll_interval(self, value: float) -> None:
        check_poll_interval(value)
        self._poll_interval = float(value)

    @property
    def is_singleton(self) -> bool:
        return self._is_singleton

    def is_thread_local(self) -> bool:
        return self._thread_local

    @property
    def is_locked(self) -> bool:
        """Whether this object holds the lock: for the current thread or task, or (with
        ``thread_local=False``) for any of them."""
        if self._thread_local:
            return self._holds.count(current_owner()) > 0
        return self._holds.total() > 0

    @property
    def lock_counter(self) -> int:
        """Holds taken through this object and not released (the current owner's, or all)."""
        if self._thread_local:
            return self._holds.count(current_owner())
        return self._holds.total()

    def _timeouts(
        self, timeout: float | None, poll_interval: float | None, blocking: bool | None
    ) -> tuple[bool, float | None]:
        check_poll_interval(poll_interval)
        blocking = self._blocking if blocking is None else check_blocking(blocking)
        t = self._timeout if timeout is None else seconds("timeout", timeout)
        return blocking, (wait_for(t) if blocking else 0.0)

    def _taken(self) -> None:
        self._holds.add(current_owner())

    def _release(self, force: bool) -> None:
        owner = current_owner()
        n = self._holds.count(owner)
        if n == 0:
            done = finished_task_owners(self._holds)
            if done:
                raise RuntimeError(
                    f"release of {self._lock_file}: it is held by a finished task (before"
                    " Python 3.12, asyncio.wait_for() runs its argument in a task of its"
                    " own); pass timeout= to acquire() instead"
                )
            if not self._thread_local and self._holds.total():
                raise RuntimeError(
                    f"release of {self._lock_file}: another thread or task holds it; racefree"
                    " locks are released by the thread or task that acquired them"
                )
            return  # as filelock: releasing a lock this owner does not hold does nothing
        for _ in range(n if force else 1):
            self._lock.release()
            self._holds.drop(owner)


class BaseFileLock(_Common, contextlib.ContextDecorator):
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
            if blocking:
                self._lock.acquire(timeout=t)
            else:
                self._lock.acquire_nowait()
        except (LockTimeout, WouldBlock):
            raise Timeout(self._lock_file, t) from None
        self._taken()
        return AcquireReturnProxy(self)

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


UnixFileLock = FileLock


class BaseAsyncFileLock(_Common):
    """filelock's ``AsyncFileLock`` API: ``acquire`` and ``release`` are coroutines.

    Waiting never blocks the event loop; the owner of a hold is the task.
    """

    def __init__(
        self,
        lock_file: str | os.PathLike[str],
        timeout: float = -1,
        mode: int | None = None,
        thread_local: bool = False,  # filelock's positional parameter
        *,
        blocking: bool = True,
        is_singleton: bool = False,
        poll_interval: float = 0.05,
        lifetime: float | None = None,
        loop: object = None,
        run_in_executor: bool = True,
        executor: object = None,
    ) -> None:
        super().__init__(
            lock_file, timeout, mode, thread_local, blocking, is_singleton, poll_interval,
            lifetime,
        )

    async def acquire(
        self,
        timeout: float | None = None,
        poll_interval: float | None = None,
        *,
        blocking: bool | None = None,
    ) -> AsyncAcquireReturnProxy:
        """Wait, without blocking the loop, until this task holds the lock; :class:`Timeout`
        if not taken in time. Cancelling the waiting task leaves nothing held."""
        blocking, t = self._timeouts(timeout, poll_interval, blocking)
        try:
            if blocking:
                await self._lock.acquire_async(timeout=t)
            else:
                self._lock.acquire_nowait()
        except (LockTimeout, WouldBlock):
            raise Timeout(self._lock_file, t) from None
        self._taken()
        return AsyncAcquireReturnProxy(self)

    async def release(self, force: bool = False) -> None:
        """Drop one hold of this task (``force``: all of them); no-op if it holds none."""
        self._release(force)

    async def __aenter__(self) -> BaseAsyncFileLock:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    def __enter__(self) -> None:
        raise NotImplementedError("Use `async with`: acquire/release are coroutines")

    def __exit__(self, *exc: object) -> None:
        raise NotImplementedError("Use `async with`: acquire/release are coroutines")


class AsyncFileLock(BaseAsyncFileLock):
    """filelock's ``AsyncFileLock`` on :class:`racefree.FileLock`."""


class AsyncSoftFileLock(BaseAsyncFileLock):
    """filelock's ``AsyncSoftFileLock`` on :class:`racefree.LockFile` (see SoftFileLock)."""

    def _make(self, path: str, mode: int | None, lifetime: float | None) -> Any:
        stale = 30.0 if lifetime is None else seconds("lifetime", lifetime)
        return racefree.LockFile(path, mode=mode, stale_after=stale)


class ReadWriteLock:
    """filelock's ``ReadWriteLock``: many readers or one writer, across threads and processes.

    On ``flock`` (racefree's shared :class:`racefree.FileLock`), not SQLite.
    A hold belongs to the thread or task; it nests in its own mode, and asking
    for the other mode while holding one raises ``RuntimeError`` (as filelock).
    """

    def __init__(
        self,
        lock_file: str | os.PathLike[str],
        timeout: float = -1,
        *,
        blocking: bool = True,
        is_singleton: bool = True,
    ) -> None:
        path = os.fspath(lock_file)
        if not isinstance(path, str):
            raise TypeError("lock_file must be a str or os.PathLike[str]")
        self.lock_file = path
        self.timeout = seconds("timeout", timeout)
        self.blocking = check_blocking(blocking)
        self._read = racefree.FileLock(path, shared=True)
        self._write = racefree.FileLock(path)
        self._holds = Holds()  # its ``modes``: which of the two locks each owner holds

    @classmethod
    def get_lock(
        cls, lock_file: str | os.PathLike[str], timeout: float = -1, *, blocking: bool = True
    ) -> ReadWriteLock:
        return cls(lock_file, timeout, blocking=blocking)

    def _acquire(
        self, lock: racefree.FileLock, timeout: float | None, blocking: bool | None
    ) -> AcquireReturnProxy[ReadWriteLock]:
        owner = current_owner()
        held = self._holds.modes.get(owner)
        if held is not None and held is not lock:
            have, want = ("read", "write") if held is self._read else ("write", "read")
            raise RuntimeError(
                f"cannot acquire a {want} lock on {self.lock_file}: this thread holds a {have} lock"
            )
        blocking = self.blocking if blocking is None else check_blocking(blocking)
        t = wait_for(self.timeout if timeout is None else seconds("timeout", timeout))
        try:
            if blocking:
                lock.acquire(timeout=t)
            else:
                lock.acquire_nowait()
        except (LockTimeout, WouldBlock):
            raise Timeout(self.lock_file, t) from None
        self._holds.modes[owner] = lock
        self._holds.add(owner)
        return AcquireReturnProxy(self)

    def acquire_read(
        self, timeout: float | None = None, *, blocking: bool | None = None
    ) -> AcquireReturnProxy[ReadWriteLock]:
        """A shared hold for this thread or task; :class:`Timeout` if not taken in time."""
        return self._acquire(self._read, timeout, blocking)

    def acquire_write(
        self, timeout: float | None = None, *, blocking: bool | None = None
    ) -> AcquireReturnProxy[ReadWriteLock]:
        """An exclusive hold for this thread or task; :class:`Timeout` if not taken in time."""
        return self._acquire(self._write, timeout, blocking)

    @contextlib.contextmanager
    def read_lock(self, timeout: float | None = None, *, blocking: bool | None = None
                  ) -> Iterator[None]:
        self.acquire_read(timeout, blocking=blocking)
        try:
            yield
        finally:
            self.release()

    @contextlib.contextmanager
    def write_lock(self, timeout: float | None = None, *, blocking: bool | None = None
                   ) -> Iterator[None]:
        self.acquire_write(timeout, blocking=blocking)
        try:
            yield
        finally:
            self.release()

    def release(self, *, force: bool = False) -> None:
        """Drop one hold of this thread or task (``force``: all of its holds).

        ``RuntimeError`` if it holds none (as filelock's ``ReadWriteLock``).
        """
        owner = current_owner()
        n = self._holds.count(owner)
        if n == 0:
            raise RuntimeError(f"cannot release a lock on {self.lock_file} that is not held")
        lock = self._holds.modes[owner]
        for _ in range(n if force else 1):
            lock.release()
            self._holds.drop(owner)  # the last one forgets the owner's mode too

    def close(self) -> None:
        """Release this thread's or task's holds (filelock also releases other threads')."""
        owner = current_owner()
        if self._holds.count(owner):
            self.release(force=True)
