"""``PgStore``: the :class:`racefree.Store` API on PostgreSQL, for several machines.

Documents live in one table shared by every named store of a database
(``racefree_docs``, see ``pg.driver``), keyed by ``(store, id)``. Ids are stored as
``bytea`` (UTF-8 with surrogates kept, exactly like the file store's records),
so any Python string is an id, NUL and lone surrogates included, which a
``text`` column cannot hold. Documents are stored as ``json`` (the text
exactly as the file store writes it: compact ASCII JSON), not ``jsonb``:
``jsonb`` reorders keys, rejects ``\\u0000`` and turns ``1e20`` into an
integer, and a store must give back what it was given.

Guarantees, beside the file store's (see ``docs/postgres.md``):

- Every call is one transaction: it happens entirely or not at all, and every
  client of the server sees it once the call has returned.
- ``durable=True`` commits with ``synchronous_commit = on``: when a write
  returns it is in the server's fsynced WAL. ``durable=False`` uses
  ``synchronous_commit = off``: it survives this process being killed; a
  server crash can lose the last fraction of a second of commits (never half of one).
- A connection that fails during a call raises :class:`racefree.ConnectionLost`;
  the server rolls the unfinished transaction back, so nothing partial is
  left. Only a failure while the commit is in flight leaves the outcome
  unknown, and the error says so (``maybe_committed``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from racefree import _json
from racefree._errors import ConflictError, CorruptFileError, LimitError, LockLost
from racefree.pg import driver as _pg
from racefree.pg import sql as sql
from racefree.pg.batch import DELETE, PUT, Op, PgBatch, decode_id, encode_doc
from racefree.pg.lock import FenceToken
from racefree.pg.pool import Pool
from racefree.storeapi.checks import (
    MAX_VERSION,
    check_expect,
    check_version,
    encode_id,
    id_bytes,
    version_limit,
)
from racefree.storeapi.protocol import StoreMixin

__all__ = ["PgBatch", "PgStore", "PgStoreReport"]

_MISSING: Any = object()
_CONFLICT: Any = object()


class _Conflicted(Exception):
    """A pipelined batch met a failed condition: roll back and redo it one op at a time."""

# The (store, id) pairs whose update() fn is running in this thread. The
# update's transaction holds the row lock; a write to that id from inside fn
# goes through another pooled session and would wait for that lock forever
# (the file store's lock is reentrant; a row lock is not), so it is refused.
_updating = threading.local()


#: The longest store name, in bytes: with the longest id, a ``(store, id)`` index entry
#: stays well under the btree's limit of about 2.7 kB.
MAX_NAME = 255
# numeric_value_out_of_range: "bigint out of range" when a version passes MAX_VERSION.
_OUT_OF_RANGE = "22003"


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"a store name is a non-empty str without NUL, not {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"a store name must be valid Unicode text: {name!r}") from None
    if size > MAX_NAME:
        raise ValueError(f"a store name is at most {MAX_NAME} bytes, not {size}")
    return name


@dataclass(frozen=True)
class PgStoreReport:
    """What :meth:`PgStore.check` found."""

    documents: int  #: live documents
    tombstones: int  #: deleted ids whose versions are remembered
    document_bytes: int  #: bytes of the live documents' JSON text
    server: tuple[tuple[str, str], ...]  #: the server's durability settings
    warnings: tuple[str, ...]  #: settings under which commits are not durable


class PgStore(StoreMixin):
    """A JSON document store in a PostgreSQL database, shared by any number of machines.

    ``url`` is a ``postgresql://`` URL; ``name`` picks one of the database's
    named stores (or ``?store=NAME`` in the URL; default ``"default"``). The
    tables are created if missing. Connections come from a pool of
    ``min_connections`` to ``max_connections`` per process (also URL
    parameters), shared by threads. After ``fork()`` the child opens its own
    connections and never touches its parent's (closing them would end the
    parent's sessions).
    """

    def __init__(
        self,
        url: str,
        name: str | None = None,
        *,
        durable: bool = True,
        min_connections: int | None = None,
        max_connections: int | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        parsed = _pg.parse_url(url)
        params = parsed.params
        self._name = _check_name(params.get("store", "default") if name is None else name)
        self._durable = bool(durable)
        low = int(min_connections or params.get("min_connections") or 1)
        high = max(low, int(max_connections or params.get("max_connections") or 8))
        self._display = parsed.display
        self._path = f"{parsed.display}#{self._name}"  # StoreMixin.path
        self._pool = Pool(
            parsed,
            f"racefree:{self._name}",
            durable=self._durable,
            min_size=low,
            max_size=high,
            connect_timeout=connect_timeout,
        )

    @property
    def name(self) -> str:
        """The store's name in its database."""
        return self._name

    @property
    def url(self) -> str:
        """The server's URL, without its password."""
        return self._display

    def close(self) -> None:
        """Close the pool's connections. Idempotent; later calls raise ``ValueError``."""
        self._pool.close()

    def __repr__(self) -> str:
        return f"<PgStore {self._display!r} store={self._name!r} durable={self._durable}>"

    # -- reads ----------------------------------------------------------------
    def _one(self, query: str, key: str) -> Any:
        params = (self._name, id_bytes(key))  # an id past the limit is simply not found
        return self._pool.read(lambda conn: conn.execute(query, params).fetchone())

    def get(self, id: str, default: Any = None) -> Any:
        """The document stored under ``id`` (a new object each call), or ``default``.

        Sees every write any client committed before the call began.
        """
        row = self._one(sql.GET, id)
        return default if row is None else row[0]

    def __getitem__(self, id: str) -> dict[str, Any]:
        row = self._one(sql.GET, id)
        if row is None:
            raise KeyError(id)
        doc: dict[str, Any] = row[0]
        return doc

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and self._one(sql.VERSION, id) is not None

    def version(self, id: str) -> int | None:
        """The version of ``id``'s document (1 for its first put), or None if absent."""
        row = self._one(sql.VERSION, id)
        return None if row is None else int(row[0])

    def __len__(self) -> int:
        return int(next(self._pool.iterate(sql.COUNT, (self._name,)))[0])

    def keys(self) -> list[str]:
        """Every id, sorted (code point order = UTF-8 byte order), from one snapshot."""
        return [decode_id(row[0]) for row in self._pool.iterate(sql.KEYS, (self._name,))]

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """Every ``(id, document)`` pair, sorted by id, from one consistent snapshot."""
        return [(decode_id(r[0]), r[1]) for r in self._pool.iterate(sql.ITEMS, (self._name,))]

    def items_with_versions(self) -> list[tuple[str, int, dict[str, Any]]]:
        """Every ``(id, version, document)``, sorted, from one snapshot (``store copy``)."""
        rows = self._pool.iterate(sql.ITEMS_WITH_VERSION, (self._name,))
        return [(decode_id(r[0]), int(r[1]), r[2]) for r in rows]

    # -- writes ---------------------------------------------------------------
    def _fence(self, conn: Any, fence: object) -> None:
        """Check and record a fencing token in the caller's transaction (L8)."""
        if fence is None:
            return
        if not isinstance(fence, FenceToken):
            raise TypeError("fence must be a PgLock's token (lock.token), not a bare number")
        lock = encode_id(fence.name)
        if conn.execute(sql.FENCE, (lock, int(fence))).fetchone() is None:
            row = conn.execute(sql.FENCE_SEEN, (lock,)).fetchone()
            raise LockLost(
                fence.name,
                f"fencing token {int(fence)} is stale: the store has seen token "
                f"{None if row is None else int(row[0])}",
            )

    def _statement(self, op: Op) -> tuple[str, tuple[Any, ...]]:
        """The one conditional statement that performs ``op`` (see ``pg.sql``)."""
        kind, _, idb, text, expect = op
        name = self._name
        if kind == PUT:
            if expect is None:
                return sql.PUT, (name, idb, text)
            if expect == 0:
                return sql.PUT_NEW, (name, idb, text)
            return sql.PUT_IF, (text, name, idb, expect)
        if expect is None:
            return sql.DELETE, (name, idb)
        if expect == 0:  # "must not exist": deleting nothing is no conflict, so only look
            return sql.VERSION, (name, idb)
        return sql.DELETE_IF, (name, idb, expect)

    @staticmethod
    def _outcome(op: Op, row: Any) -> Any:
        """The new version (None: a delete of an absent id), or ``_CONFLICT``."""
        kind, _, _, _, expect = op
        if kind == DELETE and expect == 0:
            return None if row is None else _CONFLICT
        if kind == DELETE and expect is None:
            return None if row is None else int(row[0])
        return _CONFLICT if row is None else int(row[0])

    def _write(self, conn: Any, op: Op) -> int | None:
        """One put or delete (in the caller's transaction or alone); its new version.

        None for a delete of an absent id. A failed ``expect_version`` raises
        ConflictError, and the caller's transaction rolls back.
        """
        query, params = self._statement(op)
        result = self._outcome(op, conn.execute(query, params).fetchone())
        if result is _CONFLICT:
            row = conn.execute(sql.VERSION, (self._name, op[2])).fetchone()
            raise ConflictError(op[1], op[4], None if row is None else int(row[0]))
        version: int | None = result
        return version

    def _write_pipelined(self, conn: Any, ops: list[Op]) -> dict[str, int | None] | None:
        """Send every op of a batch at once (one round trip), then read the outcomes.

        None if one of them failed its condition: the caller rolls back and
        finds which, exactly, one op at a time (the rare path).
        """
        with conn.pipeline():
            cursors = []
            for op in ops:
                cur = conn.cursor()
                cur.execute(*self._statement(op))
                cursors.append(cur)
            out: dict[str, int | None] = {}
            for op, cur in zip(ops, cursors, strict=True):
                result = self._outcome(op, cur.fetchone())
                if result is _CONFLICT:
                    return None
                out[op[1]] = result
        return out

    def _commit(self, ops: list[Op], fences: list[FenceToken]) -> dict[str, int | None]:
        """Apply ``ops`` in order as one transaction; the new version per id."""
        busy = getattr(_updating, "ids", None)
        if busy:
            for op in ops:
                if (self._name, op[2]) in busy:
                    raise RuntimeError(
                        f"a write to {op[1]!r} from inside update({op[1]!r}, fn) would wait"
                        " for update's own row lock: return the new document from fn instead"
                    )

        def one_by_one(conn: Any) -> dict[str, int | None]:
            for fence in fences:
                self._fence(conn, fence)
            return {op[1]: self._write(conn, op) for op in ops}

        def pipelined(conn: Any) -> dict[str, int | None]:
            for fence in fences:
                self._fence(conn, fence)
            out = self._write_pipelined(conn, ops)
            if out is None:
                raise _Conflicted()
            return out

        try:
            if len(ops) > 1:
                try:
                    return self._pool.transaction(pipelined, one_statement=False)
                except _Conflicted:  # rolled back: find the exact ConflictError
                    return self._pool.transaction(one_by_one, one_statement=False)
            # A lone unfenced write is one conditional statement: no BEGIN/COMMIT
            # (on a conflict, the version read after it is only for the message).
            return self._pool.transaction(one_by_one, one_statement=not fences)
        except Exception as exc:
            limit = self._version_limit(exc, [op[1] for op in ops])
            if limit is None:
                raise
            raise limit from None

    def _version_limit(self, exc: Exception, ids: list[str]) -> LimitError | None:
        """The file store's LimitError for a write that overflowed ``bigint``, else None.

        The statement failed, so its transaction rolled back: nothing was written.
        """
        if getattr(exc, "sqlstate", None) != _OUT_OF_RANGE:
            return None
        for key in ids:
            row = self._one(sql.ANY_VERSION, key)
            if row is not None and int(row[0]) == MAX_VERSION:
                return version_limit(key)
        return None

    def put(
        self,
        id: str,
        doc: dict[str, Any],
        *,
        expect_version: int | None = None,
        fence: FenceToken | None = None,
    ) -> int:
        """Store ``doc`` under ``id``; returns its new version. One transaction.

        Atomic, and durable when it returns if the store is durable.
        ``expect_version``: write only if the stored version is this (0: ``id``
        must not exist), else :class:`ConflictError` and nothing is written.
        ``fence``: a :class:`PgLock` token; one lower than a token this lock's
        later holders already presented raises :class:`LockLost`, nothing
        written. ``TypeError`` before anything is written if ``doc`` is not a
        JSON-serialisable dict or ``id`` not a str.
        """
        op = (PUT, id, encode_id(id), encode_doc(doc), check_expect(expect_version))
        return int(self._commit([op], [fence] if fence is not None else [])[id] or 0)

    def delete(
        self, id: str, *, expect_version: int | None = None, fence: FenceToken | None = None
    ) -> bool:
        """Delete ``id``; False (nothing written) if it does not exist.

        With ``expect_version``, another version (or a missing id, unless 0)
        raises :class:`ConflictError`. Atomic, durable and fenced as :meth:`put`.
        """
        op = (DELETE, id, encode_id(id), None, check_expect(expect_version))
        return self._commit([op], [fence] if fence is not None else [])[id] is not None

    def update(
        self,
        id: str,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        default: Any = _MISSING,
        fence: FenceToken | None = None,
    ) -> dict[str, Any]:
        """Atomically replace ``id``'s document with ``fn(doc)``; returns a copy of it.

        Race-free across every client of the server: the row is locked
        (``SELECT ... FOR UPDATE``) from the read to the commit, so concurrent
        updates of one id run one after the other and none is lost (S1). ``fn``
        gets a copy of the stored document (of ``default`` if ``id`` is
        missing; ``KeyError`` without a default) and returns the new one; it
        runs exactly once, while other writers of this id wait, so keep it
        short. An exception from ``fn`` writes nothing. ``fn`` must not write
        ``id`` itself through a store (``RuntimeError``: it would wait for this
        update's own row lock), and other store calls inside ``fn`` take a
        second pooled connection.
        """
        idb = encode_id(id)
        name = self._name
        busy = getattr(_updating, "ids", None)
        if busy and (name, idb) in busy:
            # From inside update(id)'s own fn: the row lock (or the placeholder's key)
            # is held by the outer update's transaction, on another session, so
            # waiting for it would never end.
            raise RuntimeError(
                f"update({id!r}) from inside update({id!r}, fn) would wait for the outer"
                " update's own row lock: return the new document from fn instead"
            )

        def body(conn: Any) -> dict[str, Any]:
            self._fence(conn, fence)
            row = conn.execute(sql.LOCK_ROW, (name, idb)).fetchone()
            if row is None:
                # A new id has no row to lock: insert a placeholder (version 0,
                # no document; nobody sees it before our commit) and lock that.
                # A concurrent creator waits on our uncommitted key until we
                # commit or roll back, so fn runs once, on what it replaces.
                conn.execute(sql.PLACEHOLDER, (name, idb))
                row = conn.execute(sql.LOCK_ROW, (name, idb)).fetchone()
            if row is not None and row[1] is not None:
                current = row[1]
            elif default is _MISSING:
                raise KeyError(id)
            else:
                current = _json.parse(json.loads, encode_doc(default))
            busy = getattr(_updating, "ids", None)
            if busy is None:
                busy = _updating.ids = set()
            busy.add((name, idb))
            try:
                text = encode_doc(fn(current))
            finally:
                busy.discard((name, idb))
            conn.execute(sql.REPLACE_LOCKED, (text, name, idb))
            result: dict[str, Any] = _json.parse(json.loads, text)
            return result

        try:
            return self._pool.transaction(body, one_statement=False)
        except Exception as exc:
            limit = self._version_limit(exc, [id])
            if limit is None:
                raise
            raise limit from None

    def batch(self) -> PgBatch:
        """``with store.batch() as b: b.put(...); b.delete(...)``: one transaction."""
        return PgBatch(self._commit)

    def put_at_versions(self, rows: list[tuple[str, int, dict[str, Any]]]) -> None:
        """Set documents at exact versions in one transaction (``racefree store copy``)."""
        encoded = []
        for key, version, doc in rows:
            version = check_version(version)  # first: a bad version is a ValueError
            encoded.append((self._name, encode_id(key), version, encode_doc(doc)))
        if encoded:
            self._pool.transaction(
                lambda conn: conn.cursor().executemany(sql.PUT_AT, encoded), one_statement=False
            )

    def compact(self) -> None:
        """Nothing to do: PostgreSQL's autovacuum reclaims dead rows in the background."""

    def check(self) -> PgStoreReport:
        """Verify the store's rows in one snapshot, and the server's durability settings.

        Every document must be a JSON object at a version >= 1 and every id valid
        UTF-8 (surrogates kept); otherwise :class:`CorruptFileError` naming the
        store. Settings that void durability (``fsync`` or ``full_page_writes``
        off) are listed in ``warnings``. Changes nothing.
        """
        where = self._path

        def body(conn: Any) -> PgStoreReport:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute(sql.CHECK, (self._name,)).fetchone()
            docs, tombs, nbytes, not_objects, bad_versions = (int(v or 0) for v in row)
            if not_objects:
                raise CorruptFileError(where, f"{not_objects} documents are not JSON objects")
            if bad_versions:
                raise CorruptFileError(where, f"{bad_versions} rows have a version below 1")
            for (raw,) in conn.execute(sql.ALL_IDS, (self._name,)):
                try:
                    decode_id(raw)
                except UnicodeDecodeError:
                    raise CorruptFileError(where, f"an id is not UTF-8: {bytes(raw)!r}") from None
            settings = {str(k): str(v) for k, v in conn.execute(sql.SERVER_SETTINGS)}
            warnings = tuple(
                f"the server runs with {key} = off: commits may not survive a power loss"
                for key in ("fsync", "full_page_writes")
                if settings.get(key) == "off"
            )
            return PgStoreReport(docs, tombs, nbytes, tuple(sorted(settings.items())), warnings)

        return self._pool.transaction(body, one_statement=False)
