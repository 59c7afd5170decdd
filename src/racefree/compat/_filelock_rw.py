"""filelock's ``ReadWriteLock`` on racefree's: re-exported by :mod:`racefree.compat.filelock`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import racefree
from racefree._errors import LockTimeout, WouldBlock
from racefree.compat._filelock_core import _PUBLIC, AcquireReturnProxy, Timeout
from racefree.compat._holds import Holds, check_blocking, seconds, wait_for
from racefree.lock.registry import current_owner

__all__ = ["ReadWriteLock"]


class ReadWriteLock:
    """filelock's ``ReadWriteLock``: many readers or one writer, across threads and processes.

    On ``flock`` (racefree's shared :class:`racefree.FileLock`), not SQLite.
    A hold belongs to the thread or task; it nests in its own mode, and asking
    for the other mode while holding one raises ``RuntimeError`` (as filelock).
    """

    __module__ = _PUBLIC

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
