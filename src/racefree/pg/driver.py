"""What the PostgreSQL store and lock share: the driver import, URLs, the schema, lost connections.

psycopg 3 is imported lazily, here only, so that ``import racefree`` needs no
third-party package; a program that asks for a ``postgresql://`` store or lock
without the driver gets one clear line telling it what to install.

The schema (created if missing, by whichever process comes first, under a
transaction-level advisory lock so that two first-comers do not race on the
catalog) is three objects shared by every named store and lock of a database:

- ``racefree_docs (store text, id bytea, version bigint, doc json)``: one row
  per document, primary key ``(store, id)``. ``doc`` is NULL for a deleted id
  (a tombstone that keeps its version, so versions never repeat, like the file store).
- ``racefree_fences (name bytea primary key, token bigint)``: the highest fencing
  token a fenced write has presented, per lock name (UTF-8, like ids).
- ``racefree_fence_seq``: the sequence fencing tokens are drawn from.
"""

from __future__ import annotations

import contextlib
import hashlib
import select
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from racefree._errors import ConnectionLost

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "PgUrl",
    "advisory_key",
    "application_name",
    "connection_dead",
    "ensure_schema",
    "first_line",
    "is_connection_error",
    "is_pg_url",
    "lost",
    "parse_url",
    "pool_module",
    "psycopg_module",
    "translate",
]

# A constant advisory key (the first 8 bytes of sha256("racefree schema"))
# serialises schema creation: ``CREATE TABLE IF NOT EXISTS`` run by two
# sessions at once can still fail on the catalog's unique index.
_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"racefree schema").digest()[:8], "big", signed=True)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS racefree_docs (
    store   text   COLLATE "C" NOT NULL,
    id      bytea  NOT NULL,
    version bigint NOT NULL,
    doc     json,
    PRIMARY KEY (store, id)
);
CREATE TABLE IF NOT EXISTS racefree_fences (
    name  bytea  PRIMARY KEY,
    token bigint NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS racefree_fence_seq;
COMMENT ON TABLE racefree_docs IS 'racefree document store, schema 1';
"""

_INSTALL_HINT = "the PostgreSQL backend needs psycopg 3: pip install 'racefree[postgres]'"

_SCHEMES = ("postgresql", "postgres")

# Query parameters racefree reads itself; libpq would reject them as unknown.
_OWN_PARAMS = ("store", "min_connections", "max_connections")
# Query parameters that are secrets: libpq gets them, messages never show them.
_SECRET_PARAMS = ("password", "sslpassword")


def psycopg_module() -> Any:
    """Import psycopg, or raise ImportError with the one command that installs it."""
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return psycopg


def pool_module() -> Any:
    """Import psycopg_pool, or raise ImportError with the one command that installs it."""
    try:
        import psycopg_pool
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return psycopg_pool


def is_pg_url(target: object) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL string."""
    if not isinstance(target, str):
        return False
    scheme = target.partition("://")[0].lower()
    return "://" in target and scheme in _SCHEMES


class PgUrl:
    """A PostgreSQL URL split into what libpq gets and what racefree reads.

    ``conninfo`` is the URL without racefree's own query parameters;
    ``display`` is the URL without its password, for messages; ``params``
    holds racefree's parameters (``store``, ``min_connections``, ``max_connections``).
    """

    __slots__ = ("conninfo", "display", "params")

    def __init__(self, conninfo: str, display: str, params: dict[str, str]) -> None:
        self.conninfo = conninfo
        self.display = display
        self.params = params


def parse_url(url: str) -> PgUrl:
    """Split ``url``; a ValueError names a malformed one (without its password)."""
    if not is_pg_url(url):
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in _OWN_PARAMS}
    rest = [(k, v) for k, v in query if k not in _OWN_PARAMS]
    conninfo = urllib.parse.urlunsplit(
        parts._replace(query=urllib.parse.urlencode(rest), fragment="")
    )
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hostport}" if user else hostport
    shown = [(k, v) for k, v in rest if k not in _SECRET_PARAMS]
    display = urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(shown), "")
    )
    return PgUrl(conninfo, display, own)


def advisory_key(namespace: str, name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (sha256; collisions negligible)."""
    digest = hashlib.sha256(f"racefree:{namespace}:{name}".encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the shared tables and sequence if missing. ``conn`` must be in autocommit mode.

    Cheap when they exist (one catalog lookup, no DDL lock taken).
    """
    row = conn.execute(
        "SELECT to_regclass('racefree_docs') IS NOT NULL"
        " AND to_regclass('racefree_fences') IS NOT NULL"
        " AND to_regclass('racefree_fence_seq') IS NOT NULL"
    ).fetchone()
    if row is not None and row[0]:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(_SCHEMA)


def connection_dead(conn: psycopg.Connection[Any]) -> bool:
    """True if an idle connection was closed by the server (terminated, restarted, or cut).

    An idle session receives nothing unless its server ends it, so a readable
    socket means a FATAL message and EOF are waiting (or, rarely, a harmless
    parameter-status or notice message). One ``select`` with a zero timeout
    when nothing arrived: no round trip, no polling loop. When something did
    arrive, one ``SELECT 1`` tells the two apart.
    """
    if conn.closed or conn.broken:
        return True
    pgconn = conn.pgconn
    try:
        readable, _, _ = select.select([pgconn.socket], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    psycopg = psycopg_module()
    try:
        pgconn.consume_input()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            return True
        conn.execute("SELECT 1")
    except psycopg.Error:
        return True
    return bool(conn.broken)


def is_connection_error(exc: BaseException) -> bool:
    """True for an error that means the connection (not the statement) failed."""
    psycopg = psycopg_module()
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith("08") or state.startswith("57P")
    return isinstance(exc, psycopg.InterfaceError)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (psycopg's run to several), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def application_name(text: str) -> str:
    """``text`` as a valid ``application_name``: printable ASCII, at most 63 characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:63])


def lost(display: str, exc: BaseException, *, maybe_committed: bool) -> ConnectionLost:
    """The racefree error for a connection that failed during an operation."""
    return ConnectionLost(display, first_line(exc), maybe_committed=maybe_committed)


@contextlib.contextmanager
def translate(display: str, *, maybe_committed: bool) -> Iterator[None]:
    """Turn a lost connection inside the block into :class:`ConnectionLost`."""
    try:
        yield
    except Exception as exc:
        if is_connection_error(exc):
            raise lost(display, exc, maybe_committed=maybe_committed) from exc
        raise
