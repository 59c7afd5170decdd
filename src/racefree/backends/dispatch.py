"""``open_store`` and ``open_lock``: one call that picks the backend from a path or URL.

A file path (or ``file://`` URL) gives the local, file-based :class:`Store`
or :class:`FileLock`; a ``postgresql://`` (or ``postgres://``) URL gives
:class:`PgStore` or :class:`PgLock`, with the same API and guarantees, for
several machines. Application code written against one runs on the other.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from typing import TYPE_CHECKING, Any

from racefree.pg import driver as _pg

if TYPE_CHECKING:
    from racefree.lock.filelock import FileLock
    from racefree.pg.asyncstore import AsyncPgStore
    from racefree.pg.lock import PgLock
    from racefree.pg.store import PgStore
    from racefree.store.asyncstore import AsyncStore
    from racefree.store.store import Store

__all__ = ["lock_file_name", "open_async_store", "open_lock", "open_store", "parse_target"]


def parse_target(target: str | os.PathLike[str]) -> tuple[str, str]:
    """``("postgres", url)`` or ``("file", path)``; ValueError for another URL scheme."""
    if isinstance(target, str) and _pg.is_pg_url(target):
        return "postgres", target
    if isinstance(target, str) and "://" in target:
        parts = urllib.parse.urlsplit(target)
        if parts.scheme.lower() != "file":
            raise ValueError(
                f"unsupported URL scheme {parts.scheme!r}: use a path, file:// or postgresql://"
            )
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"a file:// URL must name a local path, not host {parts.netloc!r}")
        return "file", urllib.parse.unquote(parts.path, errors="surrogateescape")
    path = os.fspath(target)
    if not isinstance(path, str):
        raise TypeError("a store or lock location is a str path, os.PathLike[str] or URL")
    return "file", path


def open_store(target: str | os.PathLike[str], **kwargs: Any) -> Store | PgStore:
    """Open the document store at ``target``: a directory path, ``file://`` or ``postgresql://``.

    Keyword arguments go to :class:`Store` or :class:`PgStore` (for
    PostgreSQL, ``name=`` or ``?store=NAME`` picks one of the database's named
    stores; ``durable=`` works for both). Both follow :class:`StoreProtocol`.
    """
    kind, where = parse_target(target)
    if kind == "postgres":
        from racefree.pg.store import PgStore

        return PgStore(where, **kwargs)
    from racefree.store.store import Store

    return Store(where, **kwargs)


async def open_async_store(
    target: str | os.PathLike[str], **kwargs: Any
) -> AsyncStore | AsyncPgStore:
    """:func:`open_store`'s asyncio twin: opens in a worker thread, never blocking the loop.

    Returns :class:`AsyncStore` or :class:`AsyncPgStore` (both follow
    :class:`AsyncStoreProtocol`).
    """
    kind, where = parse_target(target)
    if kind == "postgres":
        from racefree.pg.asyncstore import AsyncPgStore

        return await AsyncPgStore.open(where, **kwargs)
    from racefree.store.asyncstore import AsyncStore

    return await AsyncStore.open(where, **kwargs)


def lock_file_name(name: str) -> str:
    """The file name of lock ``name`` in a lock directory: any string maps to one safe name.

    Percent-encoding keeps ``/``, NUL and ``..`` from becoming path syntax
    (names are data, never paths: pitfall S9); a name too long for a file
    name is replaced by its sha256.
    """
    if not isinstance(name, str):
        raise TypeError(f"lock name must be a str, not {type(name).__name__}")
    encoded = urllib.parse.quote(name.encode("utf-8", "surrogatepass"), safe="")
    if len(encoded) > 200:
        encoded = "sha256-" + hashlib.sha256(encoded.encode()).hexdigest()
    return f"{encoded}.lock"


def open_lock(
    target: str | os.PathLike[str], name: str | None = None, **kwargs: Any
) -> FileLock | PgLock:
    """A lock named ``name`` at ``target``, with the :class:`FileLock` API.

    ``postgresql://...``: a :class:`PgLock` on a session advisory lock (``name``
    required), with a fencing ``token``. A path or ``file://`` URL: with
    ``name``, the path is a directory and the lock is the file
    ``lock_file_name(name)`` in it; without, the path is the lock file itself.
    Keyword arguments (``shared=``, ``timeout=``) go to the lock.
    """
    kind, where = parse_target(target)
    if kind == "postgres":
        if name is None:
            raise TypeError("open_lock of a postgresql:// URL needs a lock name")
        from racefree.pg.lock import PgLock

        return PgLock(where, name, **kwargs)
    from racefree.lock.filelock import FileLock

    path = where if name is None else os.path.join(where, lock_file_name(name))
    return FileLock(path, **kwargs)
