"""What ``acquire()`` returns and what ``await lock.acquire()`` does: checks run against every lock.

Each check takes ``make``, a function that returns a new lock instance on one
shared lock (a FileLock, a LockFile or a PgLock on the same file or name),
with a default timeout of a few seconds, so that a wrong implementation fails
with an error instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from helpers.lock_contract import in_thread
from racefree import LockTimeout, WouldBlock

Make = Callable[[], Any]


def _free_for_others(make: Make) -> bool:
    """Whether another thread (another owner, another instance) can take the lock now."""
    def probe() -> bool:
        other = make()
        try:
            other.acquire_nowait()
        except WouldBlock:
            return False
        other.release()
        return True

    return bool(in_thread(probe))


@contextmanager
def held_by_another_thread(make: Make) -> Iterator[None]:
    """The lock held by another thread for the block (a barrier, not a sleep)."""
    taken, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        lock = make()
        try:
            lock.acquire()
        except BaseException as exc:
            errors.append(exc)
            taken.set()
            return
        taken.set()
        done.wait(60)
        lock.release()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert taken.wait(60) and not errors, errors
    try:
        yield
    finally:
        done.set()
        t.join(60)
        assert not t.is_alive()


def check_with_acquire_releases(make: Make) -> None:
    """``with lock.acquire(timeout=5) as l:`` holds the lock in the block, releases after."""
    lock = make()
    with lock.acquire(timeout=5) as entered:
        assert entered is lock
        assert lock.held_by_me
        assert not _free_for_others(make)
    assert not lock.locked
    assert _free_for_others(make)


def check_result_is_true(make: Make) -> None:
    """``if lock.acquire(timeout=t):`` is taken when the lock was; nowait too; one hold each."""
    lock = make()
    got = lock.acquire(timeout=5)
    assert bool(got) is True
    assert lock.held_by_me
    again = lock.acquire_nowait()  # reentrant: a second hold, also true
    assert bool(again) is True
    lock.release()
    assert lock.held_by_me  # one release per acquire, whatever the result was used for
    lock.release()
    assert not lock.locked


def check_timeout_still_raises(make: Make) -> None:
    """A timeout raises LockTimeout (no false result): nothing held afterwards."""
    lock = make()
    with held_by_another_thread(make):
        try:
            lock.acquire(timeout=0.05)
        except LockTimeout:
            pass
        else:
            raise AssertionError("acquire() returned while another thread held the lock")
        assert not lock.held_by_me


def check_await_acquire_refused_before_taking(make: Make) -> None:
    """``await lock.acquire()`` in a coroutine: TypeError before anything is taken, even
    with the lock free; the task that tried (and finished) holds nothing.
    """
    lock = make()

    async def main() -> None:
        try:
            await lock.acquire()
        except TypeError as exc:
            assert "acquire_async" in str(exc)
        else:
            raise AssertionError("await lock.acquire() did not raise")
        assert not lock.held_by_me

    asyncio.run(main())
    assert not lock.locked
    assert _free_for_others(make)


def check_await_acquire_refused_without_waiting(make: Make) -> None:
    """With the lock held elsewhere, the TypeError comes at once: the loop never blocks
    (the lock's default timeout would end a blocking wait with LockTimeout instead).
    """
    lock = make()

    async def main() -> None:
        with suppress(TypeError):
            await lock.acquire()

    with held_by_another_thread(make):
        asyncio.run(main())
        assert not lock.held_by_me


def check_async_result(make: Make) -> None:
    """``async with await lock.acquire_async(timeout=5):`` and ``await lock.acquire_nowait()``
    hold the lock for the task and release it at the end of the block.
    """
    lock = make()

    async def main() -> None:
        async with await lock.acquire_async(timeout=5) as entered:
            assert entered is lock
            assert lock.held_by_me
        assert not lock.locked
        got = await lock.acquire_nowait()
        assert bool(got) and lock.held_by_me
        with got:
            pass
        assert not lock.locked

    asyncio.run(main())
    assert _free_for_others(make)


def check_sync_code_in_a_task_still_acquires(make: Make) -> None:
    """Synchronous code called from a task (not the coroutine itself) still takes the lock."""
    lock = make()

    def library_code() -> bool:
        with lock.acquire(timeout=5):
            return bool(lock.held_by_me)

    async def main() -> bool:
        return library_code()

    assert asyncio.run(main()) is True
    assert not lock.locked


CHECKS: dict[str, Callable[[Make], None]] = {
    "with-acquire": check_with_acquire_releases,
    "result-true": check_result_is_true,
    "timeout-raises": check_timeout_still_raises,
    "await-refused": check_await_acquire_refused_before_taking,
    "await-refused-at-once": check_await_acquire_refused_without_waiting,
    "async-result": check_async_result,
    "sync-in-task": check_sync_code_in_a_task_still_acquires,
}
