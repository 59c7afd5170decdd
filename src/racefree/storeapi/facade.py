"""The asyncio facade over any synchronous store: ``AsyncStore`` and ``AsyncPgStore``.

:class:`AsyncFacade` wraps an object following :class:`racefree.StoreProtocol`
and runs each call in a thread of the loop's default executor (or the one
given), so the event loop never blocks. A thread facade rather than a second,
native async implementation, so that both APIs share one implementation of
every guarantee (locks, fencing, transactions, fsyncs).

Cancellation: cancelling an awaiting call does not stop its thread; the write
completes (or fails, or rolls back) on its own, atomically, exactly as the
synchronous call would, and only its result is lost.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, Generic, TypeVar

from racefree.storeapi.protocol import BatchProtocol, StoreProtocol

__all__ = ["AsyncFacade", "AsyncFacadeBatch"]

T = TypeVar("T")
S = TypeVar("S", bound=StoreProtocol)  # the synchronous store
F = TypeVar("F")  # what ``fence=`` accepts besides None (PgLock's token; None for files)
B = TypeVar("B", bound=BatchProtocol)  # the synchronous batch
_A = TypeVar("_A", bound="AsyncFacade[Any, Any]")
_AB = TypeVar("_AB", bound="AsyncFacadeBatch[Any, Any]")
MISSING: Any = object()


async def run_in(executor: Executor | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a thread of ``executor`` (None: the loop's default)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))


class AsyncFacade(Generic[S, F]):
    """The ``S`` store API as coroutines (same guarantees, same errors).

    Subclasses add the constructor, ``open``, ``batch``, ``check`` and
    ``__repr__`` with their store's own types and documentation.
    """

    _store: S
    _executor: Executor | None

    def _init(self, store: S, executor: Executor | None) -> None:
        self._store = store
        self._executor = executor

    @classmethod
    def wrap(cls: type[_A], store: S, *, executor: Executor | None = None) -> _A:
        """Wrap an open synchronous store (closing the facade closes it)."""
        obj = cls.__new__(cls)
        obj._init(store, executor)
        return obj

    @classmethod
    async def _open_with(
        cls: type[_A], factory: Callable[[], S], executor: Executor | None
    ) -> _A:
        """Run ``factory`` (which opens the store) in a worker thread, then wrap."""
        return cls.wrap(await run_in(executor, factory), executor=executor)

    @property
    def store(self) -> S:
        """The synchronous store underneath (it shares its files or pool)."""
        return self._store

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in(self._executor, fn, *args, **kwargs)

    # -- reads ----------------------------------------------------------------
    async def get(self, id: str, default: Any = None) -> Any:
        return await self._run(self._store.get, id, default)

    async def getitem(self, id: str) -> dict[str, Any]:
        """``store[id]``: the document, or ``KeyError``."""
        return await self._run(self._store.__getitem__, id)

    async def contains(self, id: str) -> bool:
        return await self._run(self._store.__contains__, id)

    async def version(self, id: str) -> int | None:
        return await self._run(self._store.version, id)

    async def count(self) -> int:
        """``len(store)``."""
        return await self._run(self._store.__len__)

    async def keys(self) -> list[str]:
        return await self._run(self._store.keys)

    async def items(self) -> list[tuple[str, dict[str, Any]]]:
        return await self._run(self._store.items)

    async def values(self) -> list[dict[str, Any]]:
        return await self._run(self._store.values)

    # -- writes ---------------------------------------------------------------
    async def put(
        self, id: str, doc: dict[str, Any], *, expect_version: int | None = None,
        fence: F | None = None,
    ) -> int:
        return await self._run(self._store.put, id, doc, expect_version=expect_version,
                               fence=fence)

    async def delete(
        self, id: str, *, expect_version: int | None = None, fence: F | None = None
    ) -> bool:
        return await self._run(self._store.delete, id, expect_version=expect_version,
                               fence=fence)

    async def update(
        self,
        id: str,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        default: Any = MISSING,
        fence: F | None = None,
    ) -> dict[str, Any]:
        """As the store's ``update``; ``fn`` (a plain function) runs in the worker thread."""
        if default is MISSING:
            return await self._run(self._store.update, id, fn, fence=fence)
        return await self._run(self._store.update, id, fn, default=default, fence=fence)

    async def compact(self) -> None:
        await self._run(self._store.compact)

    async def close(self) -> None:
        await self._run(self._store.close)

    async def __aenter__(self: _A) -> _A:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncFacadeBatch(Generic[B, F]):
    """A synchronous batch ``B`` for ``async with``: committed in a worker thread at the end."""

    def __init__(self, batch: B, executor: Executor | None) -> None:
        self._batch = batch
        self._executor = executor

    @property
    def versions(self) -> dict[str, int | None]:
        return self._batch.versions

    def put(
        self, id: str, doc: dict[str, Any], *, expect_version: int | None = None,
        fence: F | None = None,
    ) -> None:
        put: Callable[..., None] = self._batch.put  # fence=: beyond BatchProtocol
        put(id, doc, expect_version=expect_version, fence=fence)

    def delete(
        self, id: str, *, expect_version: int | None = None, fence: F | None = None
    ) -> None:
        delete: Callable[..., None] = self._batch.delete
        delete(id, expect_version=expect_version, fence=fence)

    async def __aenter__(self: _AB) -> _AB:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await run_in(self._executor, self._batch.__exit__, exc_type, exc, tb)
