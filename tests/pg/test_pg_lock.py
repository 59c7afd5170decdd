"""PgLock: the FileLock contract on a PostgreSQL session advisory lock, plus lost locks."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.pgserver import unique_name

from racefree import LockLost, LockTimeout, WouldBlock
from racefree.pg.driver import advisory_key

pytestmark = pytest.mark.postgres

SRC = str(Path(__file__).resolve().parents[2] / "src")
WAIT = 30.0  # generous bound for anything that must happen "soon" on a busy machine


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return unique_name(request)


def _holders(admin: Any, name: str) -> list[tuple[int, str, bool]]:
    """``(pid, mode, granted)`` of every session holding or awaiting lock ``name``."""
    key = advisory_key("lock", name) & 0xFFFFFFFFFFFFFFFF
    rows = admin.execute(
        "SELECT pid, mode, granted FROM pg_locks WHERE locktype = 'advisory'"
        " AND classid = %s AND objid = %s AND objsubid = 1 ORDER BY pid",
        (key >> 32, key & 0xFFFFFFFF),
    ).fetchall()
    return [(int(p), str(m), bool(g)) for p, m, g in rows]


def _wait_until(pred: Any, what: str) -> None:
    """Wait for a server-side state that has no notification (bounded, exact outcome)."""
    deadline = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_exclusive_excludes_and_hands_over(url: str, name: str, admin: Any) -> None:
    """A second session gets WouldBlock / LockTimeout while held, and the lock once released."""
    from racefree import open_lock

    a = open_lock(url, name)
    b = open_lock(url, name)
    try:
        a.acquire()
        assert a.locked and a.held_by_me and not b.locked
        assert [g for _, _, g in _holders(admin, name)] == [True]
        with pytest.raises(WouldBlock):
            b.acquire_nowait()
        with pytest.raises(LockTimeout):
            b.acquire(timeout=0.2)
        with pytest.raises(LockTimeout):
            b.acquire(timeout=0)
        assert [g for _, _, g in _holders(admin, name)] == [True]  # b left nothing waiting
        first = a.token
        a.release()
        assert a.token is None and not a.locked
        b.acquire_nowait()
        assert b.token is not None and first is not None and b.token > first
        assert b.token.name == name
        b.release()
        assert _holders(admin, name) == []
    finally:
        a.close()
        b.close()


def test_reentrant_and_owner_checked(url: str, name: str) -> None:
    """The same thread may nest holds; another thread may not release them."""
    from racefree import PgLock

    lock = PgLock(url, name)
    try:
        with lock, lock:
            token = lock.token
            errors: list[BaseException] = []

            def other() -> None:
                try:
                    lock.release()
                except BaseException as exc:  # handed to the main thread
                    errors.append(exc)

            t = threading.Thread(target=other)
            t.start()
            t.join(WAIT)
            assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
            assert lock.token == token
        assert not lock.locked
        with pytest.raises(RuntimeError):
            lock.release()
    finally:
        lock.close()


def test_threads_sharing_one_instance_exclude(url: str, name: str) -> None:
    """4 threads x 50 unlocked read-modify-writes under one shared instance: exact count."""
    from racefree import PgLock

    lock = PgLock(url, name)
    box = {"n": 0, "inside": 0, "overlap": 0}

    def work() -> None:
        for _ in range(50):
            with lock:
                box["inside"] += 1
                if box["inside"] != 1:
                    box["overlap"] += 1
                n = box["n"]
                time.sleep(0)  # invite a switch inside the critical section
                box["n"] = n + 1
                box["inside"] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 2)
        assert box == {"n": 200, "inside": 0, "overlap": 0}
    finally:
        lock.close()


def test_shared_readers_exclude_writer(url: str, name: str, admin: Any) -> None:
    """Two shared holders (two sessions) at once; an exclusive lock waits for both."""
    from racefree import PgLock

    r1, r2, w = PgLock(url, name, shared=True), PgLock(url, name, shared=True), PgLock(url, name)
    try:
        r1.acquire_nowait()
        r2.acquire_nowait()
        assert sorted(m for _, m, _ in _holders(admin, name)) == ["ShareLock", "ShareLock"]
        with pytest.raises(WouldBlock):
            w.acquire_nowait()
        r1.release()
        with pytest.raises(WouldBlock):
            w.acquire_nowait()
        r2.release()
        w.acquire_nowait()
        with pytest.raises(WouldBlock):
            r1.acquire_nowait()
        w.release()
    finally:
        for lock in (r1, r2, w):
            lock.close()


def test_terminated_session_frees_lock_and_tells_holder(url: str, name: str, admin: Any) -> None:
    """pg_terminate_backend of the holder: the lock is free at once, the holder sees LockLost."""
    from racefree import PgLock

    a, b = PgLock(url, name), PgLock(url, name)
    try:
        a.acquire()
        assert a.lost is False
        (pid, _, granted), = _holders(admin, name)
        assert granted
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        b.acquire(timeout=WAIT)  # free again: the server dropped the dead session's lock
        _wait_until(lambda: a.lost, "the holder to notice its session ended")
        assert a.lost is True
        with pytest.raises(LockLost) as info:
            a.release()
        assert name in str(info.value)
        assert not a.locked
        b.release()
        a.acquire(timeout=WAIT)  # a new session; lost is cleared by the new hold
        assert a.lost is False
        a.release()
    finally:
        a.close()
        b.close()


_HOLDER = """
import sys
sys.path.insert(0, {src!r})
from racefree import PgLock
lock = PgLock({url!r}, {name!r})
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_killed_holder_process_frees_lock(url: str, name: str) -> None:
    """SIGKILL of a holding process: the next waiter gets the lock (the server drops it)."""
    from racefree import PgLock

    code = _HOLDER.format(src=SRC, url=url, name=name)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    lock = PgLock(url, name)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(WouldBlock):
            lock.acquire_nowait()
        proc.kill()
        proc.wait(WAIT)
        lock.acquire(timeout=WAIT)
        lock.release()
    finally:
        proc.kill()
        proc.wait(WAIT)
        lock.close()


