"""``FileLock``: one lock that excludes threads, asyncio tasks and processes together.

See ``docs/locks.md`` for the design; the per-process state lives in
``_lockregistry``.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType

from . import _fs
from . import _lockregistry as _reg
from ._errors import LockTimeout, WouldBlock
from ._lockregistry import (
    LOCK_EX,
    LOCK_NB,
    LOCK_SH,
    LOCK_UN,
    Entry,
    current_owner,
)

_get_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task
_get_ident = threading.get_ident

__all__ = ["FileLock"]

# What _admit() decided for an owner that does not hold the lock yet.
_HELD, _KERNEL, _WAIT = 0, 1, 2


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if not timeout >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be >= 0 (or None to wait forever), not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


class FileLock:
    """A lock on a lock file that excludes other processes, threads and asyncio tasks.

    ``path`` is the lock file itself, a sidecar such as ``config.json.lock``,
    not the file it protects. It is created if missing (mode ``0o666 & ~umask``)
    and never deleted: deleting a lock file lets two holders in (pitfall L1).

    The owner of a hold is the running asyncio task, or else the thread.
    Holds are reentrant per owner (each ``acquire`` needs its ``release``), and
    one instance may be shared by any number of threads and tasks (L3). All
    ``FileLock`` instances on one file in a process share one state, so two
    instances exclude each other (L2).

    With ``shared=True`` it is a reader lock: any number of shared holders,
    or one exclusive holder, across threads, tasks and processes. A shared
    holder cannot upgrade to exclusive (``RuntimeError``: it would deadlock).

    ``timeout`` is the default for :meth:`acquire` and :meth:`acquire_async`:
    None waits forever; 0 tries once.

    Across processes the lock is ``flock(2)`` on a descriptor kept open, which
    the kernel drops when the holder dies, kill -9 included. After ``fork()``
    the child holds nothing: it never releases its parent's lock, and acquiring
    in the child waits until the parent releases (see ``docs/locks.md``).
    """

    __slots__ = ("__weakref__", "_entry", "_op", "_op_nb", "_path", "_shared", "_timeout")

    def __init__(
        self, path: str | os.PathLike[str], *, shared: bool = False, timeout: float | None = None
    ) -> None:
        self._path = os.fspath(path)
        if not isinstance(self._path, str):
            raise TypeError("path must be a str or os.PathLike[str]")
        self._shared = bool(shared)
        self._op = LOCK_SH if shared else LOCK_EX
        self._op_nb = self._op | LOCK_NB
        self._timeout = _check_timeout(timeout)
        self._entry: Entry | None = None

    # -- properties ---------------------------------------------------------
    @property
    def path(self) -> str:
        """The lock file."""
        return self._path

    @property
    def shared(self) -> bool:
        """True for a reader (shared) lock."""
        return self._shared

    @property
    def timeout(self) -> float | None:
        """The default timeout in seconds; None waits forever."""
        return self._timeout

    @property
    def locked(self) -> bool:
        """Whether any owner in this process (through any instance on this file) holds it.

        Other processes are not looked at: that answer would be stale at once.
        """
        entry = self._get_entry()
        return bool(entry.holders)

    @property
    def held_by_me(self) -> bool:
        """Whether the current owner (this asyncio task, else this thread) holds it."""
        entry = self._get_entry()
        return current_owner() in entry.holders

    def _get_entry(self) -> Entry:
        entry = self._entry
        if entry is None or entry.retired:
            entry = self._entry = _reg.bind(self, self._path)
        return entry

    def __repr__(self) -> str:
        kind = "shared" if self._shared else "exclusive"
        return f"<FileLock {self._path!r} {kind} timeout={self._timeout}>"

    # -- the fast path ------------------------------------------------------
    def _try(self, entry: Entry, owner: object) -> bool:
        """Take the lock if that needs no waiting (``entry.mutex`` held by the caller)."""
        n = entry.holders.get(owner)
        if n is not None:
            if self._op == LOCK_EX and entry.mode == LOCK_SH:
                raise RuntimeError(
                    f"cannot upgrade a shared hold of {self._path} to exclusive: it would deadlock"
                )
            entry.holders[owner] = n + 1
            return True
        if not entry.admissible(self._op):
            return False
        if entry.holders:  # a reader joins the readers of this process
            entry.holders[owner] = 1
            return True
        try:
            _fs.flock(entry.fd, self._op | LOCK_NB)
        except BlockingIOError:
            return False
        entry.holders[owner] = 1
        entry.mode = self._op
        return True

    def acquire(self, timeout: float | None = None) -> None:
        """Wait until this owner holds the lock.

        ``timeout`` (seconds) overrides the constructor's; None means the
        constructor's, whose None waits forever; 0 tries once. On timeout it
        raises :class:`LockTimeout` and nothing is held. Waiting blocks in the
        kernel or on a condition, never polls: a released lock is taken at
        once. In a coroutine use ``async with`` or :meth:`acquire_async`:
        this call blocks the event loop while it waits.
        """
        if timeout is not None:
            timeout = _check_timeout(timeout)  # before the fast path: bad values always raise
        entry = self._entry
        if entry is None or entry.retired:
            entry = self._get_entry()
        # current_owner(), inlined: this is the uncontended fast path.
        loop = _get_running_loop()
        owner = (loop is not None and _current_task(loop)) or _get_ident()
        mutex = entry.mutex
        mutex.acquire()
        try:
            if not entry.holders and not entry.busy and not entry.writers_waiting:
                try:
                    _fs.flock(entry.fd, self._op_nb)
                except BlockingIOError:
                    pass
                else:
                    entry.holders[owner] = 1
                    entry.mode = self._op
                    return
            elif self._try(entry, owner):
                return
        finally:
            mutex.release()
        self._acquire_slow(entry, owner, self._timeout if timeout is None else timeout)

    def acquire_nowait(self) -> None:
        """Take the lock without waiting, or raise :class:`WouldBlock` (nothing held)."""
        entry = self._get_entry()
        owner = current_owner()
        with entry.mutex:
            if self._try(entry, owner):
                return
        raise WouldBlock(self._path)

    def release(self) -> None:
        """Drop one hold of the current owner; the last one unlocks the file.

        Raises ``RuntimeError`` if the current owner holds nothing. In a forked
        child, releasing a hold the parent had at fork time only forgets it:
        the parent keeps its lock (L5).
        """
        entry = self._entry
        if entry is None or entry.retired:
            entry = self._get_entry()
        loop = _get_running_loop()
        owner = (loop is not None and _current_task(loop)) or _get_ident()
        mutex = entry.mutex
        mutex.acquire()
        try:
            holders = entry.holders
            # The fast path: the last hold of the only owner, locked through entry.fd.
            if holders.get(owner) == 1 and len(holders) == 1 and entry.kfd == entry.fd:
                holders.clear()
                entry.mode = 0
                _fs.flock(entry.fd, LOCK_UN)
                if entry.waiters:
                    entry.wake_all()
                return
        finally:
            mutex.release()
        if entry.release(owner):
            return
        if _reg.forget_inherited(entry.key, owner):
            return
        raise RuntimeError(f"release of {self._path}: the lock is not held by this thread or task")

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> FileLock:
        await self.acquire_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- waiting (threads) -------------------------------------------------
    def _acquire_slow(self, entry: Entry, owner: object, timeout: float | None) -> None:
        op = self._op
        deadline = None if timeout is None else time.monotonic() + timeout
        writer = op == LOCK_EX
        counted = False
        wake = None
        try:
            while True:
                with entry.mutex:
                    verdict = self._admit(entry, owner)
                    if verdict != _WAIT:
                        if counted:
                            entry.writers_waiting -= 1
                            counted = False
                        if verdict == _HELD:
                            return
                        break  # entry.busy is ours: we take the kernel lock
                    _refuse_self_deadlock(entry, self._path)
                    if writer and not counted:
                        entry.writers_waiting += 1
                        counted = True
                    gate = _new_gate()
                    wake = gate.release
                    entry.waiters.append(wake)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise LockTimeout(self._path, timeout)
                if not gate.acquire(timeout=-1 if remaining is None else remaining):
                    raise LockTimeout(self._path, timeout)
                wake = None
        except BaseException:
            with entry.mutex:
                if wake is not None and wake in entry.waiters:
                    entry.waiters.remove(wake)
                if counted:
                    entry.writers_waiting -= 1
                    entry.wake_all()  # readers held back by this writer may go
            raise
        try:
            kfd = self._kernel_lock(entry, deadline)
        except BaseException:
            with entry.mutex:
                entry.busy = False
                try:
                    entry.drop_kernel_lock()
                finally:
                    entry.wake_all()
            raise
        if kfd is None:
            with entry.mutex:
                entry.busy = False
                entry.wake_all()
            raise LockTimeout(self._path, timeout)
        self._record(entry, owner, kfd)

    def _admit(self, entry: Entry, owner: object) -> int:
        """``_HELD`` if taken, ``_KERNEL`` if we must wait for another process, else ``_WAIT``.

        On ``_KERNEL`` the entry is marked busy: this owner waits in the kernel
        and the other owners of this process wait for it (``entry.mutex`` held).
        """
        if self._try(entry, owner):
            return _HELD
        if not entry.admissible(self._op):
            return _WAIT
        entry.busy = True
        return _KERNEL

    def _record(self, entry: Entry, owner: object, kfd: int) -> None:
        with entry.mutex:
            entry.busy = False
            entry.holders[owner] = 1
            entry.mode = self._op
            entry.kfd = kfd
            if entry.waiters and self._op == LOCK_SH:
                entry.wake_all()  # readers of this process waiting on us join now

    def _kernel_lock(self, entry: Entry, deadline: float | None) -> int | None:
        """Lock the file in the kernel, blocking; the descriptor locked, or None on timeout."""
        op = self._op
        if deadline is None:
            # Nobody else in this process touches entry.fd's lock while we are
            # busy, so the plain blocking flock is safe and wakes at once (L4).
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
        req = _reg.start_kernel_wait(entry, op, gate.release)
        try:
            gate.acquire(timeout=remaining)
        except BaseException:
            # Interrupted (KeyboardInterrupt): a grant that raced in is given back.
            if req.settle() is not None:
                req.give_back()
            raise
        return req.settle()

    # -- waiting (asyncio) ---------------------------------------------------
    async def acquire_async(self, timeout: float | None = None) -> None:
        """Wait until the current task holds the lock, without blocking the event loop.

        The same guarantees as :meth:`acquire`. Cancelling the waiting task, or
        a timeout (:class:`LockTimeout`), leaves nothing held (L9): a kernel
        lock granted to a worker thread after its task gave up is released by
        that worker at once.
        """
        t = self._timeout if timeout is None else _check_timeout(timeout)
        entry = self._entry
        if entry is None or entry.retired:
            entry = self._get_entry()
        owner = current_owner()
        with entry.mutex:
            if self._try(entry, owner):
                return
        loop = asyncio.get_running_loop()
        deadline = None if t is None else loop.time() + t
        writer = self._op == LOCK_EX
        counted = False
        wake = None
        try:
            while True:
                with entry.mutex:
                    verdict = self._admit(entry, owner)
                    if verdict != _WAIT:
                        if counted:
                            entry.writers_waiting -= 1
                            counted = False
                        if verdict == _HELD:
                            return
                        break  # entry.busy is ours: we take the kernel lock
                    if writer and not counted:
                        entry.writers_waiting += 1
                        counted = True
                    fut = loop.create_future()
                    wake = _async_waker(loop, fut)
                    entry.waiters.append(wake)
                await _wait(fut, deadline, loop, self._path, t)
                wake = None
        except BaseException:
            with entry.mutex:
                if wake is not None and wake in entry.waiters:
                    entry.waiters.remove(wake)
                if counted:
                    entry.writers_waiting -= 1
                    entry.wake_all()
            raise
        try:
            kfd = await self._kernel_lock_async(entry, deadline, loop)
        except BaseException:
            with entry.mutex:
                entry.busy = False
                try:
                    entry.drop_kernel_lock()
                finally:
                    entry.wake_all()
            raise
        if kfd is None:
            with entry.mutex:
                entry.busy = False
                entry.wake_all()
            raise LockTimeout(self._path, t)
        self._record(entry, owner, kfd)

    async def _kernel_lock_async(
        self, entry: Entry, deadline: float | None, loop: asyncio.AbstractEventLoop
    ) -> int | None:
        try:
            _fs.flock(entry.fd, self._op | LOCK_NB)
            return entry.fd
        except BlockingIOError:
            pass
        fut: asyncio.Future[None] = loop.create_future()
        req = _reg.start_kernel_wait(entry, self._op, _async_waker(loop, fut))
        try:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is None:
                await fut
            elif remaining > 0:
                await asyncio.wait_for(fut, remaining)
        except (asyncio.TimeoutError, TimeoutError):
            pass
        except BaseException:
            # Cancelled: if the kernel granted the lock meanwhile, give it back.
            kfd = req.settle()
            if kfd is not None:
                req.give_back()
            raise
        return req.settle()


async def _wait(
    fut: asyncio.Future[None],
    deadline: float | None,
    loop: asyncio.AbstractEventLoop,
    path: str,
    timeout: float | None,
) -> None:
    if deadline is None:
        await fut
        return
    remaining = deadline - loop.time()
    if remaining <= 0:
        raise LockTimeout(path, timeout)
    try:
        await asyncio.wait_for(fut, remaining)
    except (asyncio.TimeoutError, TimeoutError):
        raise LockTimeout(path, timeout) from None


def _async_waker(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]
) -> Callable[[], None]:
    def wake() -> None:
        _reg.call_soon_threadsafe(loop, fut)

    return wake


def _refuse_self_deadlock(entry: Entry, path: str) -> None:
    """A blocking acquire() in a task, behind another task of the same loop, would hang forever.

    The holder can only run once this call returns, so waiting is a certain
    deadlock: raise instead (``entry.mutex`` held).
    """
    loop = _get_running_loop()
    if loop is None:
        return
    for holder in entry.holders:
        if isinstance(holder, asyncio.Task) and holder.get_loop() is loop:
            raise RuntimeError(
                f"acquire() of {path} would deadlock: another task of this event loop holds it;"
                " use 'async with' or acquire_async()"
            )


def _new_gate() -> threading.Lock:
    """A locked lock: the waiter blocks on acquire(), the waker calls release()."""
    gate = threading.Lock()
    gate.acquire()
    return gate
