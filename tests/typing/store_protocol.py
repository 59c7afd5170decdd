"""Checked by mypy --strict (see tests/pg/test_pg_open.py): both stores satisfy the one protocol.

Not run: a function returning a store as the protocol type type-checks only if
the store has every method of the protocol with a compatible signature.
"""

from __future__ import annotations

from racefree import (
    AsyncPgStore,
    AsyncStore,
    AsyncStoreProtocol,
    PgStore,
    Store,
    StoreProtocol,
    open_store,
)


def file_store(s: Store) -> StoreProtocol:
    return s


def pg_store(s: PgStore) -> StoreProtocol:
    return s


def file_async(s: AsyncStore) -> AsyncStoreProtocol:
    return s


def pg_async(s: AsyncPgStore) -> AsyncStoreProtocol:
    return s


def opened(url: str) -> StoreProtocol:
    return open_store(url)


def portable(store: StoreProtocol) -> int:
    with store.batch() as b:
        b.put("a", {"n": 1}, expect_version=0)
    new = store.update("a", lambda d: {"n": d["n"] + 1})
    return store.put("b", new) + len(store) + store.check().documents