_COUNTER = """
import sys
sys.path.insert(0, {src!r})
from racefree import PgLock
lock = PgLock({url!r}, {name!r})
path = {path!r}
print("ready", flush=True)
sys.stdin.readline()
for _ in range({n}):
    with lock:
        with open(path) as f:
            n = int(f.read())
        with open(path, "w") as f:
            f.write(str(n + 1))
lock.close()
"""


@pytest.mark.slow
def test_processes_exclude_each_other(url: str, name: str, tmp_path: Path) -> None:
    """3 processes x 40 unlocked file read-modify-writes under PgLock: exactly 120."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    code = _COUNTER.format(src=SRC, url=url, name=name, path=str(counter), n=40)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:  # the start barrier
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.wait(WAIT * 4) == 0
        assert counter.read_text() == "120"
    finally:
        for p in procs:
            p.kill()
            p.wait(WAIT)


def test_async_with_and_cancel_leaves_nothing_held(url: str, name: str, admin: Any) -> None:
    """A task cancelled while waiting in the server holds nothing; async with works."""
    from racefree import PgLock

    a, b = PgLock(url, name), PgLock(url, name)

    async def main() -> None:
        a.acquire_nowait()  # free: never waits, so it may run in the coroutine
        task = asyncio.ensure_future(b.acquire_async())
        # The waiter is in the server's lock queue (not granted) before we cancel.
        await asyncio.get_running_loop().run_in_executor(
            None,
            _wait_until,
            lambda: [g for _, _, g in _holders(admin, name)] == [True, False]
            or [g for _, _, g in _holders(admin, name)] == [False, True],
            "the waiter to queue in the server",
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not b.locked
        await asyncio.get_running_loop().run_in_executor(
            None,
            _wait_until,
            lambda: len(_holders(admin, name)) == 1,
            "the cancelled wait to leave the server's queue",
        )
        a.release()
        async with b:
            assert b.held_by_me and b.token is not None
        with pytest.raises(LockTimeout):
            a.acquire_nowait()
            try:
                await b.acquire_async(timeout=0.2)
            finally:
                a.release()

    try:
        asyncio.run(main())
        assert _holders(admin, name) == []
    finally:
        a.close()
        b.close()


def test_fork_child_never_releases_parent_lock(url: str, name: str, admin: Any) -> None:
    """A forked child that exits a with-block entered by the parent leaves the parent's lock."""
    from racefree import PgLock

    lock = PgLock(url, name)
    try:
        with lock:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 0
                try:
                    lock.release()  # forgets the inherited hold, sends nothing
                    if lock.locked:
                        code = 2
                except BaseException:
                    code = 3
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert [g for _, _, g in _holders(admin, name)] == [True]
            assert lock.lost is False
        assert _holders(admin, name) == []
    finally:
        lock.close()


