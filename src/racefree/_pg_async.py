"""``AsyncPgStore``: :class:`racefree.PgStore` for asyncio, never blocking the event loop.

The same shape as :class:`racefree.AsyncStore` (both follow
``AsyncStoreProtocol``): every call runs the synchronous PgStore call in a
thread of the loop's default executor (or the one given). A thread facade
rather than psycopg's async connections, so that both APIs share one
implementation of every guarantee (the row locks, the fencing, the
transactions), and a pooled connection serves sync and async callers alike.

Cancellation: cancelling an awaiting call does not stop its thread; the write
commits (or rolls back) on its own, atomically, exactly as the synchronous call
would, and only its result is lost.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, TypeVar

from ._pg_lock import FenceToken
from ._pg_store import PgBatch, PgStore, PgStoreReport

__all__ = ["AsyncPgBatch", "AsyncPgStore"]

T = TypeVar("T")
_MISSING: Any = object()


class AsyncPgStore:
    """The :class:`PgStore` API as coroutines (same guarantees, same errors).

    Construct it with a URL (the pool opens here, synchronously; inside a
    running loop use ``await AsyncPgStore.open(...)``) or wrap an open PgStore
    with ``AsyncPgStore.wrap(store)``.
    """

    def __init__(self, url: str, name: str | None = None, *, executor: Executor | None = None,
                 **options: Any) -> None:
        self._store = PgStore(url, name, **options)
        self._executor = executor

    @classmethod
    def wrap(cls, store: PgStore, *, executor: Executor | None = None) -> AsyncPgStore:
        obj = cls.__new__(cls)
        obj._store = store
        obj._executor = executor
        return obj

    @classmethod
    async def open(cls, url: str, name: str | None = None, *, executor: Executor | None = None,
                   **options: Any) -> AsyncPgStore:
        """Connect in a worker thread, then wrap."""
        loop = asyncio.get_running_loop()
        store = await loop.run_in_executor(
            executor, functools.partial(PgStore, url, name, **options)
        )
        return cls.wrap(store, executor=executor)

    @property
    def store(self) -> PgStore:
        """The synchronous PgStore underneath (shares its pool)."""
        return self._store

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

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
        fence: FenceToken | None = None,
    ) -> int:
        return await self._run(self._store.put, id, doc, expect_version=expect_version,
                               fence=fence)

    async def delete(
        self, id: str, *, expect_version: int | None = None, fence: FenceToken | None = None
    ) -> bool:
        return await self._run(self._store.delete, id, expect_version=expect_version,
                               fence=fence)

    async def update(
        self,
        id: str,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        default: Any = _MISSING,
        fence: FenceToken | None = None,
    ) -> dict[str, Any]:
        """As :meth:`PgStore.update`; ``fn`` (a plain function) runs in the worker thread."""
        if default is _MISSING:
            return await self._run(self._store.update, id, fn, fence=fence)
        return await self._run(self._store.update, id, fn, default=default, fence=fence)

    def batch(self) -> AsyncPgBatch:
        """``async with store.batch() as b: b.put(...)``: one transaction."""
        return AsyncPgBatch(self)

    async def compact(self) -> None:
        await self._run(self._store.compact)

    async def check(self) -> PgStoreReport:
        return await self._run(self._store.check)

    async def close(self) -> None:
        await self._run(self._store.close)

    async def __aenter__(self) -> AsyncPgStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncPgStore {self._store.url!r} store={self._store.name!r}>"


class AsyncPgBatch:
    """A :class:`PgBatch` for ``async with``: committed in a worker thread at the end."""

    def __init__(self, store: AsyncPgStore) -> None:
        self._owner = store
        self._batch: PgBatch = store.store.batch()

    @property
    def versions(self) -> dict[str, int | None]:
        return self._batch.versions

    def put(
        self, id: str, doc: dict[str, Any], *, expect_version: int | None = None,
        fence: FenceToken | None = None,
    ) -> None:
        self._batch.put(id, doc, expect_version=expect_version, fence=fence)

    def delete(
        self, id: str, *, expect_version: int | None = None, fence: FenceToken | None = None
    ) -> None:
        self._batch.delete(id, expect_version=expect_version, fence=fence)

    async def __aenter__(self) -> AsyncPgBatch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._owner._run(self._batch.__exit__, exc_type, exc, tb)
