"""fasteners' inter-process locks on racefree's: ``from racefree.compat import fasteners``.

Names: :class:`InterProcessLock`, :class:`InterProcessReaderWriterLock`,
:func:`interprocess_locked`, :func:`interprocess_read_locked`,
:func:`interprocess_write_locked`. The idioms that work unchanged::

    lock = InterProcessLock("/var/lock/app.lock")
    if lock.acquire(blocking=True, timeout=5):    # True, or False on timeout
        try: ...
        finally: lock.release()
    with lock: ...
    rw = InterProcessReaderWriterLock("/var/lock/db.lock")
    with rw.read_lock(): ...                      # rw.acquire_write_lock(timeout=1) -> bool
    @interprocess_locked("/var/lock/app.lock")
    def job(): ...

Both are :class:`racefree.FileLock` (the second with ``shared=True`` for
readers). What differs, on purpose:

- **Kernel lock.** fasteners takes POSIX record locks (``lockf``); racefree
  takes ``flock``. On Linux the two never conflict, so **a process on
  fasteners and one on this module do not exclude each other**: move every
  process of a lock over at once. (POSIX record locks are also what makes
  fasteners' locks per process: any ``close`` of the file in the process drops
  them, pitfall L2.)
- **Owners.** A hold belongs to the thread or asyncio task that took it.
  Threads sharing one ``InterProcessLock`` exclude each other (fasteners lets
  them all in: its lock is per process). ``acquire`` by an owner that already
  holds the lock returns True without another hold, and one ``release`` frees
  it, as in fasteners; a ``release`` by an owner that holds nothing raises
  ``threading.ThreadError`` (a ``RuntimeError``), as fasteners' does.
- **No polling.** Waiters block in the kernel; ``delay``, ``max_delay`` and
  ``sleep_func`` are checked as fasteners does and not used.
- The lock file's missing directories are created, as fasteners does; it is
  never deleted (``exists()`` tells whether it is there).
- The thread-only helpers (``ReaderWriterLock``, ``locked``, ``try_lock``,
  ``read_locked``, ``write_locked``) are not here: use fasteners or ``threading``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import racefree
from racefree._errors import LockTimeout, WouldBlock
from racefree.compat._holds import Holds
from racefree.lock.registry import current_owner

__all__ = [
    "InterProcessLock",
    "InterProcessReaderWriterLock",
    "interprocess_locked",
    "interprocess_read_locked",
    "interprocess_write_locked",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def _check(delay: float, timeout: float | None) -> None:
    if delay < 0:
        raise ValueError("Delay must be greater than or equal to zero")
    if timeout is not None and timeout < 0:
        raise ValueError("Timeout must be greater than or equal to zero")


def _take(lock: racefree.FileLock, blocking: bool, timeout: float | None) -> bool:
    """fasteners' result: True when taken, False on timeout (nothing held then)."""
    try:
        if blocking:
            lock.acquire(timeout=timeout)
        else:
            lock.acquire_nowait()
    except (LockTimeout, WouldBlock):
        return False
    return True


