"""FileLock: the API, reentrancy, owners, timeouts, cancellation, fork, kill -9, L1-L5, L9.

The generic exclusion contract (threads, tasks, processes, mixed) is in
test_lock_contract.py; this file checks everything else FileLock promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.lock_contract import Holder, try_in_child
from helpers.lock_contract import in_thread as _in_thread
from helpers.testkit import check_bad_timeouts

import racefree
from racefree import FileLock, LockTimeout, WouldBlock, _fs

pytestmark = pytest.mark.timeout(120)


def _state(lock: FileLock) -> str:
    """What another thread of this process sees: "free" or "busy"."""
    def probe() -> str:
        try:
            lock.acquire_nowait()
        except WouldBlock:
            return "busy"
        lock.release()
        return "free"

    return str(_in_thread(probe))


# -- basics ---------------------------------------------------------------

def test_lock_file_created_with_umask_mode_and_kept(tmp_path: Path) -> None:
    """The lock file is created 0o666 & ~umask on first acquire and never deleted (L1)."""
    path = tmp_path / "x.lock"
    old = os.umask(0o027)
    try:
        lock = FileLock(path)
        assert not path.exists()  # nothing happens before the lock is used
        with lock:
            ino = path.stat().st_ino
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    del lock
    with FileLock(path):
        pass
    assert path.stat().st_ino == ino
    assert path.read_bytes() == b""


def test_with_acquire_release_and_properties(tmp_path: Path) -> None:
    """`with` holds the lock inside and releases it after; properties report it."""
    lock = FileLock(tmp_path / "x.lock", timeout=3)
    assert (lock.path, lock.shared, lock.timeout) == (str(tmp_path / "x.lock"), False, 3.0)
    assert not lock.locked and not lock.held_by_me
    with lock as same:
        assert same is lock
        assert lock.locked and lock.held_by_me
        assert _in_thread(lambda: (lock.locked, lock.held_by_me)) == (True, False)
        assert _state(lock) == "busy"
    assert not lock.locked
    assert _state(lock) == "free"
    lock.acquire()
    lock.release()
    assert "exclusive" in repr(lock)


def test_reentrant_for_the_same_owner(tmp_path: Path) -> None:
    """Three acquires need three releases; a fourth release is an error."""
    lock = FileLock(tmp_path / "x.lock")
    for _ in range(3):
        lock.acquire()
    for _ in range(2):
        lock.release()
        assert lock.held_by_me
        assert _state(lock) == "busy"
        assert try_in_child(tmp_path / "x.lock", 0) == "timeout"
    lock.release()
    assert not lock.locked
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()


def test_release_by_another_thread_is_an_error(tmp_path: Path) -> None:
    """Only the owner releases: another thread's release raises and the hold stays."""
    lock = FileLock(tmp_path / "x.lock")
    with lock:
        with pytest.raises(RuntimeError, match="not held"):
            _in_thread(lock.release)
        assert lock.held_by_me


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan])
def test_bad_timeouts_rejected(tmp_path: Path, bad: float) -> None:
    """A negative or NaN timeout is a ValueError, in the constructor and in acquire(_async)."""
    check_bad_timeouts(functools.partial(FileLock, tmp_path / "x.lock"), bad)


def test_infinite_timeout_means_wait_forever(tmp_path: Path) -> None:
    """`timeout=math.inf` is accepted and stored as None (wait forever)."""
    assert FileLock(tmp_path / "x.lock", timeout=math.inf).timeout is None


# -- timeouts and nowait -------------------------------------------------------

def test_nowait_and_timeout_between_threads(tmp_path: Path) -> None:
    """Another thread gets WouldBlock / LockTimeout and holds nothing afterwards."""
    lock = FileLock(tmp_path / "x.lock")
    with lock:
        with pytest.raises(WouldBlock):
            _in_thread(lock.acquire_nowait)
        with pytest.raises(LockTimeout) as info:
            _in_thread(lock.acquire, 0.05)
        assert isinstance(info.value, TimeoutError)
        assert info.value.path == str(tmp_path / "x.lock")
        with pytest.raises(LockTimeout):
            _in_thread(lock.acquire, 0)
    assert not lock.locked
    assert _state(lock) == "free"


