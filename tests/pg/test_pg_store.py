"""PgStore beyond the shared Store contract: many processes, killed sessions, fencing, encoding.

The Store contract and the model test run on PostgreSQL through the
``store_factory`` fixture (see ``conftest.py`` and ``pgserver.py``); this
file covers what only the PostgreSQL backend has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.pgserver import drop_store, unique_name

from racefree import ConflictError, ConnectionLost, LockLost

pytestmark = pytest.mark.postgres

SRC = str(Path(__file__).resolve().parents[2] / "src")
WAIT = 30.0


@pytest.fixture
def name(request: pytest.FixtureRequest, url: str) -> Iterator[str]:
    n = unique_name(request)
    yield n
    drop_store(url, n)


@pytest.fixture
def store(url: str, name: str) -> Iterator[Any]:
    from racefree import open_store

    s = open_store(url, name=name, max_connections=4)
    yield s
    s.close()


def _wait_until(pred: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


_UPDATER = """
import sys
sys.path.insert(0, {src!r})
from racefree import open_store
store = open_store({url!r}, name={name!r}, max_connections=1)
calls = 0
def bump(d):
    global calls
    calls += 1
    return {{"n": d["n"] + 1}}
print("ready", flush=True)
sys.stdin.readline()
for _ in range({n}):
    store.update("counter", bump, default={{"n": 0}})
