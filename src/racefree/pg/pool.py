"""The connections of one :class:`racefree.PgStore`: a pool, sessions set up once, lost ones.

Each call of the store borrows one pooled connection (autocommit) for one
statement or one transaction and gives it back. A session the server ended
while it sat in the pool (a restart, ``pg_terminate_backend``, a cut network)
is discarded when borrowed, so it never fails a call; a session that fails
*during* a call raises :class:`racefree.ConnectionLost`, and the server rolls
back whatever that call's transaction had done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from racefree import _json
from racefree.pg import driver as _pg

__all__ = ["Pool"]

T = TypeVar("T")

_inherited: list[Any] = []  # a forked child's copies of its parent's pools: never closed


def _loads(data: str | bytes) -> Any:
    return _json.parse(json.loads, data)


class Pool:
    """A psycopg_pool of autocommit connections for one store, safe across fork."""

    def __init__(
        self,
        url: _pg.PgUrl,
        app: str,
        *,
        durable: bool,
        min_size: int,
        max_size: int,
        connect_timeout: float,
    ) -> None:
        self.display = url.display
        self._url = url
        self._durable = durable
        self._min = min_size
        self._max = max_size
        self._timeout = connect_timeout
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, int(connect_timeout)),
        }
        # The store's name shows in pg_stat_activity, unless the URL sets its own.
        if "application_name" not in url.conninfo:
            self._kwargs["application_name"] = _pg.application_name(app)
        self._pool: Any = None
        self._pid = os.getpid()
        self._closed = False
        self._open()

    def _configure(self, conn: Any) -> None:
        # Once per session: the store's durability; READ COMMITTED, which the
        # conditional writes and FOR UPDATE are written for (a server default
        # of SERIALIZABLE would add spurious serialisation failures); and no
        # lock_timeout, so that a writer waiting for a row lock waits instead
        # of failing spuriously (pitfall S8).
        commit = "on" if self._durable else "off"
        # Documents come back parsed by psycopg: with racefree's parse, so that a
        # get from a deep call stack never ends in RecursionError (racefree._json).
        import psycopg.types.json

        psycopg.types.json.set_json_loads(_loads, conn)
        conn.execute(
            f"SET synchronous_commit = {commit};"
            " SET default_transaction_isolation = 'read committed';"
            " SET lock_timeout = 0"
        )

    @staticmethod
    def _check(conn: Any) -> None:
        # Called by the pool on every borrow: a select() with zero timeout.
        if _pg.connection_dead(conn):
            raise _pg.psycopg_module().OperationalError("the pooled session was ended")

    def _open(self) -> None:
        psycopg = _pg.psycopg_module()
        pool_mod = _pg.pool_module()
        # One direct connection first: an unreachable server or a bad URL is
        # one clear error here, and the schema exists before any call.
        with _pg.translate(self._url, maybe_committed=False), psycopg.connect(
            self._url.conninfo, **self._kwargs
        ) as conn:
            _pg.ensure_schema(conn)
        self._pool = pool_mod.ConnectionPool(
            self._url.conninfo,
            min_size=self._min,
            max_size=self._max,
            kwargs=self._kwargs,
            configure=self._configure,
            check=self._check,
            name=self._kwargs.get("application_name", "racefree"),
            open=False,
        )
        self._pool.open(wait=True, timeout=self._timeout)

    def _live(self) -> Any:
        """The psycopg pool of this process.

        In a forked child the parent's pool is left alone (closing its
        connections would end the parent's sessions) and a new one is opened.
        """
        if self._closed:
            raise ValueError(f"the store at {self.display} is closed")
        if os.getpid() != self._pid:
            _inherited.append(self._pool)
            self._pid = os.getpid()
            self._open()
        return self._pool

    def read(self, fn: Callable[[Any], T]) -> T:
        """``fn(conn)`` on a borrowed connection; a lost connection raises ConnectionLost.

        The hot path of every ``get``: getconn/putconn directly, without the
        pool's context manager.
        """
        pool = self._live()
        conn = pool.getconn(timeout=self._timeout + 20.0)
        try:
            return fn(conn)
        except Exception as exc:
            if _pg.is_connection_error(exc):
                raise _pg.lost(self._url, exc, maybe_committed=False) from exc
            raise
        finally:
            pool.putconn(conn)

    def transaction(self, body: Callable[[Any], T], *, one_statement: bool) -> T:
        """``body(conn)`` in one transaction; a lost connection raises ConnectionLost.

        ``one_statement``: ``body`` runs a single autocommitted statement (one
        round trip, no BEGIN/COMMIT); a connection failure can then come after
        the server committed it, so the error says it may have been committed.
        Otherwise only a failure during COMMIT leaves the outcome unknown.
        """
        committing = one_statement
        pool = self._live()
        conn = pool.getconn(timeout=self._timeout + 20.0)
        try:
            if one_statement:
                return body(conn)
            with conn.transaction():
                result = body(conn)
                committing = True
            return result
        except Exception as exc:
            if _pg.is_connection_error(exc):
                raise _pg.lost(self._url, exc, maybe_committed=committing) from exc
            raise
        finally:
            # A session in a failed or unknown state is discarded by the pool.
            pool.putconn(conn)

    def iterate(self, query: str, params: tuple[Any, ...]) -> Iterator[Any]:
        """All rows of ``query``, fetched at once from one snapshot."""
        rows: list[Any] = self.read(lambda conn: conn.execute(query, params).fetchall())
        return iter(rows)

    def close(self) -> None:
        """Close every pooled connection (in the process that opened them). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid and self._pool is not None:
            self._pool.close()
