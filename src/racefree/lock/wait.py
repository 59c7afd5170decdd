"""How a :class:`racefree.FileLock` owner waits: never by polling (pitfall L4).

Two stages, in this order:

1. **In this process.** An owner that cannot be admitted (another owner of this
   process holds the lock, or is taking the kernel lock) queues a wake-up
   callable on the entry and blocks on it: a private locked ``threading.Lock``
   for a thread, a future resolved with ``call_soon_threadsafe`` for a task.
   Every change that may admit someone wakes all the queued owners, which
   re-check under the entry's mutex.
2. **In the kernel.** The one admitted owner marks the entry busy and takes
   ``flock``. A thread without a timeout blocks in ``flock`` itself. With a
   timeout, or in a task, a worker thread blocks in ``flock`` on a fresh open
   file description of the same inode and the owner waits for it with its
   timeout; if the owner gives up, the worker hands a late grant straight back
   (L9). The workers are in ``lock.worker``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from racefree import _fs
from racefree._errors import LockTimeout
from racefree.lock.api import async_waker
from racefree.lock.registry import LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN, Entry
from racefree.lock.worker import start_kernel_wait

__all__ = ["admit_or_take", "try_take", "wait_async", "wait_sync"]

_get_running_loop = asyncio._get_running_loop

# What admit_or_take() decided for an owner that does not hold the lock yet.
HELD, KERNEL, WAIT = 0, 1, 2

# -- admission (entry.mutex held) ---------------------------------------------

def try_take(entry: Entry, owner: object, op: int, path: str) -> bool:
    """Take the lock if that needs no waiting: reentry, joining readers, or a free kernel lock."""
    n = entry.holders.get(owner)
    if n is not None:
        if op == LOCK_EX and entry.mode == LOCK_SH:
            raise RuntimeError(
                f"cannot upgrade a shared hold of {path} to exclusive: it would deadlock"
            )
        entry.holders[owner] = n + 1
        return True
    if not entry.admissible(op):
        return False
    if entry.holders:  # a reader joins the readers of this process
        entry.holders[owner] = 1
        return True
    try:
        _fs.flock(entry.fd, op | LOCK_NB)
    except BlockingIOError:
        return False
    entry.holders[owner] = 1
    entry.mode = op
    return True


def admit_or_take(entry: Entry, owner: object, op: int, path: str) -> int:
    """``HELD`` if taken, ``KERNEL`` if this owner must wait for another process, else ``WAIT``.

    On ``KERNEL`` the entry is marked busy: this owner waits in the kernel and
    the other owners of this process wait for it.
    """
    if try_take(entry, owner, op, path):
        return HELD
    if not entry.admissible(op):
        return WAIT
    entry.busy = True
    entry.busy_owner = owner
    return KERNEL


def _refuse_self_deadlock(entry: Entry, path: str) -> None:
    """A blocking acquire() in a task, behind another task of the same loop, would hang.

    That task (holding, or waiting in the kernel for its grant to arrive on
    the loop) can only run once this call returns, so waiting is a certain
    deadlock: raise instead.
    """
    loop = _get_running_loop()
    if loop is None:
        return
    blockers = list(entry.holders)
    if entry.busy:  # a task waiting in the kernel needs the loop to take its grant
        blockers.append(entry.busy_owner)
    for holder in blockers:
        if isinstance(holder, asyncio.Task) and holder.get_loop() is loop:
            raise RuntimeError(
                f"acquire() of {path} would deadlock: another task of this event loop holds it;"
                " use 'async with' or acquire_async()"
            )


def _leave_queue(entry: Entry, wake: Callable[[], None] | None, counted: bool) -> None:
    """An owner stops waiting in this process without the lock (timeout, cancellation)."""
    with entry.mutex:
        if wake is not None and wake in entry.waiters:
            entry.waiters.remove(wake)
        if counted:
            entry.writers_waiting -= 1
            entry.wake_all()  # readers held back by this writer may go now


def _kernel_failed(entry: Entry) -> None:
    """The busy owner got no kernel lock (error, timeout, cancellation): let the others try."""
    with entry.mutex:
        entry.busy = False
        try:
            # No one in this process holds the lock through entry.fd while we
            # are busy, so this cannot take it from anyone; it undoes a grant
            # that a signal (KeyboardInterrupt) interrupted before it was recorded.
            _fs.flock(entry.fd, LOCK_UN)
        finally:
            entry.wake_all()


def _record(entry: Entry, owner: object, op: int, kfd: int) -> None:
    with entry.mutex:
        entry.busy = False
        entry.holders[owner] = 1
        entry.mode = op
        entry.kfd = kfd
        if entry.waiters and op == LOCK_SH:
            entry.wake_all()  # readers of this process waiting on us join now


def _admit_or_queue(
    entry: Entry, owner: object, op: int, path: str, counted: bool, refuse_self: bool
) -> tuple[int, bool]:
    """One admission check of a waiter (``entry.mutex`` held): the verdict, and ``counted``.

    ``counted``: this writer is counted in ``entry.writers_waiting`` (so new
    readers queue behind it); it stops being counted once admitted.
    ``refuse_self``: a thread waiting for a task of its own running loop
    raises instead (a certain deadlock).
    """
    verdict = admit_or_take(entry, owner, op, path)
    if verdict != WAIT:
        if counted:
            entry.writers_waiting -= 1
        return verdict, False
    if refuse_self:
        _refuse_self_deadlock(entry, path)
    if op == LOCK_EX and not counted:
        entry.writers_waiting += 1
        counted = True
    return verdict, counted


# -- threads ------------------------------------------------------------------

def _new_gate() -> threading.Lock:
    """A locked lock: the waiter blocks on acquire(), the waker calls release()."""
    gate = threading.Lock()
    gate.acquire()
    return gate


def wait_sync(entry: Entry, owner: object, op: int, path: str, timeout: float | None) -> None:
    """Block the calling thread until ``owner`` holds the lock, or raise LockTimeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    counted = False  # this writer is counted in entry.writers_waiting
    wake = None
    try:
        while True:
            with entry.mutex:
                verdict, counted = _admit_or_queue(entry, owner, op, path, counted, True)
                if verdict == HELD:
                    return
                if verdict != WAIT:
                    break  # entry.busy is ours: we take the kernel lock
                gate = _new_gate()
                wake = gate.release
                entry.waiters.append(wake)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise LockTimeout(path, timeout)
            if not gate.acquire(timeout=-1 if remaining is None else remaining):
                raise LockTimeout(path, timeout)
            wake = None
    except BaseException:
        _leave_queue(entry, wake, counted)
        raise
    try:
        kfd = _kernel_lock_sync(entry, op, deadline)
    except BaseException:
        _kernel_failed(entry)
        raise
    if kfd is None:
        _kernel_failed(entry)
        raise LockTimeout(path, timeout)
    _record(entry, owner, op, kfd)


