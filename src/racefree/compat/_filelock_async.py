"""filelock's asynchronous locks on racefree's: re-exported by :mod:`racefree.compat.filelock`."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import racefree
from racefree._errors import LockTimeout, WouldBlock
from racefree.compat._filelock_core import _PUBLIC, Common, Timeout
from racefree.compat._holds import seconds

__all__ = [
    "AsyncAcquireReturnProxy", "AsyncFileLock", "AsyncSoftFileLock", "BaseAsyncFileLock",
]


class AsyncAcquireReturnProxy:
    """What ``await AsyncFileLock.acquire()`` returns: ``async with`` releases on exit."""

    __module__ = _PUBLIC

    def __init__(self, lock: BaseAsyncFileLock) -> None:
        self.lock = lock

    async def __aenter__(self) -> BaseAsyncFileLock:
        return self.lock

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.lock.release()


class BaseAsyncFileLock(Common):
    """filelock's ``AsyncFileLock`` API: ``acquire`` and ``release`` are coroutines.

    Waiting never blocks the event loop; the owner of a hold is the task.
    """

    __module__ = _PUBLIC

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

    __module__ = _PUBLIC


class AsyncSoftFileLock(BaseAsyncFileLock):
    """filelock's ``AsyncSoftFileLock`` on :class:`racefree.LockFile` (see SoftFileLock)."""

    __module__ = _PUBLIC

    def _make(self, path: str, mode: int | None, lifetime: float | None) -> Any:
        stale = 30.0 if lifetime is None else seconds("lifetime", lifetime)
        return racefree.LockFile(path, mode=mode, stale_after=stale)
