"""The one documented store API that every backend implements.

:class:`StoreProtocol` is what :class:`racefree.Store` (files) and
:class:`racefree.PgStore` (PostgreSQL) both are, structurally: code typed
against it runs on either, and ``racefree.open_store(url)`` returns one or the
other. :class:`AsyncStoreProtocol` is the same for their asyncio twins.

The shared semantics, which the contract tests (``tests/storeapi/test_store_contract.py``
and ``tests/storeapi/test_store_model.py``) check on every backend:

- Ids are any ``str`` (``""``, ``"../x"``, NUL, lone surrogates): data, never
  paths. A non-str id raises ``TypeError``. Documents are JSON objects (``dict``);
  anything else, or a value JSON cannot hold (NaN, a set), raises ``TypeError``
  before anything is written. A document comes back equal, with its keys in the
  same order and its numbers the same type.
- Versions: 1 for an id's first put, one more per write (a delete included),
  and they keep growing across a delete, so a version never names two documents.
  ``expect_version=N`` writes only if the stored version is N (0: the id must
  not exist), else :class:`racefree.ConflictError` (``key``, ``expected``,
  ``actual``) and nothing is written.
- Every write (``put``, ``delete``, ``update``, a whole ``batch``) is atomic: all
  of it or none of it, also after a crash. Once it returns, every reader in any
  process (on PostgreSQL: any client of the server) sees it. ``durable=True``
  (the default): it survives power loss when it returns.
- ``update(id, fn)`` is a read-modify-write no concurrent writer can interleave
  with: ``fn`` gets a copy of the document, runs exactly once, and an exception
  from it writes nothing.
- ``get`` returns a new object each call; changing it changes nothing stored.
- ``keys()``, ``items()``, ``values()`` are lists sorted by id (code point
  order), from one consistent snapshot.
- ``check()`` verifies the stored data and returns a report with at least
  ``documents`` and ``tombstones``; damage raises :class:`racefree.CorruptFileError`.

What differs: ``fence=`` (a :class:`racefree.PgLock` token) is accepted only by
the PostgreSQL store (the file store accepts ``fence=None``), so it is not part
of the protocol; errors specific to a backend (``DurabilityError`` for a failed
fsync, ``ConnectionLost`` for a lost server connection) are documented with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

__all__ = ["AsyncBatchProtocol", "AsyncStoreProtocol", "BatchProtocol", "ReportProtocol",
           "StoreMixin", "StoreProtocol"]

_S = TypeVar("_S", bound="StoreMixin")


class ReportProtocol(Protocol):
    """What ``check()`` returns on every backend (each adds its own fields)."""

    @property
    def documents(self) -> int: ...

    @property
    def tombstones(self) -> int: ...


class BatchProtocol(Protocol):
    """``with store.batch() as b``: writes committed as one atomic unit when the block ends.

    Nothing is written before the block ends, nor if it raises. Checks run in
    order (later ops see earlier ones); one failed ``expect_version`` raises
    ``ConflictError`` and writes nothing. ``versions``: the new version per id
    afterwards (None for a delete of an absent id).
    """

    versions: dict[str, int | None]

    def put(self, id: str, doc: dict[str, Any], *, expect_version: int | None = None) -> None: ...

    def delete(self, id: str, *, expect_version: int | None = None) -> None: ...

    def __enter__(self) -> BatchProtocol: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class StoreProtocol(Protocol):
    """A JSON document store: ``racefree.Store`` (files) or ``racefree.PgStore`` (PostgreSQL)."""

    @property
    def durable(self) -> bool: ...

    def get(self, id: str, default: Any = None) -> Any: ...

    def __getitem__(self, id: str) -> dict[str, Any]: ...

    def __contains__(self, id: object) -> bool: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[str]: ...

    def version(self, id: str) -> int | None: ...

    def keys(self) -> list[str]: ...

    def items(self) -> list[tuple[str, dict[str, Any]]]: ...

    def values(self) -> list[dict[str, Any]]: ...

    def items_with_versions(self) -> list[tuple[str, int, dict[str, Any]]]: ...

    def put(self, id: str, doc: dict[str, Any], *, expect_version: int | None = None) -> int: ...

    def delete(self, id: str, *, expect_version: int | None = None) -> bool: ...

    def __setitem__(self, id: str, doc: dict[str, Any]) -> None: ...

    def __delitem__(self, id: str) -> None: ...

    def update(
        self, id: str, fn: Callable[[dict[str, Any]], dict[str, Any]], *, default: Any = ...
    ) -> dict[str, Any]: ...

    def batch(self) -> BatchProtocol: ...

    def put_at_versions(self, rows: list[tuple[str, int, dict[str, Any]]]) -> None: ...

    def compact(self) -> None: ...

    def check(self) -> ReportProtocol: ...

    def close(self) -> None: ...

    def __enter__(self) -> StoreProtocol: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class AsyncBatchProtocol(Protocol):
    """``async with store.batch() as b``: a :class:`BatchProtocol` committed without blocking."""

    @property
    def versions(self) -> dict[str, int | None]: ...

    def put(self, id: str, doc: dict[str, Any], *, expect_version: int | None = None) -> None: ...

    def delete(self, id: str, *, expect_version: int | None = None) -> None: ...

    async def __aenter__(self) -> AsyncBatchProtocol: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class AsyncStoreProtocol(Protocol):
    """The asyncio twin: ``racefree.AsyncStore`` or ``racefree.AsyncPgStore``.

    The same calls and guarantees as :class:`StoreProtocol` as coroutines that
    never block the event loop (``len``, ``in`` and ``[]`` are ``count()``,
    ``contains()`` and ``getitem()``). Cancelling an awaiting call does not
    undo it: the write completes or fails atomically on its own; only its
    result is lost.
    """

    async def get(self, id: str, default: Any = None) -> Any: ...

    async def getitem(self, id: str) -> dict[str, Any]: ...

    async def contains(self, id: str) -> bool: ...

    async def version(self, id: str) -> int | None: ...

    async def count(self) -> int: ...

    async def keys(self) -> list[str]: ...

    async def items(self) -> list[tuple[str, dict[str, Any]]]: ...

    async def values(self) -> list[dict[str, Any]]: ...

    async def put(
        self, id: str, doc: dict[str, Any], *, expect_version: int | None = None
    ) -> int: ...

    async def delete(self, id: str, *, expect_version: int | None = None) -> bool: ...

    async def update(
        self, id: str, fn: Callable[[dict[str, Any]], dict[str, Any]], *, default: Any = ...
    ) -> dict[str, Any]: ...

    def batch(self) -> AsyncBatchProtocol: ...

    async def compact(self) -> None: ...

    async def check(self) -> ReportProtocol: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> AsyncStoreProtocol: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class StoreMixin:
    """The calls of :class:`StoreProtocol` that every backend derives the same way.

    A backend sets ``_path`` and ``_durable`` and defines the rest; ``values``,
    iteration, ``store[id] = doc``, ``del store[id]`` and ``with store:`` (which
    closes it) follow from its ``items``, ``keys``, ``put``, ``delete`` and
    ``close``, with their guarantees.
    """

    _path: str
    _durable: bool

    if TYPE_CHECKING:

        def keys(self) -> list[str]: ...

        def items(self) -> list[tuple[str, dict[str, Any]]]: ...

        def put(
            self, id: str, doc: dict[str, Any], *, expect_version: int | None = None
        ) -> int: ...

        def delete(self, id: str, *, expect_version: int | None = None) -> bool: ...

        def close(self) -> None: ...

    @property
    def path(self) -> str:
        """Where the store lives, as errors show it (PostgreSQL: ``url#name``)."""
        return self._path

    @property
    def durable(self) -> bool:
        """Whether a write survives power loss once it returns."""
        return self._durable

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def values(self) -> list[dict[str, Any]]:
        return [doc for _, doc in self.items()]

    def __setitem__(self, id: str, doc: dict[str, Any]) -> None:
        self.put(id, doc)

    def __delitem__(self, id: str) -> None:
        if not self.delete(id):
            raise KeyError(id)

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
