"""The PostgreSQL server the tests use, and the ``store_factory`` half for PostgreSQL.

Where the server comes from, in order:

1. ``RACEFREE_TEST_POSTGRES`` (a URL; CI sets it). If the server does not
   answer, the tests are skipped, or fail when ``RACEFREE_REQUIRE_POSTGRES=1``
   (CI sets that too, so the PostgreSQL tests can never silently skip there).
2. Otherwise a throwaway server: ``initdb`` and ``pg_ctl`` from the PATH (or
   Debian's ``/usr/lib/postgresql/*/bin``) in a temporary directory, on a free
   port, stopped and removed at exit. As root it runs as the ``postgres`` user.
3. Otherwise the tests are skipped with one line saying how to enable them.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import pytest

_cache: dict[str, str] = {}
_ENABLE = (
    "PostgreSQL tests skipped: set RACEFREE_TEST_POSTGRES=postgresql://... "
    "or put initdb/pg_ctl on the PATH"
)


def _reachable(url: str) -> str | None:
    """None if a connection to ``url`` works, else the error's first line."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed: pip install 'racefree[postgres]'"
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_throwaway() -> str | None:
    """Start a private server; its URL, or None if initdb/pg_ctl are not available."""
    initdb, pg_ctl = _find_tool("initdb"), _find_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        return None
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except (ImportError, KeyError):
            return None
        if runuser is None:
            return None
        prefix = [runuser, "-u", "postgres", "--"]
    base = tempfile.mkdtemp(prefix="racefree-pg-")
    if prefix:
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data = os.path.join(base, "data")
    port = _free_port()
    subprocess.run(
        [*prefix, initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
    )
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(
        [*prefix, pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(base, "log"), "-w", "start"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
    )

    def stop() -> None:
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            subprocess.run(
                [*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    # The test database, like CI's.
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE test")
    return f"postgresql://postgres@127.0.0.1:{port}/test"


def server_url() -> str:
    """The URL of the test server, starting one if needed; skips (or fails) the test if none."""
    if "url" in _cache:
        return _cache["url"]
    if "skip" in _cache:
        _give_up(_cache["skip"])
    url = os.environ.get("RACEFREE_TEST_POSTGRES")
    if url:
        problem = _reachable(url)
        if problem is not None:
            _cache["skip"] = f"PostgreSQL at RACEFREE_TEST_POSTGRES is unreachable: {problem}"
            _give_up(_cache["skip"])
    else:
        try:
            started = _start_throwaway()
        except (OSError, subprocess.SubprocessError) as exc:
            _cache["skip"] = f"PostgreSQL tests skipped: could not start a server: {exc}"
            _give_up(_cache["skip"])
        if started is None:
            _cache["skip"] = _ENABLE
            _give_up(_ENABLE)
        url = started
    _cache["url"] = url
    return url


def _give_up(reason: str) -> None:
    if os.environ.get("RACEFREE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason} (RACEFREE_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(reason)


def unique_name(request: pytest.FixtureRequest | None = None) -> str:
    """A store or lock name no other test (or other run sharing the server) uses."""
    stem = request.node.name[:30] if request is not None else "t"
    return f"test-{stem}-{uuid.uuid4().hex[:12]}"


def drop_store(url: str, name: str) -> None:
    """Delete every row of the named store (the tables are shared by all stores)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('racefree_docs')").fetchone() == (None,):
            return
        conn.execute("DELETE FROM racefree_docs WHERE store = %s", (name,))


def pg_store_factory(request: pytest.FixtureRequest, opened: list[Any]) -> Callable[..., Any]:
    """``make(**kwargs)``: opens (or reopens) one named PostgreSQL store unique to this test.

    Each call opens a new handle on the same store; ``opened`` collects them
    so the fixture closes them; the store's rows are deleted after the test.
    """
    url = server_url()
    name = unique_name(request)
    request.addfinalizer(lambda: drop_store(url, name))
    from racefree import open_store

    def make(**kwargs: Any) -> Any:
        # The file store's private tuning knobs (segment size, compaction
        # threshold) have no meaning here.
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        store = open_store(url, name=name, **kwargs)
        opened.append(store)
        return store

    return make