store.close()
print(calls, flush=True)
"""


@pytest.mark.slow
def test_processes_updating_one_counter_lose_nothing(url: str, name: str, store: Any) -> None:
    """4 processes x 50 update() of one id that does not exist yet: exactly 200, version 200.

    And fn ran exactly once per update (200 calls in all), also for the racing creators.
    """
    code = _UPDATER.format(src=SRC, url=url, name=name, n=50)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:  # start barrier: all race to create the id at once
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        calls = 0
        for p in procs:
            assert p.wait(WAIT * 4) == 0
            assert p.stdout is not None
            calls += int(p.stdout.read())
        assert calls == 200
        assert store.get("counter") == {"n": 200}
        assert store.version("counter") == 200
    finally:
        for p in procs:
            p.kill()
            p.wait(WAIT)


def test_terminated_backend_mid_batch_leaves_nothing(store: Any, admin: Any, name: str) -> None:
    """A batch whose session is killed after two of its writes: none of it is visible."""
    store.put("blocker", {"v": 0})
    key = b"blocker"
    admin.execute("BEGIN")
    try:
        # Hold the row the batch's third write needs, so the batch stops there
        # with its first two writes done but not committed.
        admin.execute(
            "SELECT 1 FROM racefree_docs WHERE store = %s AND id = %s FOR UPDATE", (name, key)
        )
        me = admin.info.backend_pid
        errors: list[BaseException] = []

        def run_batch() -> None:
            try:
                with store.batch() as b:
                    b.put("a", {"n": 1})
                    b.delete("gone")
                    b.put("b", {"n": 2})
                    b.put("blocker", {"v": 1})
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        t = threading.Thread(target=run_batch)
        t.start()
        pid = _wait_until(
            lambda: admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (me,)
            ).fetchone(),
            "the batch to block on the held row",
        )[0]
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        t.join(WAIT)
        assert not t.is_alive()
    finally:
        admin.execute("ROLLBACK")
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLost)
    assert errors[0].maybe_committed is False
    assert store.get("a") is None and store.get("b") is None
    assert store.get("blocker") == {"v": 0} and store.version("blocker") == 1
    assert store.keys() == ["blocker"]
    # The pool dropped the dead session: the store keeps working.
    assert store.put("a", {"n": 3}) == 1


def test_dead_pooled_sessions_are_replaced(store: Any, admin: Any, name: str) -> None:
    """Idle pooled sessions ended by the server are discarded, not handed to a call."""
    store.put("x", {"v": 1})
    pids = [
        r[0]
        for r in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (f"racefree:{name}",),
        ).fetchall()
    ]
    assert pids
    for pid in pids:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    _wait_until(
        lambda: admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone()[0] == 0,
        "the sessions to end",
    )
    assert store.get("x") == {"v": 1}
    assert store.put("x", {"v": 2}) == 2


def test_stale_fenced_write_is_rejected(url: str, store: Any, admin: Any) -> None:
    """A holder whose session died writes with its old token: LockLost, nothing written."""
    from racefree import open_lock

    lock_name = unique_name()
    old, new = open_lock(url, lock_name), open_lock(url, lock_name)
    try:
        old.acquire()
        stale = old.token
        assert stale is not None
        assert store.put("doc", {"by": "old"}, fence=stale) == 1
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND pid <> pg_backend_pid() AND granted AND objid = %s",
            (_objid(lock_name),),
        )
        new.acquire(timeout=WAIT)
        fresh = new.token
        assert fresh is not None and fresh > stale
        assert store.put("doc", {"by": "new"}, fence=fresh) == 2
        with pytest.raises(LockLost) as info:
            store.put("doc", {"by": "old again"}, fence=stale)
        assert str(int(stale)) in str(info.value) and str(int(fresh)) in str(info.value)
        with pytest.raises(LockLost):
            store.delete("doc", fence=stale)
        with pytest.raises(LockLost):
            store.update("doc", lambda d: {"by": "old update"}, fence=stale)
        with pytest.raises(LockLost), store.batch() as b:
            b.put("other", {"by": "old batch"})
            b.put("doc", {"by": "old batch"}, fence=stale)
        assert store.get("doc") == {"by": "new"} and store.version("doc") == 2
        assert "other" not in store
        new.release()
        with pytest.raises(LockLost):
            old.release()
        with pytest.raises(TypeError):
            store.put("doc", {"by": "bare int"}, fence=int(fresh))
    finally:
        old.close()
        new.close()


def _objid(lock_name: str) -> int:
    from racefree.pg.driver import advisory_key

    return advisory_key("lock", lock_name) & 0xFFFFFFFF


def test_any_string_is_an_id(store: Any) -> None:
    """NUL, lone surrogates, path syntax and the empty string are ids like any other."""
    ids = ["", "\x00", "a\x00b", "../x", "/etc/passwd", "\ud800", "\udfff\ud800", "é", "💥"]
    for i, key in enumerate(ids):
        assert store.put(key, {"i": i}) == 1
    for i, key in enumerate(ids):
        assert store.get(key) == {"i": i} and store[key] == {"i": i} and key in store
    assert sorted(store.keys()) == sorted(ids)
    assert len(store) == len(ids)
    with pytest.raises(TypeError):
        store.put(b"bytes", {})
    assert len(store) == len(ids)


def test_documents_round_trip_exactly(store: Any) -> None:
    """Key order, float vs int, NUL and surrogates in strings survive (json, not jsonb)."""
    doc = {"z": 1, "a": [1.0, 1e20, -0.0, 10**30], "\x00": "\ud800\x00", "m": {"b": 1, "a": 2}}
    store.put("d", doc)
    got = store.get("d")
    assert got == doc
    assert json.dumps(got) == json.dumps(doc)  # same order, same types
    assert got is not store.get("d")
    got["z"] = 2
    assert store.get("d") == doc


def test_bad_documents_raise_type_error_and_write_nothing(store: Any) -> None:
    """Non-dict and non-JSON documents: TypeError before anything is written."""
    store.put("k", {"v": 1})
    for bad in ([1], "s", None, {"f": float("nan")}, {"s": {1, 2}}, {"o": object()}):
        with pytest.raises(TypeError):
            store.put("k", bad)
        with pytest.raises(TypeError), store.batch() as b:
            b.put("new", {"ok": 1})
            b.put("k", bad)
    with pytest.raises(TypeError):
        store.update("k", lambda d: [d])
    assert store.get("k") == {"v": 1} and store.version("k") == 1 and "new" not in store


def test_versions_and_conflicts(store: Any) -> None:
    """expect_version: 0 means must not exist; a mismatch raises and writes nothing."""
    assert store.put("k", {"v": 1}, expect_version=0) == 1
    with pytest.raises(ConflictError) as info:
        store.put("k", {"v": 2}, expect_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert store.put("k", {"v": 2}, expect_version=1) == 2
    with pytest.raises(ConflictError):
        store.delete("k", expect_version=1)
    with pytest.raises(ConflictError), store.batch() as b:
        b.put("x", {"v": 1})
        b.put("k", {"v": 3}, expect_version=7)
    assert "x" not in store and store.get("k") == {"v": 2}
    # The error names the version before the batch, not one a later op of the batch wrote.
    with pytest.raises(ConflictError) as info, store.batch() as b:
        b.put("y", {"v": 1})
        b.put("k", {"v": 3}, expect_version=1)
        b.put("k", {"v": 4})
    assert (info.value.key, info.value.expected, info.value.actual) == ("k", 1, 2)
    assert "y" not in store and store.version("k") == 2
    with store.batch() as b:  # a clean batch goes through in one round trip
        b.put("k", {"v": 3}, expect_version=2)
        b.delete("k", expect_version=3)
        b.put("k", {"v": 5}, expect_version=0)
        b.delete("never", expect_version=0)
    assert b.versions == {"k": 5, "never": None} and store.get("k") == {"v": 5}
    assert store.delete("k", expect_version=5) is True
    assert store.delete("k") is False and store.version("k") is None


def test_named_stores_share_a_database_apart(url: str, store: Any, name: str) -> None:
    """Two named stores in one database never see each other's documents."""
    from racefree import open_store

    other_name = name + "-other"
    other = open_store(f"{url}?store={other_name}")
    try:
        store.put("same", {"in": "first"})
        other.put("same", {"in": "second"})
        assert store.get("same") == {"in": "first"} and other.get("same") == {"in": "second"}
        assert len(store) == 1 and len(other) == 1
    finally:
        other.close()
        drop_store(url, other_name)