def test_constructor_timeout_is_the_default(tmp_path: Path) -> None:
    """`FileLock(timeout=t)`: acquire() without a timeout gives up after t."""
    path = tmp_path / "x.lock"
    with Holder(path):
        with pytest.raises(LockTimeout) as info:
            FileLock(path, timeout=0.05).acquire()
        assert info.value.timeout == 0.05


def test_timeout_against_a_process_leaves_nothing_held(tmp_path: Path) -> None:
    """A timed-out wait on another process holds nothing, even after that process releases.

    The kernel wait runs in a worker thread; when the holder releases later, the
    abandoned worker gets the lock and must hand it straight back.
    """
    path = tmp_path / "x.lock"
    lock = FileLock(path)
    with Holder(path) as holder:
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.1)
        with pytest.raises(WouldBlock):
            lock.acquire_nowait()
        assert not lock.locked
        holder.release()
        # a fresh process gets it: the abandoned worker gave it back
        assert try_in_child(path, 30) == "acquired"
    lock.acquire(timeout=30)
    lock.release()


def test_retry_loop_with_short_timeouts_reuses_one_worker(tmp_path: Path) -> None:
    """20 timed-out attempts against another process leave at most one waiting worker."""
    path = tmp_path / "x.lock"
    lock = FileLock(path)

    def workers() -> int:
        return sum(t.name == "racefree-lock-wait" for t in threading.enumerate())

    before = workers()
    with Holder(path) as holder:
        for _ in range(20):
            with pytest.raises(LockTimeout):
                lock.acquire(timeout=0.001)
        assert workers() <= before + 1
        holder.release()
        lock.acquire(timeout=30)  # the adopted wait (or a new one) gets it
        assert lock.held_by_me
        lock.release()
    assert try_in_child(path, 30) == "acquired"


def test_acquire_nowait_against_a_process(tmp_path: Path) -> None:
    """acquire_nowait raises WouldBlock while another process holds the lock."""
    path = tmp_path / "x.lock"
    lock = FileLock(path)
    with Holder(path) as holder:
        with pytest.raises(WouldBlock):
            lock.acquire_nowait()
        holder.release()
        lock.acquire_nowait()
        assert lock.held_by_me
        lock.release()


# -- L2: two instances, one path ----------------------------------------------------

def test_two_instances_exclude_each_other(tmp_path: Path) -> None:
    """Two FileLock objects on one path exclude each other across threads (L2)."""
    a, b = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    with a:
        assert b.locked
        with pytest.raises(WouldBlock):
            _in_thread(b.acquire_nowait)


def test_releasing_one_instance_keeps_the_others_kernel_lock(tmp_path: Path) -> None:
    """Two instances held by one thread: releasing one keeps the kernel lock (fasteners #93)."""
    path = tmp_path / "x.lock"
    a, b = FileLock(path), FileLock(path)
    a.acquire()
    b.acquire()
    b.release()
    assert try_in_child(path, 0) == "timeout"
    del b  # garbage-collecting an instance must not close the held descriptor
    import gc

    gc.collect()
    FileLock(path).acquire_nowait()  # same owner: reentrant; binds and reaps
    FileLock(path).release()
    assert try_in_child(path, 0) == "timeout"
    a.release()
    assert try_in_child(path, 10) == "acquired"


def test_same_file_through_another_name_is_one_lock(tmp_path: Path) -> None:
    """Instances are keyed by the file (device, inode), not by the spelling of the path:
    a hard link, or the same name through a linked directory, is the same lock."""
    (tmp_path / "x.lock").touch()
    os.link(tmp_path / "x.lock", tmp_path / "alias.lock")
    (tmp_path / "linked").symlink_to(tmp_path)
    a, b = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "alias.lock")
    c = FileLock(tmp_path / "linked" / "x.lock")
    with a:
        with pytest.raises(WouldBlock):
            _in_thread(b.acquire_nowait)
        with pytest.raises(WouldBlock):
            _in_thread(c.acquire_nowait)


