"""Case 7: a PostgreSQL password never appears in a message, an exception or CLI output.

However it is given: in the user part of a URL (with ``%`` or percent-encoded),
as a ``password=`` parameter, inside a ``dbname`` that is itself a URL or a
conninfo string, or quoted by the driver's own error text. The CLI prints one
line, never a traceback, for any connection error. Refused connections are real
(a closed port); a wrong password is faked at the driver (the test server trusts
every local connection).
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from typing import Any

import pytest

import racefree
from racefree.cli import main
from racefree.pg import driver

pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed")

PASSWORD_FORMS = [
    ("postgresql://app:p%25ss@127.0.0.1:1/db", ["p%25ss", "p%ss"]),
    ("postgresql://app:p%ss@127.0.0.1:1/db", ["p%ss"]),
    ("postgresql://app:p%40ss%2Fw0rd@127.0.0.1:1/db", ["p%40ss%2Fw0rd", "p@ss/w0rd"]),
    ("postgresql://app@127.0.0.1:1/db?password=s3cret&sslpassword=k3y", ["s3cret", "k3y"]),
    ("postgresql://127.0.0.1:1/?dbname=postgresql://u:n3sted@h/db", ["n3sted"]),
    ("postgresql://127.0.0.1:1/?dbname=" + "host%3Dh%20password%3D%27q%20w3rd%27",
     ["q w3rd", "q%20w3rd", "w3rd"]),
    # Raw "/", "#", "?" and "@" in the password: no parser's reading may put a piece of
    # it where a message quotes it (a port, a host, a database name).
    ("postgresql://app:zq9/xk7@127.0.0.1:1/db", ["zq9/xk7", "zq9", "xk7"]),
    ("postgresql://app:zq9#xk7@127.0.0.1:1/db", ["zq9#xk7", "zq9", "xk7"]),
    ("postgresql://app:zq9?xk7@127.0.0.1:1/db", ["zq9?xk7", "zq9", "xk7"]),
    ("postgresql://app:zq9@xk7@127.0.0.1:1/db", ["zq9@xk7", "zq9", "xk7"]),
    ("postgresql://app:S3cr/et#p@ss%w rd@127.0.0.1:1/db", ["S3cr", "et#p", "ss%w", "w rd"]),
    # A nested URL percent-encoded twice: messages quote it decoded once.
    ("postgresql://127.0.0.1:1/?dbname=postgresql%253A%252F%252Fu%253Ah2x4v%2540h%252Fdb",
     ["h2x4v"]),
]
# The password each raw spelling above means, as libpq must read it.
MEANT = {
    "postgresql://app:zq9/xk7@127.0.0.1:1/db": "zq9/xk7",
    "postgresql://app:zq9#xk7@127.0.0.1:1/db": "zq9#xk7",
    "postgresql://app:zq9?xk7@127.0.0.1:1/db": "zq9?xk7",
    "postgresql://app:zq9@xk7@127.0.0.1:1/db": "zq9@xk7",
    "postgresql://app:S3cr/et#p@ss%w rd@127.0.0.1:1/db": "S3cr/et#p@ss%w rd",
}


def leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


def everything_said(exc: BaseException) -> str:
    """str, repr and the whole printed traceback (every chained error) of ``exc``."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


@pytest.mark.parametrize(("url", "secrets"), PASSWORD_FORMS)
def test_case7_parsed_url_shows_no_password(url: str, secrets: list[str]) -> None:
    """Case 7: ``display`` and ``repr`` of a parsed URL, and a PgLock's path and repr, hold
    none of the password's spellings; libpq still gets them."""
    parsed = driver.parse_url(url)
    assert leaks(parsed.display + repr(parsed), secrets) == []
    assert parsed.conninfo.startswith("postgresql://")
    lock = racefree.PgLock(url, "n")  # connects only at the first acquire
    try:
        assert leaks(lock.path + repr(lock), secrets) == []
    finally:
        lock.close()


@pytest.mark.parametrize(("url", "password"), list(MEANT.items()))
def test_case7_raw_delimiters_in_a_password_are_read_as_meant(url: str, password: str) -> None:
    """Case 7: a password with a raw "/", "#", "?" or "@" is read up to the "@" before
    the host, and libpq gets it percent-encoded: it reads that very password, the user,
    the host, the port and the database (before: libpq took "zq9" for a port, "xk7@..."
    for a database or a host, and messages quoted them)."""
    from psycopg.conninfo import conninfo_to_dict

    parsed = driver.parse_url(url)
    assert conninfo_to_dict(parsed.conninfo) == {
        "user": "app", "password": password, "host": "127.0.0.1", "port": "1", "dbname": "db"}
    assert parsed.display == "postgresql://app@127.0.0.1:1/db"
    said = f"could not connect with {url} (x)"
    scrubbed = "could not connect with postgresql://app:***@127.0.0.1:1/db (x)"
    assert driver.redact(said, parsed.secrets) == scrubbed
    if " " not in password:  # the shape-based second line of defence, without the secrets
        assert driver.redact(said) == scrubbed


def test_case7_a_url_that_reads_two_ways_is_refused_without_its_password() -> None:
    """Case 7: "app:12/34@h/db" reads validly as host "app", port 12, database "34@h/db",
    and as the password "12/34": refused (ValueError, scrubbed, saying what to encode),
    never handed to libpq, which would quote the port in its messages."""
    url = "postgresql://app:12/34@127.0.0.1:1/db"
    with pytest.raises(ValueError, match="percent-encode") as info:
        driver.parse_url(url)
    assert leaks(everything_said(info.value), ["12/34", "34@"]) == []
    proc = run_cli("store", url, "ls")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert leaks(proc.stdout + proc.stderr, ["12/34", "34@"]) == []