def _kernel_lock_sync(entry: Entry, op: int, deadline: float | None) -> int | None:
    """Lock the file in the kernel: the descriptor locked, or None on timeout."""
    if deadline is None:
        # Nobody else in this process touches entry.fd's lock while we are
        # busy, so the plain blocking flock is safe, and wakes at once (L4).
        _fs.flock(entry.fd, op)
        return entry.fd
    try:
        _fs.flock(entry.fd, op | LOCK_NB)
        return entry.fd
    except BlockingIOError:
        pass
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    gate = _new_gate()
    req = start_kernel_wait(entry, op, gate.release)
    try:
        gate.acquire(timeout=remaining)
    except BaseException:
        # Interrupted (KeyboardInterrupt): a grant that raced in is given back.
        if req.settle() is not None:
            req.give_back()
        raise
    return req.settle()


# -- asyncio ---------------------------------------------------------------------

async def _await_until(fut: asyncio.Future[None], deadline: float | None, loop: Any) -> bool:
    """Await ``fut`` until the loop-time ``deadline``; False if the deadline came first."""
    if deadline is None:
        await fut
        return True
    remaining = deadline - loop.time()
    if remaining <= 0:
        return False
    try:
        await asyncio.wait_for(fut, remaining)
    except (asyncio.TimeoutError, TimeoutError):
        return False
    return True


async def wait_async(
    entry: Entry, owner: object, op: int, path: str, timeout: float | None
) -> None:
    """Wait, without blocking the event loop, until the task ``owner`` holds the lock.

    Cancellation or a timeout leaves nothing held (L9).
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    counted = False
    wake = None
    try:
        while True:
            with entry.mutex:
                verdict, counted = _admit_or_queue(entry, owner, op, path, counted, False)
                if verdict == HELD:
                    return
                if verdict != WAIT:
                    break  # entry.busy is ours: we take the kernel lock
                fut: asyncio.Future[None] = loop.create_future()
                wake = async_waker(loop, fut)
                entry.waiters.append(wake)
            if not await _await_until(fut, deadline, loop):
                raise LockTimeout(path, timeout)
            wake = None
    except BaseException:
        _leave_queue(entry, wake, counted)
        raise
    try:
        kfd = await _kernel_lock_async(entry, op, deadline, loop)
    except BaseException:
        _kernel_failed(entry)
        raise
    if kfd is None:
        _kernel_failed(entry)
        raise LockTimeout(path, timeout)
    _record(entry, owner, op, kfd)


async def _kernel_lock_async(
    entry: Entry, op: int, deadline: float | None, loop: asyncio.AbstractEventLoop
) -> int | None:
    try:
        _fs.flock(entry.fd, op | LOCK_NB)
        return entry.fd
    except BlockingIOError:
        pass
    fut: asyncio.Future[None] = loop.create_future()
    req = start_kernel_wait(entry, op, async_waker(loop, fut))
    try:
        await _await_until(fut, deadline, loop)
    except BaseException:
        # Cancelled: if the kernel granted the lock meanwhile, give it back (L9).
        if req.settle() is not None:
            req.give_back()
        raise
    return req.settle()