def test_lock_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """The lock file itself is never opened through a link, even the caller's own
    (filelock CVE-2025-68146): UnsafePathError, and the link's target is not created."""
    (tmp_path / "alias.lock").symlink_to(tmp_path / "target")
    lock = FileLock(tmp_path / "alias.lock")
    with pytest.raises(racefree.UnsafePathError, match="symbolic link"):
        lock.acquire(timeout=0)
    assert sorted(os.listdir(tmp_path)) == ["alias.lock"]


# -- L3: one instance, many owners ----------------------------------------------------

def test_one_instance_shared_by_five_threads(tmp_path: Path) -> None:
    """5 threads sharing one instance: never more than one inside (portalocker: all 3 were)."""
    lock = FileLock(tmp_path / "x.lock")
    inside = 0
    peak = 0
    total = 0
    start = threading.Barrier(5)

    def worker() -> None:
        nonlocal inside, peak, total
        start.wait()
        for _ in range(200):
            with lock:
                inside += 1
                peak = max(peak, inside)
                time.sleep(0)
                total += 1
                inside -= 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert (peak, total, inside) == (1, 1000, 0)


def test_one_instance_shared_by_five_tasks(tmp_path: Path) -> None:
    """5 tasks sharing one instance: one inside at a time (filelock's AsyncFileLock: all 5)."""
    lock = FileLock(tmp_path / "x.lock")

    async def main() -> tuple[int, int]:
        inside = peak = total = 0

        async def worker() -> None:
            nonlocal inside, peak, total
            for _ in range(50):
                async with lock:
                    inside += 1
                    peak = max(peak, inside)
                    await asyncio.sleep(0)
                    total += 1
                    inside -= 1

        await asyncio.gather(*(worker() for _ in range(5)))
        return peak, total

    assert asyncio.run(main()) == (1, 250)
    assert not lock.locked


def test_task_owner_is_the_task_not_the_thread(tmp_path: Path) -> None:
    """Two tasks on one thread are two owners; a task's own nested acquire is reentrant."""
    lock = FileLock(tmp_path / "x.lock")

    async def main() -> list[str]:
        seen = []

        async def other() -> None:
            try:
                lock.acquire_nowait()
            except WouldBlock:
                seen.append("other: blocked")
            else:
                lock.release()
                seen.append("other: got it")

        async with lock:
            async with lock:
                seen.append(f"nested: {lock.held_by_me}")
            await asyncio.create_task(other())
        await asyncio.create_task(other())
        return seen

    assert asyncio.run(main()) == ["nested: True", "other: blocked", "other: got it"]


# -- asyncio -------------------------------------------------------------------

def test_async_waiting_does_not_block_the_loop(tmp_path: Path) -> None:
    """While a task waits for another process, other tasks run; then it gets the lock."""
    path = tmp_path / "x.lock"
    lock = FileLock(path)

    async def take() -> bool:
        await lock.acquire_async(timeout=60)
        mine = lock.held_by_me
        lock.release()
        return mine

    async def main(holder: Holder) -> int:
        waiter = asyncio.create_task(take())
        ticks = 0
        for _ in range(100):
            await asyncio.sleep(0)
            ticks += 1
        assert not waiter.done()
        await asyncio.get_running_loop().run_in_executor(None, holder.release)
        assert await asyncio.wait_for(waiter, 60) is True
        return ticks

    with Holder(path) as holder:
        assert asyncio.run(main(holder)) == 100


def test_cancel_while_waiting_in_process_leaves_nothing_held(tmp_path: Path) -> None:
    """A task cancelled while waiting for another task holds nothing (L9)."""
    lock = FileLock(tmp_path / "x.lock")

    async def main() -> None:
        await lock.acquire_async()
        waiter = asyncio.create_task(lock.acquire_async())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        lock.release()
        assert not lock.locked
        async with lock:  # and the lock still works
            assert lock.held_by_me

    asyncio.run(main())
    assert _state(lock) == "free"


def test_cancel_while_waiting_for_a_process_leaves_nothing_held(tmp_path: Path) -> None:
    """A task cancelled while waiting in the kernel: once the holder leaves, nobody holds it."""
    path = tmp_path / "x.lock"
    lock = FileLock(path)

    async def main() -> None:
        waiter = asyncio.create_task(lock.acquire_async())
        for _ in range(10):
            await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not lock.locked

    with Holder(path) as holder:
        asyncio.run(main())
        holder.release()
        assert try_in_child(path, 30) == "acquired"


