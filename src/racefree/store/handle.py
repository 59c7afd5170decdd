"""A :class:`racefree.Store` handle: its files, its locks, its index and catching up.

Each process keeps its own index (``id -> packed int``, see ``segment.pack``)
and learns what other processes wrote from the shared header ``store.shm``: a
read compares one u64 there (the published end) with the end its index covers,
with no system call; only when they differ does it read the new frames
(``refresh``). Writers serialise on an flock (``store.lock``), catch up, check
versions, ``pwrite`` one frame at the end, publish the new end, release the
lock and then share one fdatasync (``sync``, group commit): that write path is
:class:`racefree.store.core.Core`, a ``Handle`` that writes.

Locks: raw ``flock`` on the store's own lock files, not :class:`racefree.FileLock`,
because a put takes the lock once per call (two system calls here, the cost of
one ``get``), and because the shared header needs an exclusive-try-then-shared
flock on ``store.shm`` ("am I the only process with the store open?"), which
FileLock does not offer. The threads of one process are excluded by an RLock
first (flock is per open file description: two threads on one descriptor
would both "hold" it - pitfall L3).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import weakref
from mmap import mmap
from typing import Any

from racefree import _fork, _fs
from racefree._errors import FormatError
from racefree.store.files import (
    LOCK,
    MANIFEST,
    SHM_MAGIC,
    SYNC_LOCK,
    W_END,
    W_GEN,
    W_MAGIC,
    W_POISON,
    clear_poison_marker,
    create_segment,
    fsync_dir,
    is_store_dir_empty,
    open_segment,
    open_shm,
    poison_marker,
    seg_name,
    write_manifest,
    write_poison_marker,
)
from racefree.store.index import State, catch_up, load, rebuild

POISON_MESSAGE = (
    "an earlier fsync failed, so the store refuses writes: what it holds may differ from"
    " what is on disk. After checking the data, `racefree check --repair {0}` rewrites it"
    " durably and clears the marker {0}/POISONED"
)

#: A new store's first segment; later ones double up to the store's segment_size.
FIRST_SEGMENT = 1 << 20
_EX = fcntl.LOCK_EX
_SH = fcntl.LOCK_SH
_UN = fcntl.LOCK_UN
_NB = fcntl.LOCK_NB


# A state that never matches the shared header (end -1 is no u64), so that every
# read takes the slow path: used when the store is closed or after fork.
_DEAD_STATE = State(-1, [], -1)
_NO_WORDS = (0,) * 8

_CORES: weakref.WeakSet[Handle] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Another thread may have held a Core's RLock or been half-way through
    # updating its index when fork copied the process: the child starts over
    # with fresh locks and reopens lazily (see Core.refresh). Pitfall L5: the
    # inherited descriptors are closed at once, never unlocked: they share the
    # parent's open file descriptions, so the parent keeps whatever flock it
    # holds, and once the parent dies no idle child keeps its write lock alive
    # (a prefork worker that never touches the store would otherwise block every
    # writer until it exits). They are set to -1 so that nothing closes a reused
    # descriptor number later.
    for core in list(_CORES):
        core.mu = threading.RLock()
        core.sync_mu = threading.Lock()
        core.depth = 0
        if core.state is not _CLOSED:
            old, core.state = core.state, _DEAD_STATE
            old.close()
            core._close_fds()


_CLOSED = State(-2, [], -1)
CLOSED_MESSAGE = "the store is closed"
_fork.on_child(_after_fork_in_child)  # before any use in the child: see racefree._fork


class Handle:
    """Files, locks and the index of one open store handle (the write path is :class:`Core`)."""

    def __init__(self, directory: str, durable: bool, segment_size: int) -> None:
        self.dir = directory
        self.durable = durable
        self.segment_size = segment_size
        self.mu = threading.RLock()
        self.sync_mu = threading.Lock()
        self.depth = 0
        self.poisoned = False
        self.state: State = _DEAD_STATE
        self.words: Any = _NO_WORDS
        self.lock_fd = self.sync_fd = self.shm_fd = -1
        self.shm: mmap | None = None
        self.pid = os.getpid()
        self._open()
        _CORES.add(self)

    def first_size(self, data: int) -> int:
        """The size of a first segment for ``data`` bytes: a power of two >= 1 MiB."""
        size = FIRST_SEGMENT
        while size < data + data // 4 and size < self.segment_size:
            size *= 2
        return min(size, self.segment_size)

    # -- opening -----------------------------------------------------------------
    def _open(self) -> None:
        """Open the files; rebuild the shared header if no other process has the store open.

        Every open handle holds a shared flock on ``store.shm``. An exclusive try
        that succeeds means nobody else has the store open: the header may be stale
        (power loss) or half-written (a crash), so it is rebuilt from the segments
        under the write lock. Otherwise the header is live and the index is read
        without the write lock, so opening (and a forked child's reopen) never
        waits for a writer, nor for a parent that holds the lock.
        """
        try:
            names = _fs.listdir(self.dir)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                _fs.mkdir(self.dir)
        else:
            # Checked again under the lock; this first look creates nothing in a
            # directory that is not a store.
            if MANIFEST not in names and not is_store_dir_empty(self.dir):
                raise FormatError(self.dir, "not a racefree store (no MANIFEST), and not empty")
        flags = os.O_RDWR | os.O_CREAT | _fs.O_NOFOLLOW
        self.lock_fd = _fs.open(os.path.join(self.dir, LOCK), flags, 0o666)
        try:
            self.sync_fd = _fs.open(os.path.join(self.dir, SYNC_LOCK), flags, 0o666)
            self.shm_fd, self.shm = open_shm(self.dir)
            self.words = memoryview(self.shm).cast("Q")
            try:
                _fs.flock(self.shm_fd, _EX | _NB)
                first = True
            except BlockingIOError:
                first = False
            if not first:
                _fs.flock(self.shm_fd, _SH)  # waits while a first opener rebuilds
                if self.words[W_MAGIC] == SHM_MAGIC:
                    self.state = load(self)
                    self._check_poison()
                    return
            _fs.flock(self.lock_fd, _EX)
            try:
                self._create_if_new()
                if first:
                    self.words[W_POISON] = 0
                self.words[W_MAGIC] = 0
                state = rebuild(self)
                self.words[W_MAGIC] = SHM_MAGIC
                if first:
                    _fs.flock(self.shm_fd, _SH)
            finally:
                _fs.flock(self.lock_fd, _UN)
            self.state = state
            self._check_poison()
        except BaseException:
            self._close_fds()
            raise

    def _check_poison(self) -> None:
        # An fsync failed in some earlier life of the store (the marker survives every
        # close): writes stay refused until the data is verified (W7, fsyncgate).
        if poison_marker(self.dir):
            self.poisoned = True
            self.words[W_POISON] = 1

    def _create_if_new(self) -> None:
        try:
            _fs.stat(os.path.join(self.dir, MANIFEST))
            return
        except FileNotFoundError:
            pass
        if not is_store_dir_empty(self.dir):  # CorruptFileError if it holds segments
            raise FormatError(self.dir, "not a racefree store (no MANIFEST), and not empty")
        fd = create_segment(self.dir, 1, self.first_size(0), zero_fill=True)
        _fs.close(fd)
        write_manifest(self.dir, 0, [1])
        # The store's directory may have just been made (by this process or by a
        # racing first opener): its name in the parent must survive a power loss
        # too, or an acknowledged durable put could vanish with the whole store (W2).
        fsync_dir(os.path.dirname(os.path.abspath(self.dir)))

    def _close_fds(self) -> None:
        # The view is dropped, not released: a thread that loaded it just before
        # (a get's fast path, a sync) keeps reading a valid mapping, which is
        # unmapped once the last such reference is gone.
        self.words = _NO_WORDS
        if self.shm is not None:
            with contextlib.suppress(BufferError, ValueError):
                self.shm.close()
            self.shm = None
        for fd in (self.lock_fd, self.sync_fd, self.shm_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    _fs.close(fd)
        self.lock_fd = self.sync_fd = self.shm_fd = -1

    def __del__(self) -> None:
        # A Store that was never closed: release its descriptors (and so its flocks).
        with contextlib.suppress(Exception):
            if self.state is not _CLOSED:
                self.state.close()
                self._close_fds()

    def close(self) -> None:
        # The sync mutex too: a group commit running in another thread finishes on
        # its descriptors before they are closed (an fdatasync on a closed or reused
        # descriptor would fail as EBADF, and poison the store for every process).
        if _fork.maybe_child:
            _fork.check()  # a forked child resets first, whatever ran before it (L5)
        with self.mu, self.sync_mu:
            if self.state is _CLOSED:
                return
            self.state.close()
            self.state = _CLOSED
            self._close_fds()

    def _reopen_after_fork(self) -> None:
        # The inherited descriptors were closed by the fork hook (L5); new ones are ours.
        self._close_fds()
        self.pid = os.getpid()
        self._open()

    # -- loading the index ---------------------------------------------------------
    def seg_path(self, seg: int) -> str:
        return os.path.join(self.dir, seg_name(seg))

    def map_segment(self, st: State, seg: int) -> None:
        fd, mm = open_segment(self.dir, seg)
        st.fds[seg] = fd
        st.maps[seg] = mm

    def zero(self, st: State, seg: int, start: int, stop: int) -> None:
        """Overwrite a torn tail (bytes of a write that never completed) with zeros."""
        if stop > start:
            _fs.pwrite_all(st.fds[seg], bytes(stop - start), start)

    def rebuilt(self) -> State:
        st = rebuild(self)
        self.state = st
        return st

    def refresh(self) -> State:
        """The current state, caught up with every write published before this call."""
        if _fork.maybe_child:
            _fork.check()  # a forked child resets first, whatever ran before it (L5)
        with self.mu:
            st = self.state
            if st is _CLOSED:
                raise ValueError(CLOSED_MESSAGE)
            if st is _DEAD_STATE:
                if self.pid != os.getpid():
                    self._reopen_after_fork()
                st = self.state
            w = self.words
            endw = w[W_END]
            if endw == st.end:
                return st
            # A compaction in flight (W_INPROG) with the generation unchanged: its
            # segments are not live yet and the old ones stay until it publishes,
            # so catch up in the old generation, without waiting for the compactor.
            if w[W_GEN] != st.gen:
                new = load(self)
                self.state = new
                return new
            if catch_up(self, st, endw):
                return st
            new = load(self)  # a compaction committed while we were catching up
            self.state = new
            return new

    def acquire(self) -> None:
        """Take the write lock: this thread first (RLock), then this process (flock)."""
        if _fork.maybe_child:
            _fork.check()  # a forked child resets first, whatever ran before it (L5)
        self.mu.acquire()
        if self.depth == 0:
            try:
                if self.state is _CLOSED:
                    raise ValueError(CLOSED_MESSAGE)
                if self.state is _DEAD_STATE and self.pid != os.getpid():
                    self._reopen_after_fork()
                _fs.flock(self.lock_fd, _EX)
            except BaseException:
                self.mu.release()
                raise
        self.depth += 1

    def release(self) -> None:
        self.depth -= 1
        try:
            if self.depth == 0 and self.lock_fd >= 0:  # closed inside a write: already free
                _fs.flock(self.lock_fd, _UN)
        finally:
            self.mu.release()

    def poison(self) -> None:
        """After any DurabilityError: no process writes to this store again (W7, fsyncgate).

        Marked in the shared header (every process that has the store open) and by
        the ``POISONED`` file (every later open), until ``racefree check --repair``
        rewrites the data durably and clears it.
        """
        first = not self.poisoned
        self.poisoned = True
        if isinstance(self.words, memoryview):
            self.words[W_POISON] = 1
        if first:
            # Best effort on a disk that just failed an fsync: the DurabilityError
            # being raised already stops this process and every open one.
            with contextlib.suppress(OSError):
                write_poison_marker(self.dir, "an fsync failed; see docs/store.md")

    def clear_poison(self) -> None:
        """After the data was rewritten and synced (write lock held): accept writes again."""
        clear_poison_marker(self.dir)
        self.words[W_POISON] = 0
        self.poisoned = False
