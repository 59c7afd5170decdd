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
import re
import select
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from racefree._errors import ConnectionLost
from racefree.pg import userinfo as _userinfo

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
    "redact",
    "scrub",
    "secrets_in",
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
    holds racefree's parameters (``store``, ``min_connections``,
    ``max_connections``); ``secrets`` every password found in it, however
    given (see :func:`secrets_in`), which :meth:`redact` removes from a text.
    ``repr()`` shows ``display`` only.
    """

    __slots__ = ("conninfo", "display", "params", "secrets")

    def __init__(
        self, conninfo: str, display: str, params: dict[str, str], secrets: tuple[str, ...] = ()
    ) -> None:
        self.conninfo = conninfo
        self.secrets = secrets
        self.display = redact(display, secrets)
        self.params = params

    def redact(self, text: str) -> str:
        """``text`` without this URL's passwords (nor any other that looks like one)."""
        return redact(text, self.secrets)

    def __repr__(self) -> str:
        return f"<PgUrl {self.display!r}>"


def parse_url(url: str) -> PgUrl:
    """Split ``url``; a ValueError names a malformed one (without its password).

    The user part is read as its writer meant it (:mod:`racefree.pg.userinfo`):
    from ``://`` to the ``@`` before the host, whatever raw ``/``, ``?``, ``#``
    or ``@`` the password holds, and handed to libpq percent-encoded, so that
    libpq reads the same password (and never quotes a piece of it as a port, a
    host or a database). A URL that reads validly both ways (``app:12/34@h/db``:
    the host ``app``, port 12, or the password ``12/34``) is refused: percent-encode
    the password (``%2F``) or the database name.
    """
    if not is_pg_url(url):
        raise ValueError(f"not a postgresql:// URL: {redact(repr(url), secrets_in(url))}")
    secrets = tuple(secrets_in(url))
    url = _with_userinfo_encoded(url, secrets)
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
    return PgUrl(conninfo, display, own, secrets)


def _with_userinfo_encoded(url: str, secrets: tuple[str, ...]) -> str:
    """``url`` with its user part (as meant: ``pg.userinfo``) percent-encoded for libpq."""
    scheme, _, rest = url.partition("://")
    netloc = urllib.parse.urlsplit(url).netloc
    plain = netloc.rpartition("@")[0] if "@" in netloc else None
    meant = _userinfo.intended(rest)
    if meant is None:
        return url
    userinfo, after = meant
    if userinfo != plain:
        if ":" not in userinfo:
            return url  # no password at stake: the usual reading stands
        if _userinfo.host_list(netloc.rpartition("@")[2]):
            raise ValueError(
                "ambiguous postgresql:// URL: percent-encode a '/', '?', '#' or '@' in the"
                " password (%2F, %3F, %23, %40), or an '@' in the database name: "
                + redact(repr(url), secrets)
            )
    elif not re.search(r"[/?#@]", userinfo):
        return url  # read alike by every parser: handed on as written
    return f"{scheme}://{_userinfo.encode(userinfo)}@{after}"


# -- secrets: found by parsing, removed from every message ----------------------------
#
# A password can reach libpq in many forms: the user part of a URL (percent-encoded
# or not), a ``password=`` or ``sslpassword=`` query parameter, a ``password=...``
# keyword of a conninfo string, or nested: libpq takes a ``dbname`` that is itself a
# URL or a conninfo string, and its error messages then quote it ("database
# \"postgresql://u:pw@h/db\" does not exist"). secrets_in() finds each by parsing;
# redact() replaces every one (raw and decoded) in a text, then anything still shaped
# like a password, as a second line of defence.

# Greedy to the last "@" of the token: a password may hold a raw "/", "?", "#" or "@".
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/?#@\s'\"]*:)[^\s'\"]*(@)")
_KEYWORD = re.compile(
    r"(?i)(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\"[^\"]*\"?|[^\s&'\"]+)"
)
_CONNINFO_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
_MASK = "***"


