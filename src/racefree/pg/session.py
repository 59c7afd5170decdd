"""The dedicated PostgreSQL session behind one :class:`racefree.PgLock`.

A session advisory lock lives exactly as long as the server session that took
it, so each lock has its own connection (never a pooled one: handing the
session back to a pool would hand the lock to whoever gets it next). This
module takes and releases the lock on that session; ``pg.lock`` decides which
thread or task of this process may.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
from typing import Any

from racefree.pg import driver as _pg

__all__ = ["Attempt", "Session", "cancel_statement"]

# Server-side settings of a lock's session. statement_timeout and
# idle_in_transaction_session_timeout set by an administrator would end a
# session that waits for the lock; the keepalives make the server notice a
# holder whose machine vanished (about 25 s) and free its lock (pitfall L6).
_SETUP = (
    "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0;"
    " SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5;"
    " SET tcp_keepalives_count = 3"
)
# And idle_session_timeout (PostgreSQL 14+) would end a session idly holding it.
_SETUP_14 = "SET idle_session_timeout = 0"

_CANCELLED = "57014"
# lock_timeout is an int of milliseconds in the server: a longer timeout (about
# 24.8 days) waits that long, instead of failing with a raw InvalidParameterValue.
_MAX_LOCK_TIMEOUT_MS = 2**31 - 1
_LOCK_NOT_AVAILABLE = "55P03"


class Attempt:
    """One wait for the server lock whose (asynchronous) caller may give up."""

    __slots__ = ("abandoned", "conn", "done", "error", "mutex", "notify", "token", "waiting")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.abandoned = False
        self.waiting = False  # the lock statement is running on conn
        self.done = False
        self.conn: Any = None
        self.token: int | None = None
        self.error: BaseException | None = None
        self.notify: Any = None


class Session:
    """One connection that takes and releases one advisory lock key.

    Not thread-safe by itself: the lock calls it only while it is "busy"
    (one owner at a time talks to the server).
    """

    def __init__(self, url: _pg.PgUrl, name: str, shared: bool, connect_timeout: float) -> None:
        self.url = url
        self.name = name
        self.connect_timeout = connect_timeout
        self.key = _pg.advisory_key("lock", name)
        suffix = "_shared" if shared else ""
        # The token is drawn after the grant, in the same statement: the
        # subquery (kept apart by OFFSET 0) must yield its row, which takes
        # the lock, before the outer nextval runs. So tokens grow in the
        # order holders got the lock, and one prepared statement does both.
        self.sql_lock = (
            "SELECT nextval('racefree_fence_seq')"
            f" FROM (SELECT pg_advisory_lock{suffix}(%s) OFFSET 0) AS granted"
        )
        self.sql_try = (
            "SELECT g, CASE WHEN g THEN nextval('racefree_fence_seq') END"
            f" FROM (SELECT pg_try_advisory_lock{suffix}(%s) AS g OFFSET 0) AS t"
        )
        self.sql_unlock = f"SELECT pg_advisory_unlock{suffix}(%s)"
        self.conn: Any = None
        self.lock_timeout_ms: int | None = None  # the session's lock_timeout, if known
        self.pid = os.getpid()

    def connection(self) -> Any:
        """The session's connection, opened if missing or dead."""
        conn = self.conn
        if conn is not None and not _pg.connection_dead(conn):
            return conn
        self.discard()
        psycopg = _pg.psycopg_module()
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, math.ceil(self.connect_timeout)),
        }
        if "application_name" not in self.url.conninfo:
            kwargs["application_name"] = _pg.application_name(f"racefree-lock:{self.name}")
        if "keepalives" not in self.url.conninfo:
            # This side's TCP keepalives: a holder cut off from the server learns
            # it (``lost``) within about 25 s too, not after the OS default of 2 h.
            kwargs.update(keepalives=1, keepalives_idle=10, keepalives_interval=5,
                          keepalives_count=3)
        with _pg.translate(self.url, maybe_committed=False):
            conn = psycopg.connect(self.url.conninfo, **kwargs)
            try:
                conn.execute(_SETUP)
                if conn.info.server_version >= 140000:
                    conn.execute(_SETUP_14)
                _pg.ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
        self.conn = conn
        return conn

    def discard(self) -> None:
        """Close the session: the server drops every advisory lock it held."""
        conn, self.conn = self.conn, None
        self.lock_timeout_ms = None
        if conn is not None and os.getpid() == self.pid:
            with contextlib.suppress(Exception):  # closing a dead connection may fail; it is gone
                conn.close()

    def forget(self) -> None:
        """In a forked child: drop the parent's connection without closing it (L5).

        Closing it would send the server a Terminate message and end the
        parent's session, releasing the parent's lock; psycopg itself never
        closes a connection inherited from another process.
        """
        self.conn = None
        self.pid = os.getpid()

    def dead(self) -> bool:
        """Whether the server ended the session (no round trip unless data arrived)."""
        return self.conn is None or _pg.connection_dead(self.conn)

    def lock(self, timeout: float | None, trying: bool, attempt: Attempt | None) -> int:
        """Take the advisory lock and draw a fencing token; 0 if not granted in time.

        ``trying``: one ``pg_try_advisory_lock``, no wait. Otherwise a blocking
        ``pg_advisory_lock`` bounded by ``lock_timeout`` (no polling, L4). Any
        failure closes the session, so a lock the server may have granted just
        before the failure (a signal, a cancel landing late) goes with it: a
        caller that gets an error never holds the lock (L9).
        """
        conn = self.connection()
        psycopg = _pg.psycopg_module()
        if not trying:
            ms = 0 if timeout is None else min(max(1, math.ceil(timeout * 1000)),
                                               _MAX_LOCK_TIMEOUT_MS)
            if ms != self.lock_timeout_ms:  # a round trip only when the timeout changes
                try:
                    with _pg.translate(self.url, maybe_committed=False):
                        conn.execute(f"SET lock_timeout = {ms}")
                except BaseException:
                    self.discard()
                    raise
                self.lock_timeout_ms = ms
        if attempt is not None:
            with attempt.mutex:
                if attempt.abandoned:
                    raise asyncio.CancelledError()
                attempt.conn = conn
                attempt.waiting = True
        try:
            try:
                if trying:
                    row = conn.execute(self.sql_try, (self.key,)).fetchone()
                    granted = bool(row and row[0])
                    token_row = None if row is None else row[1:]
                else:
                    granted = True
                    token_row = conn.execute(self.sql_lock, (self.key,)).fetchone()
            finally:
                if attempt is not None:
                    with attempt.mutex:
                        attempt.waiting = False
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None)
            if state == _LOCK_NOT_AVAILABLE:
                # lock_timeout ran out while waiting: nothing was granted, and
                # the session stays usable.
                return 0
            self.discard()
            if state == _CANCELLED and attempt is not None and attempt.abandoned:
                raise asyncio.CancelledError() from None
            if _pg.is_connection_error(exc):
                raise _pg.lost(self.url, exc, maybe_committed=False) from exc
            raise
        except BaseException:
            self.discard()
            raise
        if not granted:
            return 0
        if token_row is None or token_row[0] is None:  # pragma: no cover - one row, always
            self.discard()
            raise RuntimeError("nextval returned no row")
        return int(token_row[0])

    def unlock(self) -> str:
        """Release the advisory lock; the reason it had been lost, or ""."""
        conn = self.conn
        if conn is None:
            return "the connection was closed"
        try:
            row = conn.execute(self.sql_unlock, (self.key,)).fetchone()
        except Exception as exc:
            self.discard()
            if _pg.is_connection_error(exc):
                return f"the session ended: {_pg.first_line(exc)}"
            raise
        except BaseException:
            # An interrupt may land before or after the server unlocked: close the
            # session, so that the lock cannot stay held with no holder left here.
            self.discard()
            raise
        if not (row and row[0]):
            self.discard()
            return "the server no longer held it for this session"
        return ""


def cancel_statement(attempt: Attempt) -> None:
    """Cancel the lock statement an abandoned attempt is waiting in (in a thread).

    Holding ``attempt.mutex`` keeps the waiting thread from starting another
    statement on the session while the cancel request is in flight: a cancel
    that arrives after the lock statement ended finds the session idle, and
    the server ignores it.
    """
    with attempt.mutex:
        if attempt.waiting and attempt.conn is not None:
            with contextlib.suppress(Exception):  # the session may be gone already
                attempt.conn.cancel_safe(timeout=10.0)
