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
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["LockAPI", "async_waker", "drop_one"]

_L = TypeVar("_L", bound="LockAPI")
_K = TypeVar("_K", bound=Hashable)


class LockAPI:
    """``with``/``async with`` and the common properties, over ``acquire``/``release``."""

    __slots__ = ()

    _path: str
    _timeout: float | None

    if TYPE_CHECKING:

        def acquire(self, timeout: float | None = None) -> None: ...

        async def acquire_async(self, timeout: float | None = None) -> None: ...

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
