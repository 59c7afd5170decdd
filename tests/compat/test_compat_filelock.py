"""racefree.compat.filelock: filelock's idioms, run against filelock itself and the compat module.

A test parametrized with ``mod`` runs the same code on the real filelock and on
``racefree.compat.filelock`` and expects the same outcome: that is what "change
the import line" promises. The tests after those check where racefree differs
on purpose (see the module's docstring).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pickle
import stat
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers.lock_contract import in_thread
from helpers.peers import PeerHolder, peer_try

import racefree
from racefree.compat import filelock as compat

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["filelock", "racefree.compat.filelock"])
def mod(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def _kind(mod: ModuleType, name: str) -> str:
    return f"{'compat' if mod is compat else 'filelock'}.{name}"


# -- the idioms, on both ----------------------------------------------------------------

def test_positional_timeout_and_setter(mod: ModuleType, tmp_path: Path) -> None:
    lock = mod.FileLock(tmp_path / "x.lock", 10)
    assert lock.timeout == 10.0
    lock.timeout = 3
    assert lock.timeout == 3.0
    assert mod.FileLock(tmp_path / "y.lock").timeout == -1


def test_with_acquire_holds_then_releases(mod: ModuleType, tmp_path: Path) -> None:
    """``with lock.acquire(timeout=5) as l:``: ``l`` is the lock, held in the block only."""
    path = tmp_path / "x.lock"
    lock = mod.FileLock(path)
    with lock.acquire(timeout=5) as entered:
        assert entered is lock
        assert (lock.is_locked, lock.lock_counter) == (True, 1)
        assert peer_try(_kind(mod, "FileLock"), path, 0.1) == "timeout"
    assert (lock.is_locked, lock.lock_counter) == (False, 0)
    assert peer_try(_kind(mod, "FileLock"), path, 10) == "acquired"


def test_reentrant_counter_and_force(mod: ModuleType, tmp_path: Path) -> None:
    lock = mod.FileLock(tmp_path / "x.lock")
    lock.acquire()
    lock.acquire()
    assert lock.lock_counter == 2
    lock.release()
    assert (lock.lock_counter, lock.is_locked) == (1, True)
    lock.acquire()
    lock.release(force=True)
    assert (lock.lock_counter, lock.is_locked) == (0, False)


def test_release_of_an_unheld_lock_is_a_no_op(mod: ModuleType, tmp_path: Path) -> None:
    """So ``try: acquire() finally: release()`` shows the real Timeout."""
    path = tmp_path / "x.lock"
    lock = mod.FileLock(path)
    lock.release()
    with PeerHolder(_kind(mod, "FileLock"), path), pytest.raises(mod.Timeout) as info:
        try:
            lock.acquire(timeout=0.05)
        finally:
            lock.release()
    assert info.value.lock_file == os.fspath(path)
    assert isinstance(info.value, TimeoutError)
    assert str(info.value) == f"The file lock '{path}' could not be acquired."


def test_blocking_false_is_one_try(mod: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with PeerHolder(_kind(mod, "FileLock"), path) as held:
        with pytest.raises(mod.Timeout):
            mod.FileLock(path).acquire(blocking=False)
        with pytest.raises(mod.Timeout):
            mod.FileLock(path, blocking=False).acquire()
        held.release()
    lock = mod.FileLock(path, blocking=False)
    with lock:
        assert lock.is_locked


def test_minus_one_waits_until_released(mod: ModuleType, tmp_path: Path) -> None:
    """``timeout=-1`` (the default) waits for as long as it takes: here until the holder goes."""
    path = tmp_path / "x.lock"
    lock = mod.FileLock(path, timeout=-1)
    with PeerHolder(_kind(mod, "FileLock"), path) as held:
        started = threading.Event()
        result: list[bool] = []

        def wait() -> None:
            started.set()
            with lock:
                result.append(True)

        t = threading.Thread(target=wait)
        t.start()
        started.wait(30)
        assert not result  # it is waiting (the holder has not released)
        held.release()
        t.join(60)
    assert result == [True]


def test_poll_interval_accepted(mod: ModuleType, tmp_path: Path) -> None:
    lock = mod.FileLock(tmp_path / "x.lock", poll_interval=0.01)
    with lock.acquire(timeout=1, poll_interval=0.001):
        pass
    with pytest.raises(ValueError):
        lock.acquire(poll_interval=-1)


def test_context_decorator(mod: ModuleType, tmp_path: Path) -> None:
    lock = mod.FileLock(tmp_path / "x.lock")

    @lock
    def inside() -> bool:
        return bool(lock.is_locked)

    assert inside() is True
    assert not lock.is_locked


def test_missing_directories_and_mode(mod: ModuleType, tmp_path: Path) -> None:
    """filelock creates the directories, and applies an explicit ``mode`` exactly."""
    path = tmp_path / "a" / "b" / "x.lock"
    old = os.umask(0o022)
    try:
        with mod.FileLock(path, mode=0o660):
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        os.umask(old)
    assert path.exists()  # a kernel lock's file is never deleted


def test_timeout_pickles(mod: ModuleType) -> None:
    err = pickle.loads(pickle.dumps(mod.Timeout("/run/app.lock")))
    assert (type(err), err.lock_file, repr(err)) == (mod.Timeout, "/run/app.lock",
                                                     "Timeout('/run/app.lock')")


def test_a_timeout_subclass_taking_only_the_lock_file_pickles(mod: ModuleType) -> None:
    """A subclass with filelock's one-argument ``__init__`` (raised in a pool's worker, it
    is pickled back to the parent): it round-trips, path, timeout and message kept."""

    class JobLockTimeout(mod.Timeout):  # type: ignore[name-defined,misc]
        def __init__(self, lock_file: str) -> None:
            super().__init__(lock_file)

    globals()["JobLockTimeout"] = JobLockTimeout  # pickle finds the class by name
    JobLockTimeout.__qualname__ = "JobLockTimeout"
    try:
        err = pickle.loads(pickle.dumps(JobLockTimeout("/run/job.lock")))
    finally:
        del globals()["JobLockTimeout"]
    assert (type(err).__name__, err.lock_file, str(err)) == (
        "JobLockTimeout", "/run/job.lock", "The file lock '/run/job.lock' could not be acquired.")


def test_a_lock_timeout_pickles_with_its_timeout_and_message() -> None:
    """racefree's own ``LockTimeout``: path, timeout and message survive; with no timeout the
    message says none (not "after Nones")."""
    from racefree import LockTimeout

    err = pickle.loads(pickle.dumps(LockTimeout("/run/a.lock", 2.5)))
    assert (err.path, err.timeout, str(err)) == (
        "/run/a.lock", 2.5, "timed out after 2.5s waiting for the lock on /run/a.lock")
    assert str(LockTimeout("/run/a.lock")) == "timed out waiting for the lock on /run/a.lock"


def test_soft_lock_file_exists_while_held(mod: ModuleType, tmp_path: Path) -> None:
    """A soft lock is a file that exists exactly while the lock is held."""
    path = tmp_path / "soft.lock"
    lock = mod.SoftFileLock(path, timeout=5)
    with lock:
        assert path.exists() and lock.is_locked
        assert peer_try(_kind(mod, "SoftFileLock"), path, 0.1) == "timeout"
    assert not path.exists()


def test_async_lock_idioms(mod: ModuleType, tmp_path: Path) -> None:
    """``async with``; ``await acquire()`` returns what ``async with`` releases; a busy
    ``blocking=False`` raises Timeout; ``await release()``.
    """
    path = tmp_path / "x.lock"

    async def main() -> list[Any]:
        lock = mod.AsyncFileLock(path)
        seen: list[Any] = []
        async with lock:
            seen.append(lock.is_locked)
        proxy = await lock.acquire(timeout=5)
        async with proxy as entered:
            seen.append((entered is lock, lock.lock_counter))
        seen.append(lock.is_locked)
        await lock.acquire()
        await lock.release()
        seen.append(lock.is_locked)
        return seen

    assert asyncio.run(main()) == [True, (True, 1), False, False]

    async def busy() -> None:
        await mod.AsyncFileLock(path).acquire(blocking=False)

    with PeerHolder(_kind(mod, "FileLock"), path), pytest.raises(mod.Timeout):
        asyncio.run(busy())


def test_async_lock_refuses_sync_with(mod: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError), mod.AsyncFileLock(tmp_path / "x.lock"):
        pass  # pragma: no cover


def test_read_write_lock_idioms(mod: ModuleType, tmp_path: Path) -> None:
    """Read and write holds; an owner changing mode gets RuntimeError; releasing nothing too."""
    lock = mod.ReadWriteLock(tmp_path / "rw.lock")
    with lock.read_lock():
        with lock.read_lock():
            pass
        with pytest.raises(RuntimeError):
            lock.acquire_write(timeout=0.1)
    with lock.write_lock(), pytest.raises(RuntimeError):
        lock.acquire_read(timeout=0.1)
    with lock.acquire_write(timeout=1):
        pass
    with pytest.raises(RuntimeError):
        lock.release()


# -- where racefree differs on purpose ------------------------------------------------------

def test_threads_sharing_an_instance_exclude_each_other(tmp_path: Path) -> None:
    """``thread_local=False``: filelock lets a second thread in; racefree keeps it out."""
    lock = compat.FileLock(tmp_path / "x.lock", thread_local=False)
    with lock:
        with pytest.raises(compat.Timeout):
            in_thread(lock.acquire, 0.05)
        assert lock.lock_counter == 1


def test_release_from_another_thread_is_refused(tmp_path: Path) -> None:
    """``thread_local=False``: only the owner releases; filelock would release for it."""
    lock = compat.FileLock(tmp_path / "x.lock", thread_local=False)
    with lock:
        with pytest.raises(RuntimeError, match="another thread or task holds it"):
            in_thread(lock.release)
        assert lock.is_locked


def test_thread_local_release_from_another_thread_is_a_no_op(tmp_path: Path) -> None:
    """The default (``thread_local=True``), as filelock: another thread holds nothing here."""
    lock = compat.FileLock(tmp_path / "x.lock")
    with lock:
        in_thread(lock.release)
        assert lock.is_locked
        assert in_thread(lambda: lock.is_locked) is False


def test_tasks_are_owners(tmp_path: Path) -> None:
    """Two tasks sharing one AsyncFileLock exclude each other (filelock's shares the hold)."""
    lock = compat.AsyncFileLock(tmp_path / "x.lock")

    async def main() -> None:
        async with lock:
            with pytest.raises(compat.Timeout):
                await asyncio.create_task(lock.acquire(timeout=0.05))
            assert lock.lock_counter == 1

    asyncio.run(main())


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for runs in the caller's task")
def test_lock_held_by_a_finished_task_is_reported(tmp_path: Path) -> None:
    """``asyncio.wait_for(lock.acquire(), t)`` takes the lock in a task of its own before 3.12;
    the release that follows cannot release it: it raises, saying why, instead of passing.
    """
    lock = compat.AsyncFileLock(tmp_path / "x.lock")

    async def main() -> None:
        await asyncio.wait_for(lock.acquire(), 5)
        with pytest.raises(RuntimeError, match="finished task"):
            await lock.release()

    asyncio.run(main())


def test_timeout_is_a_racefree_lock_timeout(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with PeerHolder("compat.FileLock", path), pytest.raises(racefree.LockTimeout):
        compat.FileLock(path).acquire(timeout=0.05)


def test_soft_lock_lifetime_is_the_lease(tmp_path: Path) -> None:
    lock = compat.SoftFileLock(tmp_path / "soft.lock", lifetime=12)
    assert lock._lock.stale_after == 12.0


def test_lifetime_on_a_kernel_lock_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="lifetime is ignored"):
        compat.FileLock(tmp_path / "x.lock", lifetime=5)


def test_read_write_lock_other_thread_waits(tmp_path: Path) -> None:
    """Another thread asking for a conflicting mode waits (filelock raises RuntimeError)."""
    lock = compat.ReadWriteLock(tmp_path / "rw.lock")
    with lock.read_lock():
        with pytest.raises(compat.Timeout):
            in_thread(lock.acquire_write, 0.05)
        in_thread(lambda: lock.acquire_read(timeout=1) and lock.release())
    with lock.write_lock(), pytest.raises(compat.Timeout):
        in_thread(lock.acquire_read, 0.05)


def test_read_write_lock_excludes_processes(tmp_path: Path) -> None:
    """A racefree writer in another process keeps this module's readers out."""
    path = tmp_path / "rw.lock"
    lock = compat.ReadWriteLock(path)
    with PeerHolder("racefree.FileLock", path) as held:
        with pytest.raises(compat.Timeout):
            lock.acquire_read(timeout=0.05)
        held.release()
    with lock.read_lock():
        assert peer_try("racefree.FileLock", path, 0.1) == "timeout"
        assert peer_try("racefree.FileLock-shared", path, 10) == "acquired"