def test_async_timeout_leaves_nothing_held(tmp_path: Path) -> None:
    """acquire_async(timeout) raises LockTimeout; the late kernel grant is handed back."""
    path = tmp_path / "x.lock"
    lock = FileLock(path)

    async def main() -> None:
        with pytest.raises(LockTimeout):
            await lock.acquire_async(timeout=0.05)
        with pytest.raises(LockTimeout):
            await lock.acquire_async(timeout=0)
        assert not lock.locked

    with Holder(path) as holder:
        asyncio.run(main())
        holder.release()
        assert try_in_child(path, 30) == "acquired"


def _sync_acquire(lock: FileLock, timeout: float) -> None:
    """Synchronous library code that takes the lock, called from a task."""
    lock.acquire(timeout=timeout)


def test_blocking_acquire_behind_a_task_of_the_same_loop_raises(tmp_path: Path) -> None:
    """A sync acquire() in a task, behind another task of its loop, raises instead of hanging."""
    lock = FileLock(tmp_path / "x.lock")

    async def main() -> None:
        async with lock:
            async def other() -> None:
                with pytest.raises(RuntimeError, match="deadlock"):
                    _sync_acquire(lock, 5)

            await asyncio.create_task(other())
        assert not lock.locked

    asyncio.run(main())


def test_blocking_acquire_behind_a_task_waiting_in_the_kernel_raises(tmp_path: Path) -> None:
    """A sync acquire() behind a task of its loop that waits for another process raises."""
    path = tmp_path / "x.lock"
    lock = FileLock(path)

    async def main(holder: Holder) -> None:
        waiter = asyncio.create_task(lock.acquire_async(timeout=60))
        entry = lock._get_entry()
        while not entry.busy:  # the task is in its kernel wait (a state, not a sleep)
            await asyncio.sleep(0.001)

        async def other() -> None:
            with pytest.raises(RuntimeError, match="deadlock"):
                _sync_acquire(lock, 5)

        await asyncio.create_task(other())
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    with Holder(path) as holder:
        asyncio.run(main(holder))
        holder.release()
        assert try_in_child(path, 30) == "acquired"


def test_async_timeout_waiting_for_a_task(tmp_path: Path) -> None:
    """acquire_async(timeout) against another task of the loop times out, holding nothing."""
    lock = FileLock(tmp_path / "x.lock")

    async def main() -> None:
        async with lock:
            with pytest.raises(LockTimeout):
                await asyncio.create_task(lock.acquire_async(timeout=0.05))
        assert not lock.locked

    asyncio.run(main())


def test_thread_and_task_waiters_wake_each_other(tmp_path: Path) -> None:
    """A thread's release wakes a waiting task, and a task's release wakes a waiting thread."""
    lock = FileLock(tmp_path / "x.lock")
    entry = lock._get_entry()
    held = threading.Event()
    go = threading.Event()
    got: list[bool] = []

    def thread_holder() -> None:
        with lock:
            held.set()
            go.wait(60)

    def thread_waiter() -> None:
        lock.acquire(timeout=60)
        got.append(lock.held_by_me)
        lock.release()

    t1 = threading.Thread(target=thread_holder, daemon=True)
    t2 = threading.Thread(target=thread_waiter, daemon=True)

    async def task() -> None:
        await lock.acquire_async(timeout=60)  # woken by t1's release
        t2.start()
        while not entry.waiters:  # t2 is queued behind this task (a state, not a sleep)
            await asyncio.sleep(0.001)
        lock.release()  # wakes t2

    async def main() -> None:
        t1.start()
        await asyncio.get_running_loop().run_in_executor(None, held.wait, 60)
        waiter = asyncio.create_task(task())
        while not entry.waiters:  # the task is queued behind t1
            await asyncio.sleep(0.001)
        go.set()
        await asyncio.wait_for(waiter, 60)
        await asyncio.get_running_loop().run_in_executor(None, t2.join, 60)

    try:
        asyncio.run(main())
    finally:
        go.set()
        t1.join(60)
    assert got == [True]
    assert not lock.locked


