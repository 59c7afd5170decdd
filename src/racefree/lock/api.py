"""What the three locks (``FileLock``, ``LockFile``, ``PgLock``) share of their API.

:class:`LockAPI` gives the ``with`` / ``async with`` protocol and the ``path``
and ``timeout`` properties; each lock keeps its own acquire and release, and
``FileLock`` its own ``__enter__``/``__exit__`` (its uncontended fast path, with
no extra Python call). The functions below are the pieces of waiting and forking
the locks did alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from collections.abc import Callable, Generator, Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

__all__ = ["Acquired", "LockAPI", "async_waker", "drop_one", "refuse_coroutine_caller"]

_L = TypeVar("_L", bound="LockAPI")
_K = TypeVar("_K", bound=Hashable)

_get_running_loop = asyncio._get_running_loop
_getframe = sys._getframe
#: Code flags of an ``async def`` body (a coroutine or an async generator).
ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


class Acquired(Generic[_L]):
    """What ``acquire()`` returns once the lock is held: true, and a context manager.

    ``with lock.acquire(timeout=5):`` (filelock's idiom) releases the hold on
    exit; entering it does not acquire again. It is always true, so
    ``if lock.acquire(timeout=t):`` (fasteners' idiom) reads as intended: a
    timeout raises :class:`~racefree.LockTimeout` instead of returning. Awaiting
    it returns it at once, so ``await`` on a call that has already taken the lock
    leaves that hold with the awaiting task (which owned it anyway).
    """

    __slots__ = ("lock",)

    def __init__(self, lock: _L) -> None:
        self.lock = lock

    def __bool__(self) -> bool:
        return True

    def __enter__(self) -> _L:
        return self.lock

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()

    async def __aenter__(self) -> _L:
        return self.lock

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()

    def __await__(self) -> Generator[Any, None, Acquired[_L]]:
        return self
        yield  # a generator that finishes at once: nothing to wait for

    def __repr__(self) -> str:
        return f"<Acquired {self.lock!r}>"


def refuse_coroutine_caller(path: str, depth: int = 2) -> None:
    """Raise TypeError if ``acquire()`` was called straight from an ``async def`` under asyncio.

    ``await lock.acquire()`` (filelock's AsyncFileLock idiom) and a plain
    ``lock.acquire()`` look the same to the callee: both would block the event
    loop while they wait, and the first would then await the result. Refusing
    before anything is taken is the only answer that is right for both
    (``depth`` is the caller's frame as seen from here).
    """
    if _get_running_loop() is None:
        return
    if _getframe(depth).f_code.co_flags & ASYNC_CODE:
        raise TypeError(
            f"acquire() of {path} called in a coroutine: use 'await lock.acquire_async()'"
            " or 'async with lock' (a blocking acquire() would stall the event loop)"
        )


class LockAPI:
    """``with``/``async with`` and the common properties, over ``acquire``/``release``."""

    __slots__ = ()

    _path: str
    _timeout: float | None

    if TYPE_CHECKING:

        def acquire(self, timeout: float | None = None) -> Any: ...

        async def acquire_async(self, timeout: float | None = None) -> Any: ...

        def release(self) -> None: ...

    @property
    def path(self) -> str:
        """The lock file (for a PgLock: the URL without password and the lock name)."""
        return self._path

    @property
    def timeout(self) -> float | None:
        """The default timeout in seconds; None waits forever."""
        return self._timeout

    def __enter__(self: _L) -> _L:
        """``with lock:`` is :meth:`acquire` with the constructor's timeout."""
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self: _L) -> _L:
        """``async with lock:`` is :meth:`acquire_async` with the constructor's timeout."""
        await self.acquire_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


def async_waker(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]
) -> Callable[[], None]:
    """A callable that resolves ``fut`` from any thread (a closed loop: nobody waits)."""

    def wake() -> None:
        # RuntimeError: the loop is closed, so nobody awaits the future any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, fut)

    return wake


def drop_one(counts: dict[_K, int], key: _K) -> bool:
    """Take one from ``counts[key]`` (deleting it at zero); False if there was none.

    In a forked child, how a lock forgets one hold its parent had at fork
    time (L5): the child never unlocks the parent's lock, it only forgets the
    hold, so that a ``with`` block the parent entered before ``fork()`` can
    exit in the child.
    """
    n = counts.get(key, 0)
    if n == 0:
        return False
    if n == 1:
        del counts[key]
    else:
        counts[key] = n - 1
    return True
