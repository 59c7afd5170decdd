"""The per-process state of a store's locks, shared by every handle on one directory.

A store's write lock is an ``flock`` on ``store.lock`` (processes) behind an
``RLock`` (threads: flock belongs to the open file description, so two threads
on one descriptor would both "hold" it, pitfall L3). Like
:class:`racefree.FileLock`'s registry, that state exists once per process per
store directory (keyed by its device and inode), and every :class:`Store`
object on the directory uses it: a write through one handle inside another's
``update(fn)`` on the same thread is reentrant, instead of waiting forever for
an flock that its own process holds through another descriptor; another thread
waits its turn. The group-commit lock (``sync.lock``) is shared the same way.

Fork (pitfall L5): the child closes its copies of the descriptors at once,
never unlocking them (they share the parent's open file descriptions, whose
locks stay the parent's), and reopens them at its next use. A child forked by a
thread that held the write lock (inside ``update(fn)``) is inside a locked call
whose lock it does not hold: ``inherited`` is set until it leaves that call,
and every write path raises :class:`racefree.InheritedLockError` meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Iterator

from racefree import _fork, _fs
from racefree._errors import UnsafePathError
from racefree.store.files import LOCK, SYNC_LOCK
from racefree.store.owned import open_lock

__all__ = ["StoreLocks", "acquire_locks", "release_locks"]

_EX = fcntl.LOCK_EX
_UN = fcntl.LOCK_UN


class StoreLocks:
    """The write lock and the sync lock of one store directory, in this process.

    ``mu`` is held by a writer for its whole locked call (and by readers that
    change a handle's index); ``depth`` counts its holds. Fields change under
    ``mu`` (the sync fields under ``sync_mu``).
    """

    __slots__ = (
        "depth", "dir", "inherited", "key", "lock_fd", "mu", "open_mu", "owner", "refs",
        "sync_fd", "sync_mu",
    )

    def __init__(self, key: tuple[int, int], directory: str) -> None:
        self.key = key
        self.dir = directory
        self.mu = threading.RLock()
        self.sync_mu = threading.Lock()
        # Guards opening the two descriptors, so that a new handle opens them
        # without waiting for a writer that holds ``mu`` (a leaf: taken last).
        self.open_mu = threading.Lock()
        self.depth = 0
        self.owner = 0  # the thread holding the write lock (depth > 0)
        self.inherited = False  # held by the parent when this process was forked
        self.lock_fd = -1
        self.sync_fd = -1
        self.refs = 0

    def open_files(self, *, create: bool) -> None:
        """Open ``store.lock`` (and ``sync.lock`` when ``create``: writers) if not open yet.

        Read-only handles open ``store.lock`` for reading (flock needs no write
        access) and only if it exists; its absence means no writer has opened
        the store, so there is nothing to wait for. Its mode keeps out users who
        may not write the store (``owned.open_lock``): a read-only handle of
        theirs does without it (it never attaches to the header either, which
        is closed to them the same way, so it never takes this lock).
        """
        with self.open_mu:
            if self.lock_fd < 0:
                flags = os.O_RDWR if create else os.O_RDONLY
                try:
                    self.lock_fd = open_lock(self.dir, LOCK, flags, create=create)[0]
                except FileNotFoundError:
                    if create:
                        raise
                except PermissionError as exc:
                    if create or isinstance(exc, UnsafePathError) or exc.errno != errno.EACCES:
                        raise
            if create and self.sync_fd < 0:
                self.sync_fd = open_lock(self.dir, SYNC_LOCK, os.O_RDWR, create=True)[0]

    def take(self, *, create: bool) -> None:
        """One more hold of the write lock by the thread holding ``mu`` (flock on the first)."""
        if self.depth == 0 and not self.inherited:
            if self.lock_fd < 0:
                self.open_files(create=create)
            if self.lock_fd >= 0:
                _fs.flock(self.lock_fd, _EX)
            self.owner = threading.get_ident()
        self.depth += 1

    def drop(self) -> None:
        """One hold less (``mu`` held); the last releases the flock (or ends an inherited hold)."""
        self.depth -= 1
        if self.depth == 0:
            if self.inherited:
                self.inherited = False  # the parent's lock: nothing here to release
            elif self.lock_fd >= 0:  # closed inside a write: already free
                _fs.flock(self.lock_fd, _UN)

    @contextlib.contextmanager
    def syncing(self) -> Iterator[None]:
        """Hold the group-commit lock: this process's threads, then the processes (flock)."""
        with self.sync_mu, self.syncing_held():
            yield

    @contextlib.contextmanager
    def syncing_held(self) -> Iterator[None]:
        """The processes' half of :meth:`syncing`, for a caller that holds ``sync_mu``."""
        fd = self.sync_lock_fd()
        _fs.flock(fd, _EX)
        try:
            yield
        finally:
            _fs.flock(fd, _UN)

    def sync_lock_fd(self) -> int:
        """``sync.lock``'s descriptor (opened on first use), for a caller holding ``sync_mu``."""
        if self.sync_fd < 0:
            self.open_files(create=True)
        return self.sync_fd

    def close_fds(self) -> None:
        with self.open_mu:
            fds = self._take_fds()
        _close_all(fds)

    def _take_fds(self) -> tuple[int, int]:
        """The descriptors, forgotten here first, so nothing closes a reused number later."""
        fds = (self.lock_fd, self.sync_fd)
        self.lock_fd = self.sync_fd = -1
        return fds

    def after_fork(self) -> None:
        """In the child: fresh mutexes, the inherited descriptors closed (never unlocked)."""
        held = self.depth if self.depth and self.owner == threading.get_ident() else 0
        self.mu = threading.RLock()
        self.sync_mu = threading.Lock()
        self.open_mu = threading.Lock()
        for _ in range(held):
            # The forking thread is inside a locked call: its stack will release
            # these holds as it unwinds; the flock itself stays the parent's.
            self.mu.acquire()
        self.depth = held
        self.inherited = bool(held)
        _close_all(self._take_fds())


def _close_all(fds: tuple[int, ...]) -> None:
    """Close each open descriptor; a lock's descriptor always closes (errors ignored)."""
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                _fs.close(fd)


_REGISTRY: dict[tuple[int, int], StoreLocks] = {}
_REGISTRY_MU = threading.RLock()  # reentrant: a handle's __del__ may run inside it


def acquire_locks(key: tuple[int, int], directory: str) -> StoreLocks:
    """The shared lock state of the store directory ``key`` (device, inode); one more user."""
    with _REGISTRY_MU:
        locks = _REGISTRY.get(key)
        if locks is None:
            locks = _REGISTRY[key] = StoreLocks(key, directory)
        locks.refs += 1
        return locks


def release_locks(locks: StoreLocks) -> None:
    """One user less; the last one closes the lock files (releasing what they held)."""
    with _REGISTRY_MU:
        locks.refs -= 1
        if locks.refs > 0:
            return
        if _REGISTRY.get(locks.key) is locks:
            del _REGISTRY[locks.key]
    with locks.mu, locks.sync_mu:
        locks.close_fds()


def _after_fork_in_child() -> None:
    for locks in list(_REGISTRY.values()):
        locks.after_fork()


_fork.on_child(_after_fork_in_child)  # before any use in the child: see racefree._fork