def secrets_in(text: str, _depth: int = 0) -> list[str]:
    """Every password in a URL or conninfo string ``text``, raw and decoded, nested ones too."""
    found: list[str] = []
    if _depth > 3 or not text:
        return found
    if is_pg_url(text):
        # Every reading of the user part (raw "/", "?", "#" or "@" in it), first: it needs
        # no parse. A URL urllib refuses ("[::1" unclosed) is not parsed further; its
        # message then names no password, and ``redact`` masks the user part anyway.
        for raw in _userinfo.candidate_passwords(text.partition("://")[2]):
            found += [raw, urllib.parse.unquote(raw)]
        try:
            parts = urllib.parse.urlsplit(text)
        except ValueError:
            return found
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        if ":" in userinfo:
            raw = userinfo.partition(":")[2]
            found += [raw, urllib.parse.unquote(raw)]
        for pair in parts.query.split("&"):
            key, _, raw = pair.partition("=")
            value = urllib.parse.unquote_plus(raw)
            if urllib.parse.unquote_plus(key) in _SECRET_PARAMS:
                found += [raw, value]
            else:
                found += secrets_in(value, _depth + 1)
        found += secrets_in(urllib.parse.unquote(parts.path.lstrip("/")), _depth + 1)
    elif "=" in text:
        for match in _CONNINFO_PAIR.finditer(text):
            key, raw = match.group(1), match.group(2)
            value = raw
            if len(raw) >= 2 and raw[0] == raw[-1] == "'":
                value = re.sub(r"\\(.)", r"\1", raw[1:-1])
            if key.lower() in _SECRET_PARAMS:
                found += [raw, value]
            else:
                found += secrets_in(value, _depth + 1)
    if "%" in text and not is_pg_url(text):
        # A URL percent-encoded once more (a dbname= of a dbname=): the server's messages
        # quote it decoded once, with the password inside.
        found += secrets_in(urllib.parse.unquote(text), _depth + 1)
    # As they may be spelled again in a URL or a message: percent-encoded, or with "+".
    found += [q(s, safe="") for s in found for q in (urllib.parse.quote, urllib.parse.quote_plus)]
    return [s for s in dict.fromkeys(found) if s]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` and anything shaped like a password replaced by ***."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, _MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{_MASK}{m.group(2)}", text)
    return _KEYWORD.sub(lambda m: f"{m.group(1)}{_MASK}", text)


def scrub(exc: BaseException, secrets: Iterable[str] = ()) -> BaseException:
    """Remove passwords from the messages of ``exc`` and of the errors chained to it.

    The driver's errors quote what libpq was given (a nested ``dbname``, an
    undecodable percent escape), and a traceback prints every error of the
    chain, so each one's ``args`` are redacted in place. Returns ``exc``.
    """
    keys = tuple(secrets)
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        with contextlib.suppress(Exception):  # an exception type whose args are read-only
            err.args = tuple(redact(a, keys) if isinstance(a, str) else a for a in err.args)
        err = err.__cause__ or err.__context__
    return exc


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


def lost(url: PgUrl, exc: BaseException, *, maybe_committed: bool) -> ConnectionLost:
    """The racefree error for a connection that failed during an operation.

    Neither it nor ``exc`` (which it scrubs, as it is chained to it) names a password.
    """
    scrub(exc, url.secrets)
    return ConnectionLost(
        url.display, url.redact(first_line(exc)), maybe_committed=maybe_committed
    )


@contextlib.contextmanager
def translate(url: PgUrl, *, maybe_committed: bool) -> Iterator[None]:
    """Turn a lost connection inside the block into :class:`ConnectionLost`.

    Any other error passes through, its message scrubbed of the URL's passwords.
    """
    try:
        yield
    except Exception as exc:
        if is_connection_error(exc):
            raise lost(url, exc, maybe_committed=maybe_committed) from exc
        scrub(exc, url.secrets)
        raise