class InterProcessLock:
    """fasteners' ``InterProcessLock``: a lock between processes, on :class:`racefree.FileLock`."""

    MAX_DELAY = 0.1
    DELAY_INCREMENT = 0.01

    def __init__(
        self,
        path: str | Path,
        sleep_func: Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.sleep_func = sleep_func  # unused: racefree waits in the kernel
        self.logger = logger if logger is not None else logging.getLogger(__name__)
        self._lock = racefree.FileLock(self.path)
        self._holds = Holds()

    @property
    def acquired(self) -> bool:
        """Whether the current thread or task holds the lock through this object."""
        return self._holds.count(current_owner()) > 0

    def acquire(
        self,
        blocking: bool = True,
        delay: float = 0.01,
        max_delay: float = 0.1,
        timeout: float | None = None,
    ) -> bool:
        """Take the lock: True, or False if ``timeout`` passed (or, not ``blocking``, it was
        held). An owner that holds it already gets True at once, with no second hold."""
        _check(delay, timeout)
        owner = current_owner()
        if self._holds.count(owner):
            return True
        if not _take(self._lock, blocking, timeout):
            return False
        self._holds.add(owner)
        return True

    def release(self) -> None:
        """Release the lock; ``threading.ThreadError`` if this thread or task does not hold it."""
        owner = current_owner()
        if not self._holds.count(owner):
            raise threading.ThreadError("Unable to release an unaquired lock")
        self._lock.release()
        self._holds.drop(owner)

    def __enter__(self) -> InterProcessLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def exists(self) -> bool:
        return os.path.exists(self.path)


class InterProcessReaderWriterLock:
    """fasteners' ``InterProcessReaderWriterLock``: readers share, a writer excludes.

    A thread or task holding one mode that asks for the other gets
    ``RuntimeError`` (racefree does not upgrade or downgrade a hold in place:
    two readers upgrading at once would deadlock).
    """

    MAX_DELAY = 0.1
    DELAY_INCREMENT = 0.01

    def __init__(
        self,
        path: str | Path,
        sleep_func: Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.sleep_func = sleep_func
        self.logger = logger if logger is not None else logging.getLogger(__name__)
        self._read = racefree.FileLock(self.path, shared=True)
        self._write = racefree.FileLock(self.path)
        self._holds = Holds()  # its ``modes``: which lock each owner holds

    def _acquire(
        self, lock: racefree.FileLock, blocking: bool, delay: float, timeout: float | None
    ) -> bool:
        _check(delay, timeout)
        owner = current_owner()
        held = self._holds.modes.get(owner)
        if held is lock:
            return True
        if held is not None:
            raise RuntimeError(
                f"{self.path}: this thread holds the other mode of the lock; release it first"
            )
        if not _take(lock, blocking, timeout):
            return False
        self._holds.modes[owner] = lock
        self._holds.add(owner)
        return True

    def _release(self, lock: racefree.FileLock, what: str) -> None:
        owner = current_owner()
        if self._holds.modes.get(owner) is not lock:
            raise threading.ThreadError(f"Unable to release an unacquired {what} lock")
        lock.release()
        self._holds.drop(owner)

    def acquire_read_lock(
        self, blocking: bool = True, delay: float = 0.01, max_delay: float = 0.1,
        timeout: float | None = None,
    ) -> bool:
        """A shared hold: True, or False on timeout."""
        return self._acquire(self._read, blocking, delay, timeout)

    def acquire_write_lock(
        self, blocking: bool = True, delay: float = 0.01, max_delay: float = 0.1,
        timeout: float | None = None,
    ) -> bool:
        """An exclusive hold: True, or False on timeout."""
        return self._acquire(self._write, blocking, delay, timeout)

    def release_read_lock(self) -> None:
        self._release(self._read, "read")

    def release_write_lock(self) -> None:
        self._release(self._write, "write")

    @contextmanager
    def read_lock(self, delay: float = 0.01, max_delay: float = 0.1) -> Iterator[None]:
        self.acquire_read_lock(delay=delay, max_delay=max_delay)
        try:
            yield
        finally:
            self.release_read_lock()

    @contextmanager
    def write_lock(self, delay: float = 0.01, max_delay: float = 0.1) -> Iterator[None]:
        self.acquire_write_lock(delay=delay, max_delay=max_delay)
        try:
            yield
        finally:
            self.release_write_lock()


def interprocess_locked(path: str | Path) -> Callable[[_F], _F]:
    """Decorate a function to run while holding the lock at ``path``."""
    lock = InterProcessLock(path)

    def decorator(f: _F) -> _F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def interprocess_read_locked(path: str | Path) -> Callable[[_F], _F]:
    """Decorate a function to run while holding a read lock at ``path``."""
    lock = InterProcessReaderWriterLock(path)

    def decorator(f: _F) -> _F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock.read_lock():
                return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def interprocess_write_locked(path: str | Path) -> Callable[[_F], _F]:
    """Decorate a function to run while holding the write lock at ``path``."""
    lock = InterProcessReaderWriterLock(path)

    def decorator(f: _F) -> _F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock.write_lock():
                return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
