"""racefree.compat.fasteners: fasteners' idioms, run against fasteners itself and the compat module.

Tests parametrized with ``mod`` expect the same outcome from both; the others
check where racefree differs on purpose (see the module's docstring). Other
processes are always of the same library as the lock under test: the two do
not exclude each other (tests/compat/test_mixed_fleet.py).
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from types import ModuleType

import pytest
from helpers.lock_contract import in_thread
from helpers.peers import PeerHolder, peer_try

from racefree.compat import fasteners as compat

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["fasteners", "racefree.compat.fasteners"])
def mod(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def _kind(mod: ModuleType) -> str:
    return "compat.fasteners" if mod is compat else "fasteners"


def test_acquire_returns_a_bool(mod: ModuleType, tmp_path: Path) -> None:
    """``if lock.acquire(timeout=t):``: True when taken, False on timeout, nothing held."""
    path = tmp_path / "d" / "x.lock"  # the directory is created
    lock = mod.InterProcessLock(path)
    assert lock.acquire(timeout=5) is True
    assert lock.acquired and lock.exists()
    lock.release()
    assert not lock.acquired
    with PeerHolder(_kind(mod), path) as held:
        assert lock.acquire(timeout=0.05) is False
        assert lock.acquire(blocking=False) is False
        assert not lock.acquired
        held.release()
    assert lock.acquire(blocking=False) is True
    lock.release()


def test_acquire_again_is_not_counted(mod: ModuleType, tmp_path: Path) -> None:
    """A second acquire by the holder returns True; one release frees the lock."""
    path = tmp_path / "x.lock"
    lock = mod.InterProcessLock(path)
    assert lock.acquire() and lock.acquire()
    lock.release()
    assert not lock.acquired
    assert peer_try(_kind(mod), path, 10) == "acquired"


def test_release_unacquired_raises_thread_error(mod: ModuleType, tmp_path: Path) -> None:
    lock = mod.InterProcessLock(tmp_path / "x.lock")
    with pytest.raises(threading.ThreadError):
        lock.release()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"timeout": -1}, "Timeout must be greater"), ({"delay": -1}, "Delay must be greater"),
])
def test_argument_checks(mod: ModuleType, tmp_path: Path, kwargs: dict[str, float],
                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mod.InterProcessLock(tmp_path / "x.lock").acquire(**kwargs)


def test_with_and_decorator(mod: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    lock = mod.InterProcessLock(path, sleep_func=lambda s: None)
    with lock:
        assert lock.acquired
        assert peer_try(_kind(mod), path, 0.1) == "timeout"
    assert not lock.acquired

    @mod.interprocess_locked(str(path))
    def job() -> str:
        return peer_try(_kind(mod), path, 0.1)

    assert job() == "timeout"
    assert peer_try(_kind(mod), path, 10) == "acquired"


def test_reader_writer_idioms(mod: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "rw.lock"
    lock = mod.InterProcessReaderWriterLock(path)
    assert lock.acquire_read_lock(timeout=5) is True
    lock.release_read_lock()
    with lock.write_lock():
        pass
    with lock.read_lock():
        pass

    @mod.interprocess_write_locked(str(path))
    def write() -> int:
        return 1

    @mod.interprocess_read_locked(str(path))
    def read() -> int:
        return 2

    assert (write(), read()) == (1, 2)


# -- where racefree differs on purpose ------------------------------------------------------

def test_threads_sharing_a_lock_exclude_each_other(tmp_path: Path) -> None:
    """fasteners' lock is per process (every thread gets True); racefree's is per thread."""
    lock = compat.InterProcessLock(tmp_path / "x.lock")
    with lock:
        assert in_thread(lock.acquire, True, 0.01, 0.1, 0.05) is False
        with pytest.raises(threading.ThreadError):
            in_thread(lock.release)
        assert lock.acquired


def test_reader_writer_excludes_across_processes(tmp_path: Path) -> None:
    """A writer in another racefree process keeps readers here out; readers share."""
    path = tmp_path / "rw.lock"
    lock = compat.InterProcessReaderWriterLock(path)
    with PeerHolder("racefree.FileLock", path) as held:
        assert lock.acquire_read_lock(timeout=0.05) is False
        held.release()
    with lock.read_lock():
        assert peer_try("racefree.FileLock-shared", path, 10) == "acquired"
        assert peer_try("racefree.FileLock", path, 0.1) == "timeout"


def test_reader_writer_mode_change_is_refused(tmp_path: Path) -> None:
    lock = compat.InterProcessReaderWriterLock(tmp_path / "rw.lock")
    with lock.read_lock(), pytest.raises(RuntimeError, match="other mode"):
        lock.acquire_write_lock()
    with pytest.raises(threading.ThreadError):
        lock.release_write_lock()