# -- shared (reader) locks ------------------------------------------------------------

def test_readers_share_writers_exclude(tmp_path: Path) -> None:
    """Two readers hold at once (threads and processes); a writer waits for both."""
    path = tmp_path / "x.lock"
    reader = FileLock(path, shared=True)
    writer = FileLock(path)
    second_holds = threading.Event()
    done = threading.Event()

    def second_reader() -> None:
        with reader:
            second_holds.set()
            done.wait(60)

    t = threading.Thread(target=second_reader, daemon=True)
    try:
        with reader:
            t.start()
            assert second_holds.wait(60)  # a second reader, another thread, at once
            assert try_in_child(path, 0, shared=True) == "acquired"
            assert try_in_child(path, 0) == "timeout"
            with pytest.raises(WouldBlock):
                _in_thread(writer.acquire_nowait)
        # the other thread's reader hold is still there
        with pytest.raises(WouldBlock):
            _in_thread(writer.acquire_nowait)
        assert try_in_child(path, 0) == "timeout"
    finally:
        done.set()
        t.join(60)
    assert try_in_child(path, 10) == "acquired"


def test_writer_excludes_readers_across_processes(tmp_path: Path) -> None:
    """A writer in another process keeps readers out until it releases."""
    path = tmp_path / "x.lock"
    reader = FileLock(path, shared=True)
    with Holder(path) as holder:
        with pytest.raises(WouldBlock):
            reader.acquire_nowait()
        holder.release()
        with reader:
            assert try_in_child(path, 0, shared=True) == "acquired"


def test_shared_cannot_upgrade_but_exclusive_can_nest_shared(tmp_path: Path) -> None:
    """A reader asking for the write lock gets RuntimeError; a writer may take a read hold."""
    path = tmp_path / "x.lock"
    reader, writer = FileLock(path, shared=True), FileLock(path)
    with reader, pytest.raises(RuntimeError, match="upgrade"):
        writer.acquire()
    with writer, reader:
        assert try_in_child(path, 0, shared=True) == "timeout"
    assert not writer.locked


def test_waiting_writer_is_not_starved_by_new_readers(tmp_path: Path) -> None:
    """Once a writer of this process waits, new readers of this process queue behind it."""
    path = tmp_path / "x.lock"
    reader, writer = FileLock(path, shared=True), FileLock(path)
    waiting = threading.Event()
    order: list[str] = []

    def write() -> None:
        waiting.set()
        with writer:
            order.append("writer")

    with reader:
        t = threading.Thread(target=write, daemon=True)
        t.start()
        waiting.wait(60)
        entry = reader._get_entry()
        while entry.writers_waiting == 0:  # the writer is queued (a state, not a sleep)
            time.sleep(0.001)
        with pytest.raises(WouldBlock):
            _in_thread(reader.acquire_nowait)
    t.join(60)
    assert order == ["writer"]


