"""open_store / open_lock dispatch, the async twins, store copy, and the optional driver."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.pgserver import drop_store, unique_name

ROOT = Path(__file__).resolve().parents[2]
SRC = str(ROOT / "src")


@pytest.fixture
def pg_name(request: pytest.FixtureRequest, url: str) -> Iterator[str]:
    n = unique_name(request)
    yield n
    drop_store(url, n)


def test_open_store_dispatches_on_the_location(tmp_path: Path) -> None:
    """A path or file:// URL gives the file Store; another scheme is a ValueError."""
    from racefree import Store, open_store

    with open_store(tmp_path / "a") as a:
        assert type(a) is Store
        a.put("k", {"v": 1})
    with open_store(f"file://{tmp_path / 'a'}") as again:
        assert type(again) is Store and again.get("k") == {"v": 1}
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        open_store("http://example.com/store")
    with pytest.raises(ValueError, match="local path"):
        open_store("file://otherhost/x")


@pytest.mark.postgres
def test_open_store_postgres(url: str, pg_name: str) -> None:
    """postgresql:// gives PgStore; the name comes from name= or ?store=; both see one store."""
    from racefree import PgStore, open_store

    with open_store(url, name=pg_name) as a, open_store(f"{url}?store={pg_name}") as b:
        assert type(a) is PgStore and a.name == pg_name == b.name
        a.put("k", {"v": 1})
        assert b.get("k") == {"v": 1}
        assert pg_name in a.path and "postgresql://" in a.path


def test_open_lock_files(tmp_path: Path) -> None:
    """A path with a name is a directory of lock files; without, the lock file itself."""
    from racefree import FileLock, open_lock
    from racefree.backends.dispatch import lock_file_name

    lock = open_lock(tmp_path, "jobs/../x\x00")
    assert type(lock) is FileLock
    assert lock.path == str(tmp_path / "jobs%2F..%2Fx%00.lock")
    with lock:
        assert lock.locked
    assert sorted(os.listdir(tmp_path)) == ["jobs%2F..%2Fx%00.lock"]
    plain = open_lock(tmp_path / "plain.lock", shared=True)
    assert type(plain) is FileLock and plain.path == str(tmp_path / "plain.lock") and plain.shared
    assert lock_file_name("..") == "...lock"
    assert lock_file_name("x" * 300).startswith("sha256-")


@pytest.mark.postgres
def test_open_lock_postgres(url: str) -> None:
    """postgresql:// gives PgLock (a name is required); keyword arguments reach it."""
    from racefree import PgLock, open_lock

    name = unique_name()
    lock = open_lock(url, name, shared=True, timeout=5)
    try:
        assert type(lock) is PgLock and lock.shared and lock.timeout == 5.0 and lock.name == name
        with lock:
            assert lock.token is not None
    finally:
        lock.close()
    with pytest.raises(TypeError, match="needs a lock name"):
        open_lock(url)


@pytest.mark.postgres
def test_async_twins(tmp_path: Path, url: str, pg_name: str) -> None:
    """open_async_store gives AsyncStore / AsyncPgStore with the same calls and results."""
    from racefree import AsyncPgStore, AsyncStore, ConflictError, open_async_store

    async def exercise(store: Any) -> list[Any]:
        out: list[Any] = [await store.put("a", {"n": 1})]
        async with store.batch() as b:
            b.put("b", {"n": 2})
            b.delete("a")
        out.append(b.versions)
        out.append(await store.update("b", lambda d: {"n": d["n"] + 1}))
        with pytest.raises(ConflictError):
            await store.put("b", {}, expect_version=0)
        out += [await store.keys(), await store.count(), await store.contains("b"),
                await store.version("b"), await store.getitem("b"), await store.get("zz", 7),
                (await store.check()).documents]
        await store.close()
        return out

    async def main() -> tuple[Any, Any, list[Any], list[Any]]:
        f = await open_async_store(tmp_path / "s")
        p = await open_async_store(url, name=pg_name)
        return type(f), type(p), await exercise(f), await exercise(p)

    tf, tp, file_result, pg_result = asyncio.run(main())
    assert tf is AsyncStore and tp is AsyncPgStore
    assert file_result == pg_result == [
        1, {"b": 1, "a": 2}, {"n": 3}, ["b"], 1, True, 2, {"n": 3}, 7, 1,
    ]


