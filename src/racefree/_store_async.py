"""``AsyncStore``: :class:`racefree.Store` for asyncio, never blocking the event loop.

Every call that may wait (for the write lock, an fdatasync, or catching up with
other processes' writes) runs in a thread of the loop's default executor (or
the one given). A ``get`` whose index is already current runs inline: it is a
dictionary lookup, a copy out of a mapped file and a JSON parse, with no lock
and no system call (a page of the mapping that is not in memory costs a disk
read, as any access to a mapped file does).

Cancellation: cancelling an awaiting call does not stop its thread; the write
completes (or fails) on its own, atomically, exactly as the synchronous call
would, and only its result is lost.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import Executor
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._store import Store, StoreBatch, StoreReport

T = TypeVar("T")
_MISSING: Any = object()


class AsyncStore:
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
        from ._store import Store

        self._init(Store(directory, durable=durable, **options), executor)

    def _init(self, store: Store, executor: Executor | None) -> None:
        self._store = store
        self._core = store._core
        self._executor = executor

    @classmethod
    def wrap(cls, store: Store, *, executor: Executor | None = None) -> AsyncStore:
        obj = cls.__new__(cls)
        obj._init(store, executor)
        return obj

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
        from ._store import Store

        loop = asyncio.get_running_loop()
        store = await loop.run_in_executor(
            executor, functools.partial(Store, directory, durable=durable, **options)
        )
        return cls.wrap(store, executor=executor)

    @property
    def store(self) -> Store:
        """The synchronous Store underneath (shares its files, index and locks)."""
        return self._store

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- reads ---------------------------------------------------------------------
    async def get(self, id: str, default: Any = None) -> Any:
        core = self._core
        if core.words[1] == core.state.end:  # current: no lock, no system call
            return self._store.get(id, default)
        return await self._run(self._store.get, id, default)

    async def getitem(self, id: str) -> dict[str, Any]:
        """``store[id]``: the document, or ``KeyError``."""
        doc = await self.get(id, _MISSING)
        if doc is _MISSING:
            raise KeyError(id)
        result: dict[str, Any] = doc
        return result

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

    # -- writes ----------------------------------------------------------------------
    async def put(
        self, id: str, doc: dict[str, Any], *, expect_version: int | None = None,
        fence: None = None,
    ) -> int:
        return await self._run(self._store.put, id, doc, expect_version=expect_version,
                               fence=fence)

    async def delete(
        self, id: str, *, expect_version: int | None = None, fence: None = None
    ) -> bool:
        return await self._run(self._store.delete, id, expect_version=expect_version,
                               fence=fence)

    async def update(
        self,
        id: str,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        default: Any = _MISSING,
        fence: None = None,
    ) -> dict[str, Any]:
        """As :meth:`Store.update`; ``fn`` (a plain function) runs in the worker thread."""
        if default is _MISSING:
            return await self._run(self._store.update, id, fn, fence=fence)
        return await self._run(self._store.update, id, fn, default=default, fence=fence)

    def batch(self) -> AsyncStoreBatch:
        """``async with store.batch() as b: b.put(...)``: one all-or-nothing record."""
        return AsyncStoreBatch(self)

    async def compact(self) -> None:
        await self._run(self._store.compact)

    async def check(self) -> StoreReport:
        return await self._run(self._store.check)

    async def close(self) -> None:
        await self._run(self._store.close)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncStore {self._store.path!r} durable={self._store.durable}>"


class AsyncStoreBatch:
    """A :class:`StoreBatch` for ``async with``: committed in a worker thread at the end."""

    def __init__(self, store: AsyncStore) -> None:
        self._owner = store
        self._batch: StoreBatch = store.store.batch()

    @property
    def versions(self) -> dict[str, int | None]:
        return self._batch.versions

    def put(self, id: str, doc: dict[str, Any], *, expect_version: int | None = None) -> None:
        self._batch.put(id, doc, expect_version=expect_version)

    def delete(self, id: str, *, expect_version: int | None = None) -> None:
        self._batch.delete(id, expect_version=expect_version)

    async def __aenter__(self) -> AsyncStoreBatch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._owner._run(self._batch.__exit__, exc_type, exc, tb)
