"""``AsyncStore``: :class:`racefree.Store` for asyncio, never blocking the event loop.

Every call that may wait (for the write lock, an fdatasync, or catching up with
other processes' writes) runs in a thread of the loop's default executor (or
the one given), through the facade of ``storeapi.facade``. A ``get`` whose index
is already current runs inline, with no lock: a hit in the handle's cache of
decoded documents is a dictionary lookup and a copy (no system call); a miss is
one ``pread`` of the document (a disk read if its page is not in memory) and a
JSON parse.

Cancellation: cancelling an awaiting call does not stop its thread; the write
completes (or fails) on its own, atomically, exactly as the synchronous call
would, and only its result is lost.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import Executor
from typing import Any

from racefree.store.batch import StoreBatch
from racefree.store.store import Store, StoreReport
from racefree.storeapi.facade import MISSING, AsyncFacade, AsyncFacadeBatch


class AsyncStore(AsyncFacade["Store", None]):
    """The :class:`Store` API as coroutines (same guarantees, same errors).

    Construct it with a directory (the store opens here, synchronously; use
    ``await AsyncStore.open(...)`` inside a running loop) or wrap an open Store
    with ``AsyncStore.wrap(store)``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        durable: bool = True,
        executor: Executor | None = None,
        **options: Any,
    ) -> None:

        self._init(Store(directory, durable=durable, **options), executor)

    def _init(self, store: Store, executor: Executor | None) -> None:
        super()._init(store, executor)
        self._core = store._core

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        durable: bool = True,
        executor: Executor | None = None,
        **options: Any,
    ) -> AsyncStore:
        """Open the store in a worker thread (opening a large store reads its index)."""

        return await cls._open_with(
            functools.partial(Store, directory, durable=durable, **options), executor
        )

    # -- reads ---------------------------------------------------------------------
    async def get(self, id: str, default: Any = None) -> Any:
        core = self._core
        if core.fast[1] == core.state.end:  # current: no lock (mapped header: no system call)
            return self._store.get(id, default)
        return await self._run(self._store.get, id, default)

    async def getitem(self, id: str) -> dict[str, Any]:
        """``store[id]``: the document, or ``KeyError``."""
        doc = await self.get(id, MISSING)
        if doc is MISSING:
            raise KeyError(id)
        result: dict[str, Any] = doc
        return result

    def batch(self) -> AsyncStoreBatch:
        """``async with store.batch() as b: b.put(...)``: one all-or-nothing record."""
        return AsyncStoreBatch(self)

    async def check(self) -> StoreReport:
        return await self._run(self._store.check)

    def __repr__(self) -> str:
        return f"<AsyncStore {self._store.path!r} durable={self._store.durable}>"


class AsyncStoreBatch(AsyncFacadeBatch[StoreBatch, None]):
    """A :class:`StoreBatch` for ``async with``: committed in a worker thread at the end."""

    def __init__(self, store: AsyncStore) -> None:
        super().__init__(store.store.batch(), store._executor)