def test_tasks_and_threads_sharing_one_instance_exclude(url: str, name: str) -> None:
    """4 asyncio tasks and 2 threads x 30 read-modify-writes with a switch inside: exact count."""
    from racefree import PgLock

    lock = PgLock(url, name, timeout=WAIT)
    box = {"n": 0, "inside": 0, "overlap": 0}

    def enter() -> int:
        box["inside"] += 1
        if box["inside"] != 1:
            box["overlap"] += 1
        return box["n"]

    def leave(n: int) -> None:
        box["n"] = n + 1
        box["inside"] -= 1

    async def task() -> None:
        for _ in range(30):
            async with lock:
                n = enter()
                await asyncio.sleep(0)  # every other task gets a chance to barge in
                leave(n)

    async def tasks() -> None:
        await asyncio.gather(*(task() for _ in range(4)))

    def thread() -> None:
        for _ in range(30):
            with lock:
                n = enter()
                time.sleep(0)
                leave(n)

    threads = [threading.Thread(target=thread) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        asyncio.run(tasks())
        for t in threads:
            t.join(WAIT * 2)
        assert box == {"n": 180, "inside": 0, "overlap": 0}
    finally:
        lock.close()


def test_unreachable_server_raises_connection_lost_and_holds_nothing() -> None:
    """acquire() against a closed port: ConnectionLost (no password shown), nothing held."""
    from racefree import ConnectionLost, PgLock

    lock = PgLock("postgresql://u:secret@127.0.0.1:1/db", "n", connect_timeout=2)
    with pytest.raises(ConnectionLost) as info:
        lock.acquire(timeout=5)
    assert "secret" not in str(info.value) and "127.0.0.1:1" in str(info.value)
    assert not lock.locked and lock.token is None
    with pytest.raises(ConnectionLost):
        lock.acquire_nowait()
    lock.close()


def test_tokens_follow_grant_order(url: str, name: str, admin: Any) -> None:
    """A waiter's token is drawn when it is granted: larger than one drawn while it waited."""
    from racefree import PgLock

    a, b, other = PgLock(url, name), PgLock(url, name), PgLock(url, name + "-other")
    got: dict[str, int] = {}
    try:
        a.acquire()

        def wait_for_it() -> None:
            b.acquire(timeout=WAIT)
            got["b"] = int(b.token or 0)
            b.release()

        t = threading.Thread(target=wait_for_it)
        t.start()
        _wait_until(lambda: len(_holders(admin, name)) == 2, "b to queue in the server")
        with other:
            got["other"] = int(other.token or 0)
        a.release()
        t.join(WAIT)
        assert got["b"] > got["other"] > 0
    finally:
        for lock in (a, b, other):
            lock.close()


@pytest.mark.parametrize("first", ["join", "release"])
def test_lost_shared_session_is_not_joined_and_every_reader_is_told(
    url: str, name: str, admin: Any, first: str
) -> None:
    """The server ended the readers' session while two readers of one instance held it.

    A writer may then take the lock, so a third reader must not join the lost hold
    (it would hold beside the writer), and each reader is told at its release (L8),
    not only the last one, whichever comes first.
    """
    from concurrent.futures import ThreadPoolExecutor

    from racefree import PgLock

    readers, writer = PgLock(url, name, shared=True), PgLock(url, name)
    other, third = ThreadPoolExecutor(max_workers=1), ThreadPoolExecutor(max_workers=1)
    try:
        readers.acquire()
        other.submit(readers.acquire_nowait).result(WAIT)  # joins the live hold
        sock = readers._session.conn.pgconn.socket
        (pid, _, _), = _holders(admin, name)
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # The barrier: the server's goodbye has reached the readers' socket.
        _wait_until(lambda: select.select([sock], [], [], 0)[0], "the session's end")
        writer.acquire(timeout=WAIT)  # free in the server now
        steps = ["join", "release"] if first == "join" else ["release", "join"]
        for step in steps:
            if step == "join":
                with pytest.raises(WouldBlock):
                    third.submit(readers.acquire_nowait).result(WAIT)
            else:
                with pytest.raises(LockLost):
                    other.submit(readers.release).result(WAIT)
        with pytest.raises(LockLost):
            readers.release()
        assert not readers.locked and readers.lost is True
        writer.release()
        readers.acquire(timeout=WAIT)  # a new session
        assert readers.lost is False and [m for _, m, _ in _holders(admin, name)] == ["ShareLock"]
        readers.release()
    finally:
        other.shutdown()
        third.shutdown()
        readers.close()
        writer.close()


def test_a_timeout_longer_than_the_servers_limit_is_accepted(url: str, name: str) -> None:
    """acquire(timeout=35 days) takes a free lock: the server's lock_timeout (an int of ms,
    at most about 24.8 days) is capped instead of failing with InvalidParameterValue."""
    from racefree import PgLock

    lock = PgLock(url, name)
    try:
        lock.acquire(timeout=35 * 86400.0)
        assert lock.held_by_me and lock.token is not None
        lock.release()
        assert not lock.locked
    finally:
        lock.close()


def test_interrupted_release_leaves_no_lock_in_the_server(url: str, name: str, admin: Any) -> None:
    """KeyboardInterrupt in the middle of release (before the unlock reached the server): the
    session is closed, so the server does not keep the lock for a holder that no longer is."""
    from racefree import PgLock

    a, b = PgLock(url, name), PgLock(url, name)
    try:
        a.acquire()
        conn = a._session.conn

        def interrupted(*args: Any, **kwargs: Any) -> Any:
            raise KeyboardInterrupt

        conn.execute = interrupted  # the unlock statement is interrupted before it is sent
        with pytest.raises(KeyboardInterrupt):
            a.release()
        assert not a.locked
        _wait_until(lambda: _holders(admin, name) == [], "the server to drop the lock")
        b.acquire_nowait()
        assert b.held_by_me
        b.release()
    finally:
        a.close()
        b.close()