@pytest.mark.postgres
def test_store_copy_round_trip(tmp_path: Path, url: str, pg_name: str) -> None:
    """file -> PostgreSQL -> file with the CLI: same ids, versions and exact documents."""
    from racefree import open_store
    from racefree.cli import main

    docs = {
        "": {"empty id": True},
        "\x00nul": {"z": 1, "a": [1.0, 1e20, 10**20, None]},
        "../x": {"\ud800": "\udfff"},
        "é": {"nested": {"b": 2, "a": 1}},
    }
    with open_store(tmp_path / "src") as src:
        for i, (key, doc) in enumerate(docs.items()):
            for _ in range(i + 1):  # versions 1..4
                src.put(key, doc)
        src.put("deleted", {})
        src.delete("deleted")
        want = src.items_with_versions()
    pg_url = f"{url}?store={pg_name}"
    assert main(["store", "copy", str(tmp_path / "src"), pg_url, "--chunk", "3"]) == 0
    assert main(["store", "copy", pg_url, str(tmp_path / "back")]) == 0
    for where in (pg_url, str(tmp_path / "back")):
        with open_store(where) as got:
            rows = got.items_with_versions()
        assert [(k, v) for k, v, _ in rows] == [(k, v) for k, v, _ in want]
        assert [json.dumps(d) for _, _, d in rows] == [json.dumps(d) for _, _, d in want]
    assert [v for _, v, _ in want] == [1, 2, 3, 4]
    # A destination that holds documents is refused, and nothing is changed.
    assert main(["store", "copy", str(tmp_path / "src"), str(tmp_path / "back")]) == 1
    assert main(["store", "copy", str(tmp_path / "src"), str(tmp_path / "back"), "--force"]) == 0
    # A source that is not a store is one clear error.
    assert main(["store", "copy", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()


def test_core_imports_without_the_driver(tmp_path: Path) -> None:
    """Without psycopg, the file store works; a postgresql:// URL says what to install."""
    code = f"""
import sys
sys.modules["psycopg"] = None
sys.modules["psycopg_pool"] = None
sys.path.insert(0, {SRC!r})
import racefree
with racefree.open_store({str(tmp_path / "s")!r}) as s:
    s.put("k", {{}})
for call in (lambda: racefree.open_store("postgresql://u@h/db"),
             lambda: racefree.open_lock("postgresql://u@h/db", "n").acquire()):
    try:
        call()
    except ImportError as exc:
        print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    hint = "the PostgreSQL backend needs psycopg 3: pip install 'racefree[postgres]'"
    assert out.stdout.splitlines() == [hint, hint]


@pytest.mark.slow
def test_both_stores_satisfy_the_protocol() -> None:
    """mypy --strict accepts Store, PgStore and their async twins as the shared protocols."""
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "tests/typing/store_protocol.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_connection_lost_and_fence_token_pickle() -> None:
    """ConnectionLost and FenceToken survive pickling with every field (they cross processes)."""
    import pickle

    from racefree import ConnectionLost, FenceToken, RacefreeError

    lost = ConnectionLost("postgresql://h/db", "gone", maybe_committed=True)
    err = pickle.loads(pickle.dumps(lost))
    assert isinstance(err, RacefreeError) and isinstance(err, ConnectionError)
    assert (err.url, err.detail, err.maybe_committed) == ("postgresql://h/db", "gone", True)
    assert str(err) == (
        "connection to postgresql://h/db lost: gone (the write may or may not have been committed)"
    )
    token = pickle.loads(pickle.dumps(FenceToken(42, "jobs")))
    assert type(token) is FenceToken and token == 42 and token.name == "jobs"


def test_password_in_url_parameters_is_never_shown() -> None:
    """A password given as a URL parameter stays out of ``path``, ``repr`` and messages, like
    one in the user part (libpq still gets it)."""
    from racefree import PgLock
    from racefree.pg.driver import parse_url

    url = "postgresql://app@127.0.0.1:1/db?password=s3cret&sslmode=disable&sslpassword=k3y"
    parsed = parse_url(url + "&store=s")
    assert parsed.display == "postgresql://app@127.0.0.1:1/db?sslmode=disable"
    assert "password=s3cret" in parsed.conninfo and "sslpassword=k3y" in parsed.conninfo
    lock = PgLock(url, "n")  # connects only at the first acquire
    try:
        assert lock.path == "postgresql://app@127.0.0.1:1/db?sslmode=disable#n"
        assert "s3cret" not in repr(lock) and "k3y" not in repr(lock)
    finally:
        lock.close()