@pytest.mark.parametrize(("url", "secrets"), PASSWORD_FORMS)
def test_case7_failed_connection_names_no_password(url: str, secrets: list[str]) -> None:
    """Case 7: opening a store on a closed port (or a URL libpq rejects) raises an error
    whose message, repr and printed traceback, chained driver errors included, hold no
    spelling of the password."""
    with pytest.raises(Exception) as info:  # ConnectionLost, or the driver's own error
        racefree.open_store(url, connect_timeout=2)
    assert leaks(everything_said(info.value), secrets) == []


def test_case7_a_nested_url_encoded_twice_is_scrubbed_where_the_server_quotes_it(
    url: str,
) -> None:
    """Case 7: ``dbname`` holding a URL percent-encoded twice: the server's "database ...
    does not exist" quotes it decoded once, password included: scrubbed."""
    nested = (url.split("?")[0] + "?dbname="
              + "postgresql%253A%252F%252Fu%253Ah2x4v%2540127.0.0.1%252Fnodb")
    with pytest.raises(Exception) as info:
        racefree.open_store(nested, connect_timeout=5)
    said = everything_said(info.value)
    assert "does not exist" in said and "h2x4v" not in said


def test_case7_driver_error_quoting_the_url_is_scrubbed(url: str) -> None:
    """Case 7: the server's own message quotes a nested dbname with its password ("database
    ... does not exist"): scrubbed in the error and its chain."""
    parts = url.split("?")[0]
    nested = f"{parts}?dbname=postgresql://u:n3sted@h/db"
    with pytest.raises(Exception) as info:
        racefree.open_store(nested, connect_timeout=5)
    said = everything_said(info.value)
    assert "does not exist" in said and "n3sted" not in said


def test_case7_lost_connection_scrubs_the_chained_error() -> None:
    """Case 7: a lost connection whose driver error names the password: ConnectionLost and
    the error chained to it are both scrubbed."""
    import psycopg

    url = driver.parse_url("postgresql://app:hunter2@127.0.0.1/db?dbname=host%3Dh+password%3Dzz9")
    # Built here, not spelled on the raising line: a traceback prints that line's source.
    message = "server closed: password=" + url.secrets[0] + " zz9 for app:hunter2@h"
    with pytest.raises(racefree.ConnectionLost) as info, driver.translate(
        url, maybe_committed=False
    ):
        raise psycopg.OperationalError(message)
    said = everything_said(info.value)
    assert "hunter2" not in said and "zz9" not in said
    assert "server closed" in said


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "racefree", *argv], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("url", "secrets"), PASSWORD_FORMS)
def test_case7_cli_prints_one_line_without_the_password(url: str, secrets: list[str]) -> None:
    """Case 7: ``racefree store URL ls`` against a refused connection: exit 1, one line on
    stderr, no traceback, no spelling of the password."""
    proc = run_cli("store", url, "ls")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("racefree store: error:")
    assert "Traceback" not in proc.stderr
    assert leaks(proc.stdout + proc.stderr, secrets) == []


def test_case7_cli_wrong_password_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Case 7: a wrong password (faked at the driver: the test server trusts local users),
    whose message quotes the conninfo: one line, scrubbed, no traceback."""
    import psycopg

    def refuse(conninfo: str, **kwargs: Any) -> Any:
        # SQLSTATE 28P01: not a lost connection, so the driver's own error reaches the CLI.
        raise psycopg.errors.InvalidPassword(
            f'connection to {conninfo} failed: FATAL:  password authentication failed for user'
            ' "app"\nDETAIL: Connection matched pg_hba.conf line 1: "host all all scram"'
        )

    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.setenv("PGPASSWORD", "envs3cret")
    code = main(["store", "postgresql://app:Wr0ng%21@127.0.0.1/db?password=other1", "ls"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "password authentication failed" in err
    assert leaks(err, ["Wr0ng", "other1", "envs3cret"]) == []


def test_case7_torture_never_puts_the_url_on_a_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Case 7: torture hands the URL (and its password) to its workers in their environment,
    which only their user may read, never on their command line, which every user may."""
    from racefree.torture import run as torture_run

    seen: list[tuple[list[str], dict[str, str]]] = []

    class FakePopen:
        def __init__(self, args: list[str], **kwargs: Any) -> None:
            seen.append((args, kwargs["env"]))

    monkeypatch.setattr(torture_run.subprocess, "Popen", FakePopen)
    proc = torture_run._Proc(0)
    os.mkdir(tmp_path / "acks")
    torture_run._start(proc, str(tmp_path), 0.0, 1, "store",
                       "postgresql://app:t0psecret@127.0.0.1/db")
    (args, env), = seen
    assert not any("t0psecret" in a for a in args)
    assert env["RACEFREE_TORTURE_URL"] == "postgresql://app:t0psecret@127.0.0.1/db"


def test_case7_a_url_urllib_refuses_is_one_line_without_the_password() -> None:
    """Case 7: an unclosed IPv6 host (``[::1``), which ``urllib`` refuses with ValueError
    while the password is looked for: exit 1, one line, no traceback, no password (before,
    the scrubbing itself failed and printed a traceback)."""
    proc = run_cli("store", "postgresql://app:s3cr3t-pw@[::1/db", "ls")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("racefree store: error:")
    assert "Traceback" not in proc.stderr
    assert leaks(proc.stdout + proc.stderr, ["s3cr3t-pw"]) == []