# -- fork (L5) ---------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")
def test_fork_child_never_releases_the_parents_lock(tmp_path: Path) -> None:
    """A child forked while the parent holds: it holds nothing, its release is a no-op,
    it cannot take the lock while the parent holds it, and it can once the parent releases.
    """
    path = tmp_path / "x.lock"
    lock = FileLock(path)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    lock.acquire()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(w)
            os.close(r2)
            ok = not lock.locked and not lock.held_by_me
            lock.release()  # the parent's hold, inherited: forgotten, not unlocked
            try:
                FileLock(path).acquire_nowait()
                ok = False
            except WouldBlock:
                pass
            os.write(w2, b"1" if ok else b"0")
            os.read(r, 1)  # the parent released
            lock.acquire(timeout=30)
            ok = ok and lock.held_by_me
            lock.release()
            code = 0 if ok else 3
        finally:
            os._exit(code)
    try:
        os.close(r)
        os.close(w2)
        assert os.read(r2, 1) == b"1"
        # the parent still holds the lock, kernel included
        assert lock.held_by_me
        assert try_in_child(path, 0) == "timeout"
        lock.release()
        os.write(w, b"x")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(w)
        os.close(r2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")
def test_fork_child_exiting_a_with_block_keeps_the_parents_lock(tmp_path: Path) -> None:
    """`with lock: fork()`: the child leaving the block keeps the parent's lock (#634)."""
    path = tmp_path / "x.lock"
    lock = FileLock(path)
    with lock:
        pid = os.fork()
        if pid == 0:
            code = 4
            try:
                lock.__exit__(None, None, None)  # what leaving the inherited block does
                try:
                    FileLock(path).acquire_nowait()
                except WouldBlock:
                    code = 5
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 5
        assert lock.held_by_me
        assert try_in_child(path, 0) == "timeout"
    assert try_in_child(path, 10) == "acquired"


# -- L1: the lock file is never unlinked -----------------------------------------

class _Recording(_fs.FileSystem):
    """The real file system, recording the name of every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name not in _fs.OPS:
            return attr
        calls = super().__getattribute__("calls")

        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return attr(*args, **kwargs)

        return record


def test_no_unlink_or_rename_through_the_seam(tmp_path: Path) -> None:
    """A whole lock life (create, contend, time out, release, collect) never unlinks (L1)."""
    fake = _Recording()
    path = tmp_path / "x.lock"
    with _fs.use(fake):
        lock = FileLock(path)
        with lock, pytest.raises(LockTimeout):
            _in_thread(FileLock(path).acquire, 0.01)
        with FileLock(path, shared=True):
            pass
        del lock
    assert fake.calls, "the fake seam saw no call"
    assert {"unlink", "replace", "rmdir"}.isdisjoint(fake.calls)
    assert "flock" in fake.calls
    assert path.exists()


@pytest.mark.slow
def test_unlink_race_waiter_and_newcomer_never_both_hold(tmp_path: Path) -> None:
    """The L1 race: holder releases while one process waits and a newcomer arrives.

    With peers that delete the lock file on release, the waiter locks the old
    inode and the newcomer a new one: both "hold". Here the waiter takes it, the
    newcomer is refused while it holds, and the lock file keeps its inode.
    """
    path = tmp_path / "x.lock"
    with Holder(path) as first:
        ino = path.stat().st_ino
        waiter = subprocess.Popen(
            [sys.executable, "-c", (
                "import sys, racefree\n"
                "lock = racefree.FileLock(sys.argv[1])\n"
                "print('waiting', flush=True)\n"
                "lock.acquire(timeout=60)\n"
                "print('held', flush=True)\n"
                "sys.stdin.readline()\n"
            ), str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert waiter.stdout is not None and waiter.stdin is not None
            assert waiter.stdout.readline().strip() == "waiting"
            first.release()
            assert waiter.stdout.readline().strip() == "held"
            assert path.stat().st_ino == ino
            assert try_in_child(path, 0) == "timeout"  # the newcomer
            waiter.stdin.write("\n")
            waiter.stdin.close()
            assert waiter.wait(30) == 0
        finally:
            if waiter.poll() is None:
                waiter.kill()
            waiter.wait()
    assert path.stat().st_ino == ino
    assert try_in_child(path, 10) == "acquired"


def test_relative_path_is_fixed_at_construction(tmp_path: Path, monkeypatch: Any) -> None:
    """A relative path is resolved when the lock is made, not after a later chdir."""
    monkeypatch.chdir(tmp_path)
    lock = FileLock("rel.lock")
    assert lock.path == str(tmp_path / "rel.lock")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with lock:
        pass
    assert (tmp_path / "rel.lock").exists()
    assert not (tmp_path / "elsewhere" / "rel.lock").exists()


def test_pickles_as_its_arguments(tmp_path: Path) -> None:
    """A pickled lock (multiprocessing) keeps path, mode and timeout; the copy holds nothing."""
    import pickle

    lock = FileLock(tmp_path / "x.lock", shared=True, timeout=2.5)
    with lock:
        copy = pickle.loads(pickle.dumps(lock))
        assert (copy.path, copy.shared, copy.timeout) == (lock.path, True, 2.5)
        assert copy.locked  # same file, same process: the same state
        assert not _in_thread(lambda: copy.held_by_me)


def test_idle_lock_files_are_closed(tmp_path: Path) -> None:
    """Descriptors of lock files no instance refers to are closed (no fd leak per file)."""
    import gc

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    warm = FileLock(tmp_path / "warm.lock")
    gc.collect()
    with warm:  # binding reaps what earlier tests left; warm's entry stays open
        pass
    before = open_fds()
    for i in range(50):
        with FileLock(tmp_path / f"{i}.lock"):
            pass
    gc.collect()
    again = FileLock(tmp_path / "warm.lock")
    with again:  # binding reaps the 50 collected entries; "again" shares warm's entry
        assert open_fds() == before
    del warm


def test_kernel_errors_propagate_and_leave_nothing_held(tmp_path: Path) -> None:
    """An flock error (ENOLCK, as on some NFS mounts) is raised; the lock stays usable."""
    import errno

    class NoLocks(_fs.FileSystem):
        def flock(self, fd: int, op: int) -> None:
            raise OSError(errno.ENOLCK, "No locks available")

    lock = FileLock(tmp_path / "x.lock")
    with _fs.use(NoLocks()), pytest.raises(OSError) as info:
        lock.acquire()
    assert info.value.errno == errno.ENOLCK
    assert not lock.locked
    entry = lock._get_entry()
    assert (entry.busy, entry.holders, entry.waiters) == (False, {}, [])
    with lock:
        assert lock.held_by_me


def test_public_name() -> None:
    """FileLock is re-exported from racefree."""
    assert racefree.FileLock is FileLock


# -- timeouts and cancellations racing grants ------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(180)
def test_chaos_timeouts_and_cancellations_never_break_exclusion(tmp_path: Path) -> None:
    """Threads with tiny timeouts and tasks cancelled at random, against another process.

    Every success is checked with the O_EXCL inside flag and counted; abandoned
    kernel waits race real grants. At the end the counter is exact and the lock
    is free for a new process (no late grant was kept).
    """
    import json
    import random

    from helpers import lock_contract

    lock_path = str(tmp_path / "the.lock")
    workdir = tmp_path / "work"
    workdir.mkdir()
    wl = lock_contract.Workload(spec="filelock", threads=1, iterations=150)
    child = subprocess.Popen(
        [sys.executable, lock_contract.__file__, json.dumps(vars(wl)), lock_path,
         str(workdir), "p0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    body = lock_contract._Body(workdir)
    lock = FileLock(lock_path)
    done = {"ok": 0}
    count_lock = threading.Lock()

    def critical(me: str) -> None:
        body.enter(True, me)
        body.bump()
        body.leave(True, None)
        with count_lock:
            done["ok"] += 1

    def thread_worker(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(150):
            try:
                lock.acquire(timeout=rnd.choice([0, 0.0002, 0.001, 0.005, None]))
            except LockTimeout:
                continue
            try:
                critical(f"t{seed}")
            finally:
                lock.release()

    async def one_round(me: str, timeout: float | None) -> None:
        try:
            await lock.acquire_async(timeout=timeout)
        except LockTimeout:
            return
        try:
            critical(me)
            await asyncio.sleep(0)
        finally:
            lock.release()

    async def task_worker(seed: int) -> None:
        rnd = random.Random(seed)
        loop = asyncio.get_running_loop()
        for _ in range(100):
            task = asyncio.create_task(
                one_round(f"a{seed}", rnd.choice([0, 0.001, None]))
            )
            if rnd.random() < 0.5:  # cancel it at a random point: waiting, or inside
                loop.call_later(rnd.choice([0, 0.0001, 0.001]), task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tasks() -> None:
        await asyncio.gather(*(task_worker(100 + i) for i in range(3)))

    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.close()
        child.stdin = None
        threads = [
            threading.Thread(target=thread_worker, args=(i,), daemon=True) for i in range(3)
        ]
        for t in threads:
            t.start()
        asyncio.run(tasks())
        for t in threads:
            t.join(120)
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    result = json.loads(out)
    assert result["violations"] == [] and body.violations == []
    assert int((workdir / "counter").read_text()) == done["ok"] + 150
    assert not lock.locked
    entry = lock._get_entry()
    assert (entry.busy, entry.writers_waiting, entry.waiters) == (False, 0, [])
    assert try_in_child(lock_path, 30) == "acquired"