def test_forked_child_uses_its_own_connections(store: Any) -> None:
    """After fork the child writes through its own pool; the parent's sessions stay alive."""
    store.put("k", {"v": 0})
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            store.update("k", lambda d: {"v": d["v"] + 1})
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.update("k", lambda d: {"v": d["v"] + 1}) == {"v": 2}


def test_unreachable_server_is_one_clear_error() -> None:
    """Opening a store on a closed port raises ConnectionLost naming the URL, no password."""
    from racefree import open_store

    with pytest.raises(ConnectionLost) as info:
        open_store("postgresql://u:secret@127.0.0.1:1/db", connect_timeout=2)
    assert "secret" not in str(info.value) and "127.0.0.1:1" in str(info.value)


def test_update_fn_writing_its_own_id_is_refused(store: Any) -> None:
    """A write to the id being updated, from inside fn, raises instead of waiting forever."""
    store.put("k", {"v": 1})

    def fn(doc: dict[str, Any]) -> dict[str, Any]:
        store.put("k", {"v": 99})
        return doc

    with pytest.raises(RuntimeError, match="row lock"):
        store.update("k", fn)
    assert store.get("k") == {"v": 1} and store.version("k") == 1
    # Other ids may be written from fn (through a second pooled session).
    assert store.update("k", lambda d: (store.put("other", {"o": 1}), {"v": 2})[1]) == {"v": 2}
    assert store.get("other") == {"o": 1}


def test_update_fn_updating_its_own_id_is_refused(store: Any, admin: Any, name: str) -> None:
    """update(id) from inside update(id)'s fn raises RuntimeError instead of waiting for ever on
    the outer update's own row lock (a new id, whose placeholder row is locked, too)."""
    store.put("k", {"v": 1})
    outcome: list[str] = []

    def run() -> None:
        for key in ("k", "new"):
            try:
                store.update(key, lambda d, k=key: (store.update(k, lambda e: {"v": 5}), d)[1],
                             default={"v": 0})
                outcome.append("returned")
            except RuntimeError as exc:
                outcome.append("RuntimeError: row lock" if "row lock" in str(exc) else repr(exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT)
    if t.is_alive():  # end the two waiting sessions, so that the test itself ends
        from racefree.pg.driver import application_name

        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE application_name = %s", (application_name(f"racefree:{name}"),))
        t.join(WAIT)
        pytest.fail("the nested update waited for its own row lock")
    assert outcome == ["RuntimeError: row lock", "RuntimeError: row lock"]
    assert store.get("k") == {"v": 1} and store.version("k") == 1 and "new" not in store
