"""``AsyncPgStore``: :class:`racefree.PgStore` for asyncio, never blocking the event loop.

The same shape as :class:`racefree.AsyncStore` (both follow
``AsyncStoreProtocol``, both built on ``storeapi.facade``): every call runs the
synchronous PgStore call in a thread of the loop's default executor (or the one
given). A thread facade rather than psycopg's async connections, so that both
APIs share one implementation of every guarantee (the row locks, the fencing,
the transactions), and a pooled connection serves sync and async callers alike.

Cancellation: cancelling an awaiting call does not stop its thread; the write
commits (or rolls back) on its own, atomically, exactly as the synchronous call
would, and only its result is lost.
"""

from __future__ import annotations

import functools
from concurrent.futures import Executor
from typing import Any

from racefree.pg.lock import FenceToken
from racefree.pg.store import PgBatch, PgStore, PgStoreReport
from racefree.storeapi.facade import AsyncFacade, AsyncFacadeBatch

__all__ = ["AsyncPgBatch", "AsyncPgStore"]


class AsyncPgStore(AsyncFacade[PgStore, FenceToken]):
    """The :class:`PgStore` API as coroutines (same guarantees, same errors).

    Construct it with a URL (the pool opens here, synchronously; inside a
    running loop use ``await AsyncPgStore.open(...)``) or wrap an open PgStore
    with ``AsyncPgStore.wrap(store)``.
    """

    def __init__(self, url: str, name: str | None = None, *, executor: Executor | None = None,
                 **options: Any) -> None:
        self._init(PgStore(url, name, **options), executor)

    @classmethod
    async def open(cls, url: str, name: str | None = None, *, executor: Executor | None = None,
                   **options: Any) -> AsyncPgStore:
        """Connect in a worker thread, then wrap."""
        return await cls._open_with(functools.partial(PgStore, url, name, **options), executor)

    def batch(self) -> AsyncPgBatch:
        """``async with store.batch() as b: b.put(...)``: one transaction."""
        return AsyncPgBatch(self)

    async def check(self) -> PgStoreReport:
        return await self._run(self._store.check)

    def __repr__(self) -> str:
        return f"<AsyncPgStore {self._store.url!r} store={self._store.name!r}>"


class AsyncPgBatch(AsyncFacadeBatch[PgBatch, FenceToken]):
    """A :class:`PgBatch` for ``async with``: committed in a worker thread at the end."""

    def __init__(self, store: AsyncPgStore) -> None:
        super().__init__(store.store.batch(), store._executor)
