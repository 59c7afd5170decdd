"""racefree: file-based storage that never loses an update.

Layers that each work alone:

- :func:`atomic_write`, :func:`atomic_open`, :func:`sweep`: atomic, durable file replacement;
- :class:`FileLock`: one lock that excludes threads, asyncio tasks and processes together;
- :class:`LockFile`: an ``O_EXCL`` lock file with safe stale-lock recovery, for network mounts;
- :class:`JsonFile`: locked read-modify-write of a JSON file with an atomic, durable publish;
- :class:`AppendLog`: an append-only log of JSON records with compaction that loses nothing;
- :class:`Store`, :class:`AsyncStore`: a JSON document store that many processes share;
- :func:`open_store`, :func:`open_lock`: the same store and lock API on files or, for several
  machines, on PostgreSQL (:class:`PgStore`, :class:`PgLock`; ``pip install 'racefree[postgres]'``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    ConflictError,
    ConnectionLost,
    CorruptFileError,
    DurabilityError,
    FormatError,
    LockLost,
    LockTimeout,
    RacefreeError,
    WouldBlock,
)

if TYPE_CHECKING:
    from ._atomic import atomic_open, atomic_write, sweep
    from ._jsonfile import JsonFile
    from ._lock import FileLock
    from ._lockfile import LockFile
    from ._log import AppendLog
    from ._open import open_async_store, open_lock, open_store
    from ._pg_async import AsyncPgStore
    from ._pg_lock import FenceToken, PgLock
    from ._pg_store import PgStore
    from ._protocol import AsyncStoreProtocol, StoreProtocol
    from ._store import AsyncStore, Store

# Each layer is imported on first use, so that ``import racefree`` (and the
# CLI) stays fast and a layer's module loads only when a program uses it.
_LAZY = {
    "AppendLog": "._log",
    "AsyncPgStore": "._pg_async",
    "AsyncStore": "._store",
    "AsyncStoreProtocol": "._protocol",
    "FenceToken": "._pg_lock",
    "FileLock": "._lock",
    "JsonFile": "._jsonfile",
    "LockFile": "._lockfile",
    "PgLock": "._pg_lock",
    "PgStore": "._pg_store",
    "Store": "._store",
    "StoreProtocol": "._protocol",
    "atomic_open": "._atomic",
    "atomic_write": "._atomic",
    "open_async_store": "._open",
    "open_lock": "._open",
    "open_store": "._open",
    "sweep": "._atomic",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'racefree' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AppendLog",
    "AsyncPgStore",
    "AsyncStore",
    "AsyncStoreProtocol",
    "ConflictError",
    "ConnectionLost",
    "CorruptFileError",
    "DurabilityError",
    "FenceToken",
    "FileLock",
    "FormatError",
    "JsonFile",
    "LockFile",
    "LockLost",
    "LockTimeout",
    "PgLock",
    "PgStore",
    "RacefreeError",
    "Store",
    "StoreProtocol",
    "WouldBlock",
    "atomic_open",
    "atomic_write",
    "open_async_store",
    "open_lock",
    "open_store",
    "sweep",
]
