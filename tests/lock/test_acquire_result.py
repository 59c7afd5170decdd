"""``acquire()``'s result and ``await lock.acquire()``, for FileLock and LockFile.

The checks are in ``helpers/acquire_checks.py``; PostgreSQL's PgLock runs the
same ones in ``tests/pg/test_pg_acquire_result.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.acquire_checks import CHECKS

import racefree

pytestmark = pytest.mark.timeout(60)

KINDS = {
    "filelock": lambda path: racefree.FileLock(path, timeout=5),
    "lockfile": lambda path: racefree.LockFile(path, timeout=5),
}


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("kind", ["filelock", "lockfile"])
def test_acquire_result(kind: str, check: str, tmp_path: Path) -> None:
    """Each check of the acquire result against each lock kind."""
    path = str(tmp_path / "the.lock")

    def make() -> Any:
        return KINDS[kind](path)

    CHECKS[check](make)


def test_shared_lock_result_releases_its_own_hold(tmp_path: Path) -> None:
    """A reader's ``with lock.acquire():`` drops the reader's hold only; a writer waits for it."""
    path = tmp_path / "rw.lock"
    reader = racefree.FileLock(path, shared=True)
    other_reader = racefree.FileLock(path, shared=True)
    with reader.acquire(timeout=5):
        with other_reader.acquire(timeout=5):
            assert reader.locked
        assert reader.held_by_me
        with pytest.raises(racefree.WouldBlock):
            from helpers.lock_contract import in_thread

            in_thread(racefree.FileLock(path).acquire_nowait)
    assert not reader.locked


def test_with_lock_in_a_coroutine_still_works(tmp_path: Path) -> None:
    """``with lock:`` in a coroutine is unchanged: it takes the lock for the task."""
    import asyncio

    lock = racefree.FileLock(tmp_path / "x.lock", timeout=5)

    async def main() -> bool:
        with lock:
            return bool(lock.held_by_me)

    assert asyncio.run(main()) is True
    assert not lock.locked
