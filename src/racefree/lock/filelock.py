"""``FileLock``: one lock that excludes threads, asyncio tasks and processes together.

See ``docs/locks.md`` for the design. This module holds the API and the
uncontended fast paths; the per-process state is in ``lock.registry`` and
all the waiting in ``lock.wait``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from types import TracebackType

from racefree import _fork, _fs
from racefree._errors import WouldBlock
from racefree.lock import create as _create
from racefree.lock import registry as _reg
from racefree.lock.api import ASYNC_CODE, Acquired, LockAPI, refuse_coroutine_caller
from racefree.lock.registry import LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN, Entry, current_owner
from racefree.lock.registry import check_timeout as _check_timeout
from racefree.lock.wait import try_take, wait_async, wait_sync

__all__ = ["FileLock"]

_get_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task
_get_ident = threading.get_ident
_getframe = sys._getframe


def _rebuild(
    path: str, shared: bool, timeout: float | None, mode: int | None, make_parents: bool
) -> FileLock:
    return FileLock(path, shared=shared, timeout=timeout, mode=mode, make_parents=make_parents)


class FileLock(LockAPI):
    """A lock on a lock file that excludes other processes, threads and asyncio tasks.

    ``path`` is the lock file itself, a sidecar such as ``config.json.lock``,
    not the file it protects. It is created if missing, with its missing
    parent directories, and never deleted: deleting a lock file lets two
    holders in (pitfall L1). A new lock file gets ``mode`` exactly (say
    ``0o660`` for a group that shares it; the umask does not narrow it), or
    ``0o666 & ~umask`` by default; an existing one keeps its mode. With
    ``make_parents=False`` a missing directory is a ``FileNotFoundError``
    instead (for a sidecar of a data file, whose directory must exist).

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

    Nothing happens at construction: the lock file is opened (and created) on
    first use and stays open while any instance on it exists in this process.
    An instance pickles as its arguments, for ``multiprocessing``.

    Across processes the lock is ``flock(2)`` on a descriptor kept open, which
    the kernel drops when the holder dies, kill -9 included. After ``fork()``
    the child holds nothing: it never releases its parent's lock, and acquiring
    in the child waits until the parent releases (see ``docs/locks.md``).
    """

    __slots__ = (
        "__weakref__", "_acquired", "_entry", "_make_parents", "_mode", "_op", "_op_nb", "_path",
        "_shared", "_timeout",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        shared: bool = False,
        timeout: float | None = None,
        mode: int | None = None,
        make_parents: bool = True,
    ) -> None:
        fspath = os.fspath(path)
        if not isinstance(fspath, str):
            raise TypeError("path must be a str or os.PathLike[str]")
        # Absolute now, so that a later chdir() cannot point the lock elsewhere.
        self._path = os.path.abspath(fspath)
        self._shared = bool(shared)
        self._op = LOCK_SH if shared else LOCK_EX
        self._op_nb = self._op | LOCK_NB
        self._timeout = _check_timeout(timeout)
        self._mode = _create.check_mode(mode)
        self._make_parents = bool(make_parents)
        self._entry: Entry | None = None
        # What acquire() returns: it holds nothing but this lock, so one serves every
        # call (a new one per call was a tenth of an uncontended acquire and release).
        # The reference cycle it makes is the garbage collector's to break.
        self._acquired: Acquired[FileLock] = Acquired(self)

    # -- properties (``path`` and ``timeout``: LockAPI) ------------------------
    @property
    def shared(self) -> bool:
        """True for a reader (shared) lock."""
        return self._shared

    @property
    def mode(self) -> int | None:
        """The mode a new lock file is created with; None: ``0o666 & ~umask``."""
        return self._mode

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
        if _fork.maybe_child:
            _fork.check()  # a forked child resets before it touches an entry (L5)
        entry = self._entry
        if entry is None or entry.retired:
            entry = self._entry = self._bind()
        return entry

    def _bind(self) -> Entry:
        """The registry entry of the lock file, after creating what is missing on its path."""
        if self._mode is not None:
            _create.create_with_mode(self._path, self._mode, self._make_parents)
        try:
            return _reg.bind(self, self._path, self._mode)
        except FileNotFoundError:
            if not self._make_parents:
                raise
            # A parent directory is missing (filelock creates them too): made
            # here, not before every open, so the usual case costs no call.
            _create.make_parents(self._path)
        return _reg.bind(self, self._path, self._mode)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickles as its arguments (for multiprocessing): the copy holds nothing."""
        return (
            _rebuild, (self._path, self._shared, self._timeout, self._mode, self._make_parents)
        )

    def __repr__(self) -> str:
        kind = "shared" if self._shared else "exclusive"
        return f"<FileLock {self._path!r} {kind} timeout={self._timeout}>"

    # -- acquire and release -------------------------------------------------
    #
    # acquire() / release() and __enter__() / __exit__() repeat the same short
    # fast path on purpose: one Python call less per `with` block is a third
    # of the uncontended cost (so FileLock overrides LockAPI's __enter__ and
    # __exit__). Anything that may wait is in ``wait``. A fork in progress
    # (``_fork.maybe_child``) sends every call to the slow path, which resets a
    # forked child's state before it is used, whatever ran first in the child.

    def acquire(self, timeout: float | None = None) -> Acquired[FileLock]:
        """Wait until the current owner holds the lock; returns an :class:`Acquired`.

        ``timeout`` (seconds) overrides the constructor's; None means the
        constructor's, whose None waits forever; 0 tries once. On timeout it
        raises :class:`LockTimeout` and nothing is held. Waiting blocks in the
        kernel or on a lock, never polls: a released lock is taken at once.

        The result is true and a context manager that releases on exit:
        ``with lock.acquire(timeout=5):`` holds the lock for the block.

        Called straight from an ``async def`` while an asyncio loop runs it
        raises ``TypeError`` before taking anything: it cannot tell
        ``await lock.acquire()`` from a call that would stall the loop. Use
        ``async with lock`` or :meth:`acquire_async` there. Called from
        synchronous code that runs in a task, it blocks the loop while it waits
        (and raises ``RuntimeError`` if it would wait for another task of the
        same loop: a certain deadlock).
        """
        if timeout is not None:
            timeout = _check_timeout(timeout)  # before the fast path: bad values always raise
        entry = self._entry
        if entry is None or entry.retired or _fork.maybe_child:
            entry = self._get_entry()
        loop = _get_running_loop()  # current_owner(), inlined
        if loop is None:
            owner: object = _get_ident()
        else:
            if _getframe(1).f_code.co_flags & ASYNC_CODE:
                refuse_coroutine_caller(self._path)
            owner = _current_task(loop) or _get_ident()
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
                    return self._acquired
            elif try_take(entry, owner, self._op, self._path):
                return self._acquired
        finally:
            mutex.release()
        wait_sync(entry, owner, self._op, self._path, self._timeout if timeout is None else timeout)
        return self._acquired

    def __enter__(self) -> FileLock:
        """``with lock:`` is :meth:`acquire` with the constructor's timeout."""
        entry = self._entry
        if entry is None or entry.retired or _fork.maybe_child:
            entry = self._get_entry()
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
                    return self
            elif try_take(entry, owner, self._op, self._path):
                return self
        finally:
            mutex.release()
        wait_sync(entry, owner, self._op, self._path, self._timeout)
        return self

    def acquire_nowait(self) -> Acquired[FileLock]:
        """Take the lock without waiting, or raise :class:`WouldBlock` (nothing held).

        Returns an :class:`Acquired`, as :meth:`acquire` does. It never waits,
        so it may be called anywhere, coroutines included.
        """
        entry = self._get_entry()
        owner = current_owner()
        with entry.mutex:
            if try_take(entry, owner, self._op, self._path):
                return self._acquired
        raise WouldBlock(self._path)

    async def acquire_async(self, timeout: float | None = None) -> Acquired[FileLock]:
        """Wait until the current task holds the lock, without blocking the event loop.

        The same guarantees as :meth:`acquire`, and the same result
        (``async with await lock.acquire_async(timeout=5):`` releases on exit).
        Cancelling the waiting task, or a timeout (:class:`LockTimeout`),
        leaves nothing held (L9): a kernel lock granted to a worker thread after
        its task gave up is released by that worker at once.
        """
        t = self._timeout if timeout is None else _check_timeout(timeout)
        entry = self._get_entry()
        owner = current_owner()
        with entry.mutex:
            if try_take(entry, owner, self._op, self._path):
                return self._acquired
        await wait_async(entry, owner, self._op, self._path, t)
        return self._acquired

    def release(self) -> None:
        """Drop one hold of the current owner; the last one unlocks the file.

        Raises ``RuntimeError`` if the current owner holds nothing. In a forked
        child, releasing a hold the parent had at fork time only forgets it:
        the parent keeps its lock (L5).
        """
        entry = self._entry
        if entry is not None and not entry.retired and not _fork.maybe_child:
            loop = _get_running_loop()
            owner = (loop is not None and _current_task(loop)) or _get_ident()
            mutex = entry.mutex
            mutex.acquire()
            try:
                holders = entry.holders
                # The last hold of the only owner, locked through entry.fd.
                if holders.get(owner) == 1 and len(holders) == 1 and entry.kfd == entry.fd:
                    holders.clear()
                    entry.mode = 0
                    _fs.flock(entry.fd, LOCK_UN)
                    if entry.waiters:
                        entry.wake_all()
                    return
            finally:
                mutex.release()
        self._release_slow()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        if entry is not None and not entry.retired and not _fork.maybe_child:
            loop = _get_running_loop()
            owner = (loop is not None and _current_task(loop)) or _get_ident()
            mutex = entry.mutex
            mutex.acquire()
            try:
                holders = entry.holders
                if holders.get(owner) == 1 and len(holders) == 1 and entry.kfd == entry.fd:
                    holders.clear()
                    entry.mode = 0
                    _fs.flock(entry.fd, LOCK_UN)
                    if entry.waiters:
                        entry.wake_all()
                    return
            finally:
                mutex.release()
        self._release_slow()

    def _release_slow(self) -> None:
        entry = self._get_entry()
        owner = current_owner()
        if entry.release(owner):
            return
        if _reg.forget_inherited(entry.key, owner):
            return
        hint = ""
        if any(isinstance(h, asyncio.Task) and h.done() for h in entry.holders):
            # Python < 3.12: asyncio.wait_for(lock.acquire_async(), t) acquires in
            # a task of its own, which then owns the lock.
            hint = (
                "; it is held by a finished task (asyncio.wait_for() runs its argument in a"
                " task of its own before Python 3.12: use acquire_async(timeout=...))"
            )
        raise RuntimeError(
            f"release of {self._path}: the lock is not held by this thread or task{hint}"
        )
