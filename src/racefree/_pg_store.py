"""``PgStore``: the :class:`racefree.Store` API on PostgreSQL, for several machines.

Documents live in one table shared by every named store of a database
(``racefree_docs``, see ``_pg``), keyed by ``(store, id)``. Ids are stored as
``bytea`` (UTF-8 with surrogates kept, exactly like the file store's records),
so any Python string is an id, NUL and lone surrogates included, which a
``text`` column cannot hold. Documents are stored as ``json`` (the text
exactly as racefree wrote it: compact ASCII JSON), not ``jsonb``: ``jsonb``
reorders keys, drops duplicates, rejects ``\\u0000`` and turns ``1e20`` into an
integer, and the store must give back what it was given, like the file store.

Guarantees, beside the file store's (see ``docs/postgres.md``):

- Every call is one transaction: it happens entirely or not at all, and is
  visible to every client of the server once the call returns.
- ``durable=True`` commits with ``synchronous_commit = on``: when a write
  returns it is in the server's fsynced WAL. ``durable=False`` uses
  ``synchronous_commit = off``: it survives this process being killed, and a
  server crash can lose the last fraction of a second of commits (never tear one).
- A connection that fails during a call raises :class:`racefree.ConnectionLost`;
  the server rolls the unfinished transaction back, so nothing partial is
  left. Only a failure while the commit is in flight leaves the outcome
  unknown, and the error says so (``maybe_committed``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from . import _pg
from . import _pg_sql as sql
from ._errors import ConflictError, LockLost
from ._pg_lock import FenceToken

__all__ = ["PgStore"]

_MISSING: Any = object()

# Compact ASCII JSON, the file store's record format: ASCII keeps lone
# surrogates as \\u escapes, which the json type accepts; NaN is not JSON.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))

_inherited: list[Any] = []  # a forked child's copies of its parent's pools, never closed


def encode_id(key: object) -> bytes:
    """The stored form of an id: UTF-8 with surrogates kept; TypeError for a non-str."""
    if not isinstance(key, str):
        raise TypeError(f"store ids are str, not {type(key).__name__}")
    return key.encode("utf-8", "surrogatepass")


def decode_id(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")


def encode_doc(doc: object) -> str:
    """The stored text of a document; TypeError (nothing written) unless a JSON object."""
    if not isinstance(doc, dict):
        raise TypeError(f"a document must be a dict (a JSON object), not {type(doc).__name__}")
    try:
        return _ENCODER.encode(doc)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the document is not JSON-serialisable: {exc}") from None


class PgStore:
    """A JSON document store in a PostgreSQL database, shared by any number of machines.

    ``url`` is a ``postgresql://`` URL; ``name`` picks one of the database's
    named stores (also ``?store=NAME`` in the URL; default ``"default"``).
    The schema is created if missing. Connections come from a pool of
    ``min_connections`` to ``max_connections`` per process; threads share it.
    After ``fork()`` the child opens its own connections and never touches
    the parent's (closing them would end the parent's sessions).
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
        self._url = _pg.parse_url(url)
        params = self._url.params
        if name is None:
            name = params.get("store", "default")
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"a store name must be a non-empty str without NUL, not {name!r}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"a store name must be valid Unicode text: {name!r}") from None
        self._name = name
        self._durable = bool(durable)
        self._min = int(min_connections or params.get("min_connections", 1))
        self._max = max(self._min, int(max_connections or params.get("max_connections", 8)))
        self._connect_timeout = connect_timeout
        self._display = self._url.display
        self._closed = False
        self._pool: Any = None
        self._pid = os.getpid()
        self._open_pool()

    # -- connections ----------------------------------------------------------
    def _configure(self, conn: Any) -> None:
        # Per session, once: the store's durability, and READ COMMITTED, which
        # the conditional writes and FOR UPDATE rely on (a server default of
        # SERIALIZABLE would add spurious serialisation failures).
        commit = "on" if self._durable else "off"
        conn.execute(
            f"SET synchronous_commit = {commit};"
            " SET default_transaction_isolation = 'read committed'"
        )

    @staticmethod
    def _check(conn: Any) -> None:
        # A pooled session the server has ended (restart, pg_terminate_backend)
        # is discarded before use instead of failing the caller's call.
        if _pg.connection_dead(conn):
            raise _pg.psycopg_module().OperationalError("the pooled connection is closed")

    def _open_pool(self) -> None:
        psycopg = _pg.psycopg_module()
        pool_mod = _pg.pool_module()
        kwargs = _session_kwargs(self._url, f"racefree:{self._name}", self._connect_timeout)
        with _pg.translate(self._display, maybe_committed=False):
            # One direct connection first: an unreachable server or a bad URL
            # is one clear error here, and the schema exists before any call.
            with psycopg.connect(self._url.conninfo, **kwargs) as conn:
                _pg.ensure_schema(conn)
        self._pool = pool_mod.ConnectionPool(
            self._url.conninfo,
            min_size=self._min,
            max_size=self._max,
            kwargs=_session_kwargs(self._url, f"racefree:{self._name}", self._connect_timeout),
            configure=self._configure,
            check=self._check,
            name=f"racefree:{self._name}",
            open=False,
        )
        self._pool.open(wait=True, timeout=self._connect_timeout)

    def _conn(self) -> Any:
        """A pooled connection context; reopens the pool in a forked child."""
        if self._closed:
            raise ValueError(f"the store {self._name!r} is closed")
        if os.getpid() != self._pid:
            _inherited.append(self._pool)
            self._pid = os.getpid()
            self._open_pool()
        return self._pool.connection(timeout=self._connect_timeout + 20.0)

    @property
    def name(self) -> str:
        """The store's name in its database."""
        return self._name

    @property
    def url(self) -> str:
        """The server's URL, without password."""
        return self._display

    @property
    def durable(self) -> bool:
        return self._durable

    def close(self) -> None:
        """Close the pool's connections. Idempotent; later calls raise ValueError."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid and self._pool is not None:
            self._pool.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PgStore {self._display!r} store={self._name!r}>"

    # -- reads ----------------------------------------------------------------
    def _one(self, query: str, params: tuple[Any, ...]) -> Any:
        with self._conn() as conn, _pg.translate(self._display, maybe_committed=False):
            return conn.execute(query, params).fetchone()

    def get(self, key: str, default: Any = None) -> Any:
        """The document stored under ``key`` (a new object each call), or ``default``."""
        row = self._one(sql.GET, (self._name, encode_id(key)))
        return default if row is None else row[0]

    def __getitem__(self, key: str) -> dict[str, Any]:
        row = self._one(sql.GET, (self._name, encode_id(key)))
        if row is None:
            raise KeyError(key)
        doc: dict[str, Any] = row[0]
        return doc

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return self._one(sql.VERSION, (self._name, encode_id(key))) is not None

    def version(self, key: str) -> int | None:
        """The version of ``key``'s document (1 for its first put), or None if absent."""
        row = self._one(sql.VERSION, (self._name, encode_id(key)))
        return None if row is None else int(row[0])

    def __len__(self) -> int:
        row = self._one(sql.COUNT, (self._name,))
        return int(row[0])

    def _all(self, query: str) -> list[Any]:
        with self._conn() as conn, _pg.translate(self._display, maybe_committed=False):
            return conn.execute(query, (self._name,)).fetchall()

    def keys(self) -> list[str]:
        """Every id, in the order of their UTF-8 bytes (one consistent snapshot)."""
        return [decode_id(row[0]) for row in self._all(sql.KEYS)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """Every ``(id, document)`` pair, from one consistent snapshot."""
        return [(decode_id(row[0]), row[1]) for row in self._all(sql.ITEMS)]

    def values(self) -> list[dict[str, Any]]:
        return [doc for _, doc in self.items()]

    def items_with_versions(self) -> list[tuple[str, int, dict[str, Any]]]:
        """Every ``(id, version, document)``, from one snapshot (used by ``store copy``)."""
        return [
            (decode_id(row[0]), int(row[1]), row[2]) for row in self._all(sql.ITEMS_WITH_VERSION)
        ]

    # -- writes ---------------------------------------------------------------
    def _fence(self, cur: Any, fence: object) -> None:
        if fence is None:
            return
        if not isinstance(fence, FenceToken):
            raise TypeError("fence must be a PgLock's token (lock.token), not a bare number")
        lock = encode_id(fence.name)
        if cur.execute(sql.FENCE, (lock, int(fence))).fetchone() is None:
            row = cur.execute(sql.FENCE_SEEN, (lock,)).fetchone()
            seen = None if row is None else int(row[0])
            raise LockLost(
                fence.name,
                f"fencing token {int(fence)} is stale: the store has seen token {seen}",
            )

    def _write(self, cur: Any, op: str, key: str, idb: bytes, text: str | None,
               expect: int | None) -> int | None:
        """One put or delete inside an open transaction (``cur``); its new version.

        For a delete without ``expect_version`` of a missing id, None. A failed
        ``expect_version`` raises ConflictError (the caller rolls back).
        """
        name = self._name
        if op == "put":
            if expect is None:
                row = cur.execute(sql.PUT, (name, idb, text)).fetchone()
            elif expect == 0:
                row = cur.execute(sql.PUT_NEW, (name, idb, text)).fetchone()
            else:
                row = cur.execute(sql.PUT_IF, (text, name, idb, expect)).fetchone()
        elif expect is None:
            row = cur.execute(sql.DELETE, (name, idb)).fetchone()
            return None if row is None else int(row[0])
        else:
            row = cur.execute(sql.DELETE_IF, (name, idb, expect)).fetchone()
        if row is None:
            actual = cur.execute(sql.VERSION, (name, idb)).fetchone()
            raise ConflictError(key, expect, None if actual is None else int(actual[0]))
        return int(row[0])

    def _transaction(self, body: Callable[[Any], Any], *, atomic_statement: bool) -> Any:
        """Run ``body(conn)`` in one transaction; a lost connection becomes ConnectionLost.

        ``atomic_statement``: the body is one autocommitted statement, so a
        connection failure may come after the server committed it.
        """
        stage = ["work"]
        with self._conn() as conn:
            try:
                if atomic_statement:
                    stage[0] = "commit"
                    return body(conn)
                with conn.transaction():
                    result = body(conn)
                    stage[0] = "commit"
                return result
            except Exception as exc:
                if _pg.is_connection_error(exc):
                    raise _pg.lost(
                        self._display, exc, maybe_committed=stage[0] == "commit"
                    ) from exc
                raise

    def put(
        self,
        key: str,
        doc: dict[str, Any],
        *,
        expect_version: int | None = None,
        fence: FenceToken | None = None,
    ) -> int:
        """Store ``doc`` under ``key``; its new version. One transaction.

        ``expect_version``: the write happens only if the stored version is
        this (0: the id must not exist), else ``ConflictError`` and nothing is
        written. ``fence``: a :class:`PgLock` token; a token lower than one
        this lock's holders already presented raises ``LockLost`` and nothing
        is written. ``TypeError`` (nothing written) if ``doc`` is not a JSON object.
        """
        idb = encode_id(key)
        text = encode_doc(doc)
        expect = _check_expect(expect_version)

        def body(conn: Any) -> int:
            self._fence(conn, fence)
            version = self._write(conn, "put", key, idb, text, expect)
            assert version is not None  # a put always returns a version or raises
            return version

        if fence is None and expect in (None, 0):
            result: int = self._transaction(body, atomic_statement=True)
        else:
            result = self._transaction(body, atomic_statement=False)
        return result

    def delete(
        self, key: str, *, expect_version: int | None = None, fence: FenceToken | None = None
    ) -> bool:
        """Delete ``key``; False if it did not exist. ``expect_version`` and ``fence`` as for put."""
        idb = encode_id(key)
        expect = _check_expect(expect_version)

        def body(conn: Any) -> bool:
            self._fence(conn, fence)
            return self._write(conn, "delete", key, idb, None, expect) is not None

        result: bool = self._transaction(body, atomic_statement=fence is None and expect is None)
        return result

    def __setitem__(self, key: str, doc: dict[str, Any]) -> None:
        self.put(key, doc)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def update(
        self,
        key: str,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        default: Any = _MISSING,
        fence: FenceToken | None = None,
    ) -> dict[str, Any]:
        """Atomically replace ``key``'s document with ``fn(doc)``; the new document.

        Race-free across every client of the server: the row is locked
        (``SELECT ... FOR UPDATE``) from the read until the commit, so
        concurrent updates of one id run one after the other and none is lost
        (S1). A missing id starts from a copy of ``default`` (KeyError without
        one). ``fn`` runs once, except when another client creates the same
        missing id at the same moment: then ``fn`` runs again on that
        client's document. An exception from ``fn`` writes nothing.
        """
        idb = encode_id(key)
        while True:
            def body(conn: Any) -> tuple[bool, dict[str, Any]]:
                self._fence(conn, fence)
                row = conn.execute(sql.LOCK_ROW, (self._name, idb)).fetchone()
                if row is not None and row[1] is not None:
                    current = row[1]
                elif default is _MISSING:
                    raise KeyError(key)
                else:
                    current = json.loads(encode_doc(default))
                new = fn(current)
                text = encode_doc(new)
                if row is not None:
                    conn.execute(sql.REPLACE_LOCKED, (text, self._name, idb))
                    return True, json.loads(text)
                done = conn.execute(sql.INSERT_NEW, (self._name, idb, text)).fetchone()
                return done is not None, json.loads(text)

            ok, result = self._transaction(body, atomic_statement=False)
            if ok:
                return result

    def batch(self) -> PgBatch:
        """``with store.batch() as b: b.put(...); b.delete(...)``: one transaction, all or nothing."""
        return PgBatch(self)

    def compact(self) -> None:
        """Nothing to do: PostgreSQL's autovacuum reclaims dead rows."""

    # -- copy support ---------------------------------------------------------
    def put_at_versions(self, rows: list[tuple[str, int, dict[str, Any]]]) -> None:
        """Set documents at exact versions in one transaction (``racefree store copy``)."""
        encoded = [(self._name, encode_id(k), int(v), encode_doc(d)) for k, v, d in rows]

        def body(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.executemany(sql.PUT_AT, encoded)

        self._transaction(body, atomic_statement=False)


class PgBatch:
    """Writes collected in a ``with`` block and committed as one transaction at its end.

    Nothing is sent before the block ends. If any ``expect_version`` or
    ``fence`` fails, ``ConflictError``/``LockLost`` is raised and none of the
    batch is written; if the block raises, nothing is written.
    """

    def __init__(self, store: PgStore) -> None:
        self._store = store
        self._ops: list[tuple[str, str, bytes, str | None, int | None]] = []
        self._fences: list[FenceToken] = []
        self.versions: dict[str, int | None] = {}

    def put(
        self,
        key: str,
        doc: dict[str, Any],
        *,
        expect_version: int | None = None,
        fence: FenceToken | None = None,
    ) -> None:
        """Add a put (checked now: TypeError for a bad id or document)."""
        self._ops.append(("put", key, encode_id(key), encode_doc(doc),
                          _check_expect(expect_version)))
        if fence is not None:
            self._fences.append(fence)

    def delete(
        self, key: str, *, expect_version: int | None = None, fence: FenceToken | None = None
    ) -> None:
        """Add a delete."""
        self._ops.append(("delete", key, encode_id(key), None, _check_expect(expect_version)))
        if fence is not None:
            self._fences.append(fence)

    def __enter__(self) -> PgBatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or not self._ops:
            return
        store = self._store

        def body(conn: Any) -> dict[str, int | None]:
            for fence in self._fences:
                store._fence(conn, fence)
            out: dict[str, int | None] = {}
            for op, key, idb, text, expect in self._ops:
                out[key] = store._write(conn, op, key, idb, text, expect)
            return out

        self.versions = store._transaction(body, atomic_statement=False)


def _session_kwargs(url: _pg.PgUrl, app: str, connect_timeout: float) -> dict[str, Any]:
    """Connection options: autocommit, and an application_name naming the store.

    The name shows in ``pg_stat_activity`` (unless the URL sets its own), so an
    administrator can tell which store a session serves.
    """
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, int(connect_timeout)),
    }
    if "application_name" not in url.conninfo:
        kwargs["application_name"] = "".join(c if " " <= c <= "~" else "?" for c in app[:63])
    return kwargs


def _check_expect(expect: object) -> int | None:
    if expect is None:
        return None
    if isinstance(expect, bool) or not isinstance(expect, int):
        raise TypeError(f"expect_version must be an int or None, not {expect!r}")
    if expect < 0:
        raise ValueError(f"expect_version must be >= 0, not {expect}")
    return expect
