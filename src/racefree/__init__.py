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

``racefree.__version__`` is the installed package's version (its metadata,
read on first use). Drop-in modules for programs written for filelock,
fasteners and atomicwrites are in :mod:`racefree.compat`.
"""

from __future__ import annotations

import importlib

from racefree._errors import (
    ConflictError,
    ConnectionLost,
    CorruptFileError,
    DurabilityError,
    FormatError,
    InheritedLockError,
    LimitError,
    LockLost,
    LockTimeout,
    RacefreeError,
    ReadOnlyError,
    UnsafePathError,
    WouldBlock,
)

# typing is not imported at run time: ``import racefree`` stays cheap (annotations are strings).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    __version__: str
    from racefree.backends.dispatch import open_async_store, open_lock, open_store
    from racefree.files.atomic import atomic_open, atomic_write
    from racefree.files.jsonfile import JsonFile
    from racefree.files.sweep import sweep
    from racefree.lock.filelock import FileLock
    from racefree.lockfile.lockfile import LockFile
    from racefree.log.appendlog import AppendLog
    from racefree.pg.asyncstore import AsyncPgStore
    from racefree.pg.lock import FenceToken, PgLock
    from racefree.pg.store import PgStore
    from racefree.store.asyncstore import AsyncStore
    from racefree.store.store import Store
    from racefree.storeapi.protocol import AsyncStoreProtocol, StoreProtocol

# Each layer is imported on first use, so that ``import racefree`` (and the
# CLI) stays fast and a layer's module loads only when a program uses it.
_LAZY = {
    "AppendLog": "racefree.log.appendlog",
    "AsyncPgStore": "racefree.pg.asyncstore",
    "AsyncStore": "racefree.store.asyncstore",
    "AsyncStoreProtocol": "racefree.storeapi.protocol",
    "FenceToken": "racefree.pg.lock",
    "FileLock": "racefree.lock.filelock",
    "JsonFile": "racefree.files.jsonfile",
    "LockFile": "racefree.lockfile.lockfile",
    "PgLock": "racefree.pg.lock",
    "PgStore": "racefree.pg.store",
    "Store": "racefree.store.store",
    "StoreProtocol": "racefree.storeapi.protocol",
    "atomic_open": "racefree.files.atomic",
    "atomic_write": "racefree.files.atomic",
    "open_async_store": "racefree.backends.dispatch",
    "open_lock": "racefree.backends.dispatch",
    "open_store": "racefree.backends.dispatch",
    "sweep": "racefree.files.sweep",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # From the installed package's metadata, the one place the version is
        # written (pyproject.toml); read on first use, not at import.
        from importlib.metadata import version

        value = globals()["__version__"] = version("racefree")
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'racefree' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
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
    "InheritedLockError",
    "JsonFile",
    "LimitError",
    "LockFile",
    "LockLost",
    "LockTimeout",
    "PgLock",
    "PgStore",
    "RacefreeError",
    "ReadOnlyError",
    "Store",
    "StoreProtocol",
    "UnsafePathError",
    "WouldBlock",
    "atomic_open",
    "atomic_write",
    "open_async_store",
    "open_lock",
    "open_store",
    "sweep",
]
