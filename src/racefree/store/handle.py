"""A :class:`racefree.Store` handle: its files, its locks, its index and catching up.

Each process keeps its own index (``id -> packed int``, see ``segment.pack``)
and learns what other processes wrote from the shared header ``store.shm``: a
read compares one u64 there (the published end) with the end its index covers
(a memory load when the header is mapped, see ``store.header``); only when they
differ does it read the new frames (``refresh``). Writers serialise on an flock
(``store.lock``), catch up, check versions, ``pwrite`` one frame at the end,
publish the new end, release the lock and then share one fdatasync (``sync``,
group commit): that write path is :class:`racefree.store.core.Core`, a
``Handle`` that writes.

Locks: raw ``flock`` on the store's own lock files, not :class:`racefree.FileLock`,
because a put takes the lock once per call (two system calls here, the cost of
one ``get``), and because the shared header needs an exclusive-try-then-shared
flock on ``store.shm`` ("am I the only process with the store open?"), which
FileLock does not offer. The lock state is shared by every handle on the
directory in this process (``store.locks``).

Read-only handles (``readonly=True``) open every file for reading only and
never write the header; how they follow other processes' writes is in
``store.readonly``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import weakref
from typing import Any

from racefree import _fork, _fs
from racefree._errors import FormatError, InheritedLockError
from racefree.store import files, readonly
from racefree.store.commit import claim_slot
from racefree.store.files import (
    MANIFEST,
    SHM_MAGIC,
    SLOTS,
    W_END,
    W_GEN,
    W_MAGIC,
    W_POISON,
    W_RECENT,
    W_SLOT0,
    W_SLOTS,
    W_SYNCED,
    clear_poison_marker,
    create_segment,
    fsync_dir,
    is_store_dir_empty,
    poison_marker,
    read_manifest,
    seg_name,
    write_manifest,
    write_poison_marker,
)
from racefree.store.header import Header, mark_live, open_header
from racefree.store.index import State, SyncedLost, catch_up, load, rebuild, synced_floor
from racefree.store.locks import StoreLocks, acquire_locks, release_locks
from racefree.store.owned import resolve_dir

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
    # Another thread may have been half-way through updating an index when fork
    # copied the process: the child starts over and reopens lazily (see
    # refresh). Pitfall L5: the inherited descriptors are closed at once, never
    # unlocked (they share the parent's open file descriptions, whose flocks
    # stay the parent's); the lock files are handled by ``store.locks``.
    for core in list(_CORES):
        if core.state is not _CLOSED:
            old, core.state = core.state, _DEAD_STATE
            old.close()
            core._close_header()


_CLOSED = State(-2, [], -1)
CLOSED_MESSAGE = "the store is closed"
_fork.on_child(_after_fork_in_child)  # before any use in the child: see racefree._fork


class Handle:
    """Files, locks and the index of one open store handle (the write path is :class:`Core`)."""

    def __init__(
        self, directory: str, durable: bool, segment_size: int, *, readonly: bool = False,
        cache_bytes: int = 0,
    ) -> None:
        self.durable = durable
        self.cache_bytes = cache_bytes  # the bound of each State's document cache
        self.segment_size = segment_size
        self.readonly = readonly
        self.poisoned = False
        self.slot = -1  # group commit: this handle's slot in the header (store.commit)
        self.sync_cost = 0.0  # seconds an fdatasync took here lately (store.commit)
        self.state: State = _DEAD_STATE
        self.words: Any = _NO_WORDS
        self.fast: Any = _NO_WORDS  # the same words, for the hot path (``Header.fast``)
        self.hdr: Header | None = None
        self.attached = False  # read-only: trusts the header (holds its shared flock)
        self.seen: tuple[int, ...] | None = None  # read-only, detached: the words last seen
        self.header_closed = False  # read-only: store.shm is closed to this user (its mode)
        self.pid = os.getpid()
        self.dir, dir_st = resolve_dir(directory, create=not readonly)
        self.locks: StoreLocks = acquire_locks((dir_st.st_dev, dir_st.st_ino), self.dir)
        self.released = False
        try:
            self._open()
        except BaseException:
            self._release_locks()
            raise
        _CORES.add(self)

    @property
    def mu(self) -> Any:
        """The write lock's in-process part (an RLock), shared by this directory's handles."""
        return self.locks.mu

    @property
    def sync_mu(self) -> Any:
        return self.locks.sync_mu

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
        under the write lock. Otherwise the header is live, and the index is read
        without the write lock, so opening (and a forked child's reopen) never
        waits for a writer, nor for a parent that holds the lock.
        """
        if self.readonly:
            readonly.open_readonly(self)
            return
        names = _fs.listdir(self.dir)
        # Checked again under the lock; this first look creates nothing in a
        # directory that is not a store, nor next to a MANIFEST that is not ours
        # (a link, a FIFO, another user's file: UnsafePathError).
        if MANIFEST in names:
            read_manifest(self.dir)
        elif not is_store_dir_empty(self.dir):
            raise FormatError(self.dir, "not a racefree store (no MANIFEST), and not empty")
        locks = self.locks
        locks.open_files(create=True)
        hdr = self.hdr = open_header(self.dir)
        self.words, self.fast = hdr.words, hdr.fast
        try:
            try:
                _fs.flock(hdr.fd, _EX | _NB)
                first = True
            except BlockingIOError:
                first = False
            if not first:
                _fs.flock(hdr.fd, _SH)  # waits while a first opener rebuilds
                if self.words[W_MAGIC] == SHM_MAGIC:
                    self.state = load(self)
                    self._check_poison()
                    mark_live(hdr.fd)
                    self._claim_slot()
                    return
            with locks.mu:
                locks.take(create=True)
                try:
                    if locks.inherited:
                        raise InheritedLockError(self.dir)
                    created = self._create_if_new()
                    # A new store (its files removed, say) owes nothing to an old header.
                    floor = (synced_floor(self.words, read_manifest(self.dir)[0])
                             if first and not created else 0)
                    if first:
                        self.words[W_POISON] = 0
                        for i in range(W_RECENT, W_SLOT0 + SLOTS):
                            self.words[i] = 0  # no slot is held: nobody has the store open
                    self.words[W_MAGIC] = 0
                    try:
                        state = rebuild(self, floor)
                    except SyncedLost:
                        # Raised before anything changed: the header stays as it was,
                        # so that every later open refuses the store the same way.
                        self.words[W_MAGIC] = SHM_MAGIC
                        raise
                    self.words[W_MAGIC] = SHM_MAGIC
                    if first:
                        _fs.flock(hdr.fd, _SH)
                finally:
                    locks.drop()
            self.state = state
            self._check_poison()
            mark_live(hdr.fd)
            self._claim_slot()
        except BaseException:
            self._close_header()
            raise

    def _claim_slot(self) -> None:
        # Group commit (store.commit): a durable handle is waited for by the other
        # writers' fdatasyncs; its slot is a record lock the kernel drops at close.
        if self.durable and self.hdr is not None:
            self.slot = claim_slot(self.hdr.fd)
            if self.slot >= 0:
                with self.locks.syncing():  # a bitmap other processes update too
                    self.words[W_SLOTS] |= 1 << self.slot

    def _check_poison(self) -> None:
        # An fsync failed in some earlier life of the store (the marker survives every
        # close): writes stay refused until the data is verified (W7, fsyncgate).
        # (A read-only handle writes nothing, so it never looks.)
        if poison_marker(self.dir):
            self.poisoned = True
            self.words[W_POISON] = 1

    def _create_if_new(self) -> bool:
        """Make the first segment and the MANIFEST of a new store; whether it was new."""
        try:
            _fs.stat(os.path.join(self.dir, MANIFEST), follow_symlinks=False)
            return False
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
        fsync_dir(os.path.dirname(self.dir))
        return True

    def _close_header(self) -> None:
        self.words = self.fast = _NO_WORDS
        self.slot = -1  # its record lock goes with the descriptor
        self.attached = False
        hdr, self.hdr = self.hdr, None
        if hdr is not None:
            if self.pid == os.getpid():
                hdr.unlock()  # ours, not inherited: see Header.unlock
            hdr.close()  # closing the descriptor drops its flock and its liveness lock

    def _release_locks(self) -> None:
        if not self.released:
            self.released = True
            release_locks(self.locks)

    def __del__(self) -> None:
        # A Store that was never closed: release its descriptors (and so its flocks).
        with contextlib.suppress(Exception):
            if self.state is not _CLOSED:
                self.state.close()
                self._close_header()
                self._release_locks()

    def close(self) -> None:
        # The sync mutex too: a group commit running in another thread finishes on
        # its descriptors before they are closed (an fdatasync on a closed or reused
        # descriptor would fail as EBADF, and poison the store for every process).
        if _fork.maybe_child:
            _fork.check()  # a forked child resets first, whatever ran before it (L5)
        locks = self.locks
        with locks.mu, locks.sync_mu:
            if self.state is _CLOSED:
                return
            self.state.close()
            self.state = _CLOSED
            self._close_header()
        self._release_locks()

    def _reopen_after_fork(self) -> None:
        # The inherited descriptors were closed by the fork hook (L5); new ones are ours.
        self._close_header()
        self.pid = os.getpid()
        self._open()

    # -- loading the index ---------------------------------------------------------
    def seg_path(self, seg: int) -> str:
        return os.path.join(self.dir, seg_name(seg))

    def open_segment(self, st: State, seg: int) -> None:
        fd, size = files.open_segment(self.dir, seg, writable=not self.readonly)
        st.fds[seg] = fd
        st.sizes[seg] = size

    def zero(self, st: State, seg: int, start: int, stop: int) -> None:
        """Overwrite a torn tail (bytes of a write that never completed) with zeros."""
        if stop > start:
            _fs.pwrite_all(st.fds[seg], bytes(stop - start), start)

    def set_synced(self, value: int) -> None:
        """Record that everything before ``value`` is fdatasynced (under the sync lock:
        a header read with pread is only read there, so it never sees half a store)."""
        with self.locks.syncing():
            self.words[W_SYNCED] = value

    def rebuilt(self) -> State:
        if self.readonly:
            return readonly.detach(self)  # only a writer may finish a dead compactor's switch
        if self.locks.inherited:
            raise InheritedLockError(self.dir)
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
            if self.readonly and not self.attached:
                return readonly.refresh_detached(self)
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
        """Take the write lock: this thread first (RLock), then this process (flock).

        Shared with every handle on the directory in this process: reentrant for
        the thread that holds it, whichever handle it came through.
        """
        if _fork.maybe_child:
            _fork.check()  # a forked child resets first, whatever ran before it (L5)
        locks = self.locks
        locks.mu.acquire()
        try:
            if self.state is _CLOSED:
                raise ValueError(CLOSED_MESSAGE)
            if self.state is _DEAD_STATE and self.pid != os.getpid():
                self._reopen_after_fork()
            locks.take(create=not self.readonly)
        except BaseException:
            locks.mu.release()
            raise

    def release(self) -> None:
        locks = self.locks
        try:
            locks.drop()
        finally:
            locks.mu.release()

    def poison(self) -> None:
        """After any DurabilityError: no process writes to this store again (W7, fsyncgate).

        Marked in the shared header (every process that has the store open) and by
        the ``POISONED`` file (every later open), until ``racefree check --repair``
        rewrites the data durably and clears it.
        """
        first = not self.poisoned
        self.poisoned = True
        if self.hdr is not None:
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
