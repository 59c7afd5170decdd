"""``Store``: a JSON document store in a directory, shared by threads and processes.

A log-structured store (like bitcask): every write appends one framed record to
the active segment; each process keeps an in-memory index of where each
document's latest record is; a shared 4 KiB header tells every process, without a
system call, whether anything was written since its index was built. See
``docs/store.md`` for the design, the on-disk format and the crash argument.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from racefree import _fork, _json
from racefree._errors import ConflictError, DurabilityError
from racefree.store.batch import Op, StoreBatch
from racefree.store.compact import StoreReport, check_state, compact_locked
from racefree.store.core import Core
from racefree.store.files import W_DEAD, W_SYNCED, W_TOTAL
from racefree.store.index import State
from racefree.store.reads import StoreReads
from racefree.store.segment import ENTRY, FRAME, M36, OP_DELETE, OP_PUT, PREFIX, frame
from racefree.storeapi.checks import (
    MAX_VERSION,
    check_expect,
    check_version,
    encode_doc,
    encode_id,
    no_fence,
    version_limit,
)
from racefree.storeapi.protocol import StoreMixin

__all__ = ["Store", "StoreBatch", "StoreReport"]

_MISSING: Any = object()

#: Segments are preallocated this large (a record larger than this gets a segment of its own).
SEGMENT_SIZE = 32 << 20
#: Automatic compaction runs when dead bytes are at least this many and at least half
#: of all record bytes.
COMPACT_MIN_DEAD = 16 << 20
#: The default bound of a handle's cache of decoded documents (estimated bytes; see
#: ``store.cache``).
CACHE_BYTES = 32 << 20

_ENTRY_OVERHEAD = FRAME.size + ENTRY.size


class Store(StoreReads, StoreMixin):
    """A JSON document store in ``directory``: string ids, JSON-object documents.

    Guarantees (each write is one record, appended under an flock):

    - Atomic: a ``put``, ``delete``, ``update`` or ``batch`` happens entirely or not
      at all, also after a crash (a torn record is detected by its crc and ignored).
    - Coherent: any thread or process sees every write acknowledged before its read
      began (a read compares one shared integer, then catches up if it changed).
    - Durable: with ``durable=True`` a write has been fdatasynced when it returns
      (survives power loss); concurrent writers share one fdatasync (group commit).
      With ``durable=False`` it survives the process being killed, not power loss.
      A failed fsync raises :class:`DurabilityError`, is never retried, and from then
      on every process refuses writes to the store, across reopens (a ``POISONED``
      marker file), until ``racefree check --repair`` has rewritten the data
      durably (pitfall W7, fsyncgate).
    - Isolated: writers are serialised; ``update`` is a locked read-modify-write
      (pitfall S1). A read may see a durable write whose ``put`` has not returned yet.
    - Ids are data, never paths (any ``str``, pitfall S9); documents are compact
      JSON, never pickle (S7). Versions start at 1 and grow by one per write, and
      keep growing across a delete (a re-created id never repeats a version).
    - ``get`` returns a new object each call (every dict and list in it new). A
      handle keeps the documents read more than once decoded, in a cache bounded by
      ``cache_bytes`` of estimated memory (default 32 MiB; 0 turns it off), coherent
      with every process's writes: a hit makes no system call (``store.cache``).
    - Garbage is reclaimed automatically once dead bytes reach both
      ``COMPACT_MIN_DEAD`` (16 MiB) and half of all bytes; deleted ids never come back.
    - Other users (``docs/security.md``): no file of the store is opened through a
      link, a FIFO or a device, nor trusted if another user planted it in a shared
      directory (:class:`UnsafePathError`); a file cut short while in use is
      :class:`CorruptFileError`, never a SIGBUS. ``readonly=True`` opens every file
      for reading only (writes raise :class:`ReadOnlyError`).

    Fork: a child process reopens its own descriptors at its first call and never
    releases a lock its parent holds (L5); a child forked inside a locked call
    (``update``'s ``fn``) raises :class:`InheritedLockError` at any write until it
    has left that call. Threads may share one Store; several Store objects on one
    directory in one process share its lock state (a write through one inside
    another's ``update`` on the same thread is reentrant).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        durable: bool = True,
        readonly: bool = False,
        cache_bytes: int = CACHE_BYTES,
        _segment_size: int = SEGMENT_SIZE,
        _compact_min: int = COMPACT_MIN_DEAD,
    ) -> None:
        path = os.fspath(directory)
        if not isinstance(path, str):
            raise TypeError("a store directory is a str path")
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int):
            raise TypeError(f"cache_bytes must be an int, not {cache_bytes!r}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, not {cache_bytes}")
        self._path = path
        self._durable = bool(durable)
        self._readonly = bool(readonly)
        self._compact_min = _compact_min
        self._core = Core(
            path, self._durable, _segment_size, readonly=self._readonly, cache_bytes=cache_bytes
        )

    @property
    def readonly(self) -> bool:
        """Whether this handle was opened with ``readonly=True`` (its writes raise)."""
        return self._readonly

    # -- writes --------------------------------------------------------------------
    def _commit(self, ops: list[Op]) -> Any:
        """Check and write ``ops`` as one frame under the write lock, then group-commit.

        Each op is ``(op, id, idb, doc, expect_version, exact_version)``. Returns
        the new version per id (a delete's tombstone version; None for a delete of
        an absent id). ConflictError (nothing written) if any check fails.
        """
        core = self._core
        core.acquire_write()
        try:
            results, end = self._commit_locked(ops)
        except DurabilityError:
            core.poison()  # W7: whatever failed to sync, nothing is written after it
            raise
        finally:
            core.release()
        if self._durable and end >= 0:
            core.sync(end)
        return results

    def _commit_locked(
        self, ops: list[Op]
    ) -> tuple[dict[str, int | None], int]:
        core = self._core
        st = self._writable()
        index, tomb = st.index, st.tomb
        seen: dict[str, tuple[bool, int]] = {}
        results: dict[str, int | None] = {}
        parts: list[bytes] = []
        plan: list[tuple[int, str, int, int, int]] = []
        for op, key, idb, doc, expect, exact in ops:
            if key in seen:
                exists, cur = seen[key]
            else:
                old = index.get(key)
                exists = old is not None
                cur = old >> 100 if old is not None else tomb.get(key, 0)
            if expect is not None and expect != (cur if exists else 0):
                # For a delete, expect_version=0 ("must not exist") on an absent id
                # deletes nothing and is no conflict.
                raise ConflictError(key, expect, cur if exists else None)
            if op == OP_DELETE and not exists:
                results[key] = None
                continue
            if exact is not None:
                version = exact
            elif cur >= MAX_VERSION:
                raise version_limit(key)  # nothing written: the frame is not built yet
            else:
                version = cur + 1
            seen[key] = (op == OP_PUT, version)
            results[key] = version
            parts.append(ENTRY.pack(op, len(idb), version, len(doc)))
            parts.append(idb)
            parts.append(doc)
            plan.append((op, key, version, len(idb), len(doc)))
        if not plan:
            return results, -1
        entries = b"".join(parts)
        if len(entries) > 0xFFFFFF00:
            raise ValueError("a batch of more than 4 GiB cannot be one record")
        # The frame carries how far the store is known to be synced: what lets
        # recovery tell a torn in-flight write from damage (see _segment).
        record = frame(core.words[W_SYNCED], entries)
        seg, off = core.append(st, record)
        dead = 0
        at = off + PREFIX
        puts: dict[str, int] = {}
        deletes: dict[str, int] = {}
        for op, key, version, idlen, doclen in plan:
            old = puts.get(key, index.get(key)) if key not in deletes else None
            if old is not None:
                dead += ((old >> 40) & M36) + idlen + _ENTRY_OVERHEAD
            if op == OP_PUT:
                puts[key] = (((version << 24 | seg) << 36 | doclen) << 40) | (
                    at + ENTRY.size + idlen
                )
                deletes.pop(key, None)
            else:
                puts.pop(key, None)
                deletes[key] = version
            at += ENTRY.size + idlen + doclen
        # All at once for this process's readers (a batch is all or nothing to them too).
        core.apply(st, seg << 40 | (off + len(record)), dead, len(record), puts, deletes)
        return results, st.end

    def _writable(self) -> State:
        """``core.writable()``, after an automatic compaction if garbage passed the threshold.

        The compaction runs before this write appends anything: if it fails, the
        write raises with nothing written (a retry then sees the same versions).
        """
        core = self._core
        st = core.writable()
        w = core.words
        if w[W_DEAD] >= self._compact_min and 2 * w[W_DEAD] >= w[W_TOTAL]:
            st = compact_locked(core, st)
        return st

    def put(
        self,
        id: str,
        doc: dict[str, Any],
        *,
        expect_version: int | None = None,
        fence: None = None,
    ) -> int:
        """Store ``doc`` under ``id``; returns its new version.

        Atomic; durable when it returns if the store is durable. ``expect_version``:
        write only if the stored version is this (0: ``id`` must not exist), else
        :class:`ConflictError` and nothing is written. ``TypeError`` before anything
        is written if ``doc`` is not a JSON-serialisable dict (NaN included) or
        ``id`` not a str. ``fence`` is for the PostgreSQL store; a file store raises
        ``ValueError`` for any other value than None.
        """
        # The same steps as _commit for one put, unrolled: this is the hot path.
        no_fence(fence)
        idb = encode_id(id)
        data = encode_doc(doc)
        expect = check_expect(expect_version)
        core = self._core
        core.acquire_write()
        try:
            st = core.writable()
            w = core.words
            if w[W_DEAD] >= self._compact_min and 2 * w[W_DEAD] >= w[W_TOTAL]:
                # Before appending: a failed compaction leaves nothing written (see _writable).
                st = compact_locked(core, st)
            index = st.index
            old = index.get(id)
            if old is None:
                if expect:
                    raise ConflictError(id, expect, None)
                cur = st.tomb.get(id, 0) if st.tomb else 0
                dead = 0
            else:
                cur = old >> 100
                if expect is not None and expect != cur:
                    raise ConflictError(id, expect, cur)
                dead = ((old >> 40) & M36) + len(idb) + _ENTRY_OVERHEAD
            if cur >= MAX_VERSION:
                raise version_limit(id)
            version = cur + 1
            entry = ENTRY.pack(OP_PUT, len(idb), version, len(data)) + idb + data
            record = frame(w[W_SYNCED], entry)
            seg, off = core.append(st, record)
            index[id] = (((version << 24 | seg) << 36 | len(data)) << 40) | (
                off + PREFIX + ENTRY.size + len(idb)
            )
            if old is None and st.tomb:
                st.tomb.pop(id, None)
            st.cache.drop(id)  # before publish moves st.end: see store.cache
            core.publish(st, seg << 40 | (off + len(record)), dead, len(record))
            end = st.end
        except DurabilityError:
            core.poison()  # W7: whatever failed to sync, nothing is written after it
            raise
        finally:
            core.release()
        if self._durable:
            core.sync(end)
        return version

    def delete(self, id: str, *, expect_version: int | None = None, fence: None = None) -> bool:
        """Delete ``id``; False (nothing written) if it does not exist.

        With ``expect_version``, another version (or a missing id, unless
        ``expect_version=0``) raises :class:`ConflictError` and nothing is written;
        ``expect_version=0`` on a missing id returns False. Atomic and durable as ``put``.
        """
        no_fence(fence)
        op = (OP_DELETE, id, encode_id(id), b"", check_expect(expect_version), None)
        return self._commit([op])[id] is not None

    def update(
        self,
        id: str,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        default: Any = _MISSING,
        fence: None = None,
    ) -> dict[str, Any]:
        """Atomically replace ``id``'s document with ``fn(doc)``; returns a copy of it.

        A read-modify-write under the write lock, across threads and processes: no
        update is lost (pitfall S1). ``fn`` gets a copy of the stored document (of
        ``default`` if ``id`` is missing; ``KeyError`` without a default) and
        returns the new one; it runs exactly once, while other writers wait, so keep
        it short. An exception from ``fn`` writes nothing.
        """
        no_fence(fence)
        idb = encode_id(id)
        core = self._core
        core.acquire_write()
        try:
            st = core.writable()
            value = st.index.get(id)
            if value is not None:
                doc = self._read(st, value)
            elif default is _MISSING:
                raise KeyError(id)
            else:
                doc = _json.parse(json.loads, encode_doc(default))
            data = encode_doc(fn(doc))
            # Still under the lock (reentrant): fn's own writes, if any, came first.
            _, end = self._commit_locked([(OP_PUT, id, idb, data, None, None)])
        except DurabilityError:
            core.poison()  # W7: whatever failed to sync, nothing is written after it
            raise
        finally:
            core.release()
        if self._durable:
            core.sync(end)
        result: dict[str, Any] = _json.parse(json.loads, data)
        return result

    def batch(self) -> StoreBatch:
        """``with store.batch() as b: b.put(...); b.delete(...)``: one all-or-nothing record."""
        return StoreBatch(self._commit)

    def put_at_versions(self, rows: list[tuple[str, int, dict[str, Any]]]) -> None:
        """Set documents at exact versions, as one record (``racefree store copy``)."""
        ops: list[Op] = []
        for key, version, doc in rows:
            version = check_version(version)  # first: a bad version is a ValueError
            ops.append((OP_PUT, key, encode_id(key), encode_doc(doc), None, version))
        if ops:
            self._commit(ops)

    def compact(self) -> None:
        """Rewrite the live documents into new segments and drop the old ones.

        Writers wait while it runs; readers do not. A crash at any point leaves
        either the old segments or the new ones in force, never a mix; the new ones
        are fdatasynced before they replace the old (always, even if not durable).
        """
        core = self._core
        core.acquire_write()
        try:
            compact_locked(core, core.writable())
        except DurabilityError:
            core.poison()  # W7: whatever failed to sync, nothing is written after it
            raise
        finally:
            core.release()

    def check(self) -> StoreReport:
        """Re-read every record, check every crc and parse every document.

        Returns a :class:`StoreReport`; raises :class:`CorruptFileError` (naming the
        file and offset) at the first damage. Changes nothing.
        """
        if _fork.maybe_child:
            _fork.check()  # before taking the mutex: a forked child replaces it first
        with self._core.mu:
            return check_state(self._core, self._core.refresh())

    # -- life cycle (``path``, ``durable``, ``with``: StoreMixin) -------------------
    def close(self) -> None:
        """Close the store's files. Idempotent; later calls raise ``ValueError``.

        Waits for a group commit running in another thread; a write whose fdatasync
        had not started raises ``ValueError`` ("the store is closed").
        """
        self._core.close()

    def __repr__(self) -> str:
        ro = " readonly=True" if self._readonly else ""
        return f"<Store {self._path!r} durable={self._durable}{ro}>"

