"""The per-process state behind :class:`racefree.FileLock`.

One :class:`Entry` per lock file (keyed by device and inode) holds the one
descriptor this process locks the file through, who holds it in this process
(threads and asyncio tasks, with reentrancy counts), and who waits. Every
``FileLock`` instance on that file shares the entry, so two instances exclude
each other and never drop each other's kernel lock (pitfall L2).

The kernel lock is ``flock(2)``: it belongs to the open file description, so
closing some other descriptor of the file never drops it (plain POSIX
``fcntl`` locks are dropped by any ``close()``, L2), and the kernel releases it
when the holder dies (kill -9 included).

How owners wait (never by polling) is in ``lock.wait``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import stat
import threading
import weakref
from collections.abc import Callable
from fcntl import LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN
from typing import TYPE_CHECKING

from racefree import _fork, _fs, _trust
from racefree._errors import UnsafePathError
from racefree.lock.api import drop_one

if TYPE_CHECKING:
    from racefree.lock.request import Request

__all__ = [
    "LOCK_EX",
    "LOCK_NB",
    "LOCK_SH",
    "LOCK_UN",
    "Entry",
    "bind",
    "check_timeout",
    "current_owner",
    "forget_inherited",
    "open_lock_file",
]

_get_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task
_get_ident = threading.get_ident


def check_timeout(timeout: float | None) -> float | None:
    """A lock timeout, checked: None or inf waits forever; negative, NaN or not a number raise."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if not timeout >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be >= 0 (or None to wait forever), not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def current_owner() -> object:
    """The owner of a lock taken here: the running asyncio task, else the thread (L3)."""
    loop = _get_running_loop()
    if loop is not None:
        task = _current_task(loop)
        if task is not None:
            return task
    return _get_ident()


class Entry:
    """The state of one lock file in this process. Fields change only under ``mutex``."""

    __slots__ = (
        "busy",
        "busy_owner",
        "fd",
        "holders",
        "key",
        "kfd",
        "mode",
        "mutex",
        "path",
        "refs",
        "request",
        "retired",
        "waiters",
        "writers_waiting",
    )

    def __init__(self, fd: int, key: tuple[int, int], path: str) -> None:
        self.mutex = threading.Lock()
        self.fd = fd  # kept open for the entry's life: the fast path is one flock()
        self.key = key
        self.path = path
        self.holders: dict[object, int] = {}  # owner -> reentrancy count
        self.mode = 0  # the kernel lock this process holds: 0, LOCK_SH or LOCK_EX
        self.kfd = fd  # the descriptor the kernel lock is held through
        self.busy = False  # one owner is taking the kernel lock; the others wait
        self.busy_owner: object = None  # that owner
        self.waiters: list[Callable[[], None]] = []
        self.writers_waiting = 0
        self.refs = 0  # FileLock instances bound to this entry
        self.request: Request | None = None  # the last kernel wait handed to a worker
        self.retired = False  # closed, or inherited through fork: instances rebind

    def admissible(self, op: int) -> bool:
        """Whether a new owner may take the lock in ``op`` mode now (``mutex`` held).

        Readers do not overtake a waiting writer of this process, so a stream
        of readers cannot starve it.
        """
        if self.busy:
            return False
        if not self.holders:
            return op == LOCK_EX or self.writers_waiting == 0
        return op == LOCK_SH and self.mode == LOCK_SH and self.writers_waiting == 0

    def wake_all(self) -> None:
        """Wake every waiter so it re-checks the state (``mutex`` held)."""
        waiters, self.waiters = self.waiters, []
        for wake in waiters:
            wake()

    def release(self, owner: object) -> bool:
        """Drop one hold of ``owner``; False if it holds nothing here."""
        with self.mutex:
            n = self.holders.get(owner)
            if n is None:
                return False
            if n > 1:
                self.holders[owner] = n - 1
                return True
            del self.holders[owner]
            if self.holders:  # other readers of this process still hold it
                return True
            kfd = self.kfd
            self.mode = 0
            self.kfd = self.fd
            try:
                _fs.flock(kfd, LOCK_UN)
            finally:
                if kfd != self.fd:
                    _fs.close(kfd)
                if self.waiters:
                    self.wake_all()
            return True

    def drop_kernel_lock(self) -> None:
        """Undo a kernel lock taken through ``fd`` by a caller that then failed.

        Only called while ``busy`` with no holder: no one in this process holds
        the lock through ``fd`` then, so unlocking cannot take anything from a
        holder. It covers a signal (KeyboardInterrupt) that lands right after
        ``flock`` returned but before the hold was recorded.
        """
        _fs.flock(self.fd, LOCK_UN)


# -- the registry -----------------------------------------------------------

_registry: dict[tuple[int, int], Entry] = {}
_registry_lock = threading.Lock()
# Entries whose FileLock was garbage-collected; counted down at the next bind
# (a finalizer may run in any thread at any time, so it only appends here).
_dead: collections.deque[Entry] = collections.deque()
# (key, owner) -> holds a forked child inherited from its parent (see forget_inherited).
_inherited: dict[tuple[tuple[int, int], object], int] = {}


def open_lock_file(path: str, mode: int | None = None) -> int:
    """Open (create if missing) the lock file at ``path``: a regular file racefree may trust.

    O_RDONLY is enough for flock and works on a lock file another user of a
    trusted directory created read-only for us. Created ``0o666 & ~umask``
    with ``O_EXCL``; never unlinked (L1). Never through a symbolic link, never
    blocking: a FIFO there would hang the open, and a link another user planted
    would make racefree create or lock a file elsewhere (filelock
    CVE-2025-68146). A link, a FIFO, a device, or another user's file in a
    shared directory raise :class:`~racefree.UnsafePathError` at once; a
    directory ``IsADirectoryError``. With ``mode`` (the lock's ``mode=``), so does
    a file with a second name there that is more open than ``mode``.
    """
    # A second name is allowed (links=True): only flock is taken on it, nothing is read,
    # written or chmodded, and a creator killed between its link() and its unlink
    # (create_with_mode) leaves one that would otherwise refuse the path for good.
    fd, st, _created = _trust.open_own(path, os.O_RDONLY, links=True)
    if mode is not None and _trust.linked(st):
        try:
            _check_linked(path, st, mode)
        except BaseException:
            _fs.close(fd)
            raise
    return fd


def _check_linked(path: str, st: os.stat_result, mode: int) -> None:
    """Refuse a lock file with a second name in a shared directory that is more open than
    the ``mode`` its ``FileLock`` asked for.

    ``mode=`` is how a caller keeps others from opening, so from holding, its lock
    (``flock`` needs only a descriptor). With ``fs.protected_hardlinks`` on, another
    user may link only a file they may open: linked in at the name, it would be a
    lock they hold for ever. racefree's own second name (``create_with_mode``'s
    temp, for microseconds, or left by a creator killed in between) has exactly
    ``mode``, so it passes. Without ``mode=`` a lock file is whatever the umask
    makes it (``0o644`` for most: others may open it), and a linked one is used.
    """
    dir_st = _fs.stat(os.path.dirname(os.path.abspath(path)) or "/")
    if not _trust.enforce or not _trust.shared(dir_st):
        return  # elsewhere every user who could link it may replace the entry anyway
    bits = stat.S_IMODE(st.st_mode) & 0o777
    if bits & ~mode:
        raise UnsafePathError(
            path,
            f"refusing to use a lock file with {st.st_nlink} names (hard links) and mode"
            f" {bits:#o}, more open than {mode:#o}, in a shared directory: anyone who may"
            " open a file may link it there, and hold the lock",
        )


def bind(owner_obj: object, path: str, mode: int | None = None) -> Entry:
    """The entry of the lock file at ``path`` (created if missing), counted for ``owner_obj``.

    When ``owner_obj`` (a FileLock) is garbage-collected its count is dropped;
    an entry no instance refers to and no one holds is closed.
    """
    # Opened outside the registry lock: a slow open (a network mount) must not
    # stall every other lock of the process.
    fd = open_lock_file(path, mode)
    try:
        st = _fs.fstat(fd)
    except BaseException:
        _fs.close(fd)
        raise
    key = (st.st_dev, st.st_ino)
    with _registry_lock:
        _reap()
        entry = _registry.get(key)
        if entry is None:
            entry = _registry[key] = Entry(fd, key, path)
            fd = -1
        entry.refs += 1
    if fd != -1:  # the file already has an entry (another instance, or another name)
        _fs.close(fd)
    weakref.finalize(owner_obj, _dead.append, entry)
    return entry


def _reap() -> None:
    """Close entries that no FileLock refers to and no one holds (``_registry_lock`` held)."""
    keep: list[Entry] = []
    while _dead:
        entry = _dead.popleft()
        if entry.retired or _registry.get(entry.key) is not entry:
            continue
        entry.refs -= 1
        if entry.refs > 0:
            continue
        with entry.mutex:
            idle = not entry.holders and not entry.busy and not entry.waiters
            if idle:
                entry.retired = True
        if idle:
            del _registry[entry.key]
            _fs.close(entry.fd)
        else:  # held by an owner that still has to release it: look again later
            entry.refs += 1
            keep.append(entry)
    _dead.extend(keep)


def forget_inherited(key: tuple[int, int], owner: object) -> bool:
    """In a forked child: drop one hold the parent had at fork time (L5).

    The child never unlocks it (the kernel lock is the parent's: both share one
    open file description), it only forgets it, so that a ``with`` block the
    parent entered before ``fork()`` can exit in the child.
    """
    with _registry_lock:
        return drop_one(_inherited, (key, owner))


def _after_fork_child() -> None:
    """Start the child with no locks: it must never unlock what the parent holds (L5).

    The child's copies of the parent's descriptors share the parent's open
    file descriptions, so ``flock(LOCK_UN)`` on one would release the parent's
    lock (filelock #634). The child closes its copies instead (a close drops a
    flock only with the last descriptor of the description, and the parent
    keeps its own) and opens fresh ones when it locks.
    """
    global _registry_lock
    _registry_lock = threading.Lock()
    old = list(_registry.values())
    _registry.clear()
    _dead.clear()
    fds: set[int] = set()
    for entry in old:
        entry.retired = True
        for owner, n in entry.holders.items():
            k = (entry.key, owner)
            _inherited[k] = _inherited.get(k, 0) + n
        fds.add(entry.fd)
        fds.add(entry.kfd)
        # The parent's mutexes may have been held by threads that do not exist
        # here; the retired entries are never used again, so nothing waits on them.
    for fd in fds:
        # EBADF: the child's copy is gone already, so there is nothing to release.
        with contextlib.suppress(OSError):
            _fs.close(fd)


# Through racefree._fork, not os.register_at_fork: the reset must run before a
# hook registered ahead of racefree's uses a lock in the child, and no lock may
# be held across the fork (that hook's `before` runs after ours). The registry
# lock is not needed for a consistent snapshot: each of its changes is one
# dict operation, and the child, alone, replaces the lock before use.
_fork.on_child(_after_fork_child)
