"""The machinery under :class:`racefree.Store`: files, locks, the index and catching up.

Each process keeps its own index (``id -> packed int``, see ``_segment.pack``)
and learns what other processes wrote from the shared header ``store.shm``: a
read compares one u64 there (the published end) with the end its index covers,
with no system call; only when they differ does it read the new frames
(``refresh``). Writers serialise on an flock (``store.lock``), catch up, check
versions, ``pwrite`` one frame at the end, publish the new end, release the
lock and then share one fdatasync (``sync``, group commit).

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
import errno
import fcntl
import os
import threading
import weakref
from mmap import mmap
from typing import Any

from . import _fs
from ._errors import DurabilityError, FormatError
from ._segment import M36, M40, SEG_HEADER, ZERO4, index_frames, last_nonzero
from ._store_files import (
    LOCK,
    MANIFEST,
    SHM_MAGIC,
    SYNC_LOCK,
    W_DEAD,
    W_END,
    W_GEN,
    W_INPROG,
    W_MAGIC,
    W_POISON,
    W_SYNCED,
    W_TOTAL,
    clear_poison_marker,
    create_segment,
    fdatasync,
    fsync_dir,
    is_store_dir_empty,
    open_segment,
    open_shm,
    poison_marker,
    seg_name,
    write_manifest,
    write_poison_marker,
)
from ._store_index import State, catch_up, load, rebuild

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

_CORES: weakref.WeakSet[Core] = weakref.WeakSet()


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
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Core:
    """Files, locks and the index of one open store handle."""

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

    def writable(self, poisoned_ok: bool = False) -> State:
        """The caught-up state, for a writer holding the write lock."""
        w = self.words
        if (self.poisoned or w[W_POISON]) and not poisoned_ok:
            raise DurabilityError(self.dir, errno.EIO, POISON_MESSAGE.format(self.dir))
        if w[W_INPROG]:
            self.rebuilt()  # a compactor died between its manifest and its publish
        st = self.refresh()
        seg, off = st.end >> 40, st.end & M40
        mm = st.maps[seg]
        if off + 4 <= len(mm) and mm[off:off + 4] != ZERO4:
            # Bytes past the published end: a writer died after its pwrite (a whole
            # frame: adopt it, it was checked under the lock) or in the middle of it
            # (a torn frame: zero it). Done before the caller checks any version.
            self._repair_tail(st, seg, off)
        return st

    def append(self, st: State, frame: bytes) -> tuple[int, int]:
        """Write ``frame`` at the end (not yet published); returns ``(seg, offset)``."""
        seg, off = st.end >> 40, st.end & M40
        mm = st.maps[seg]
        if off + len(frame) > len(mm):
            seg, off = self._roll(st, len(frame)), SEG_HEADER.size
        fd = st.fds[seg]
        n = _fs.pwrite(fd, frame, off)
        if n != len(frame):
            _fs.pwrite_all(fd, memoryview(frame)[n:], off + n)
        return seg, off

    def _repair_tail(self, st: State, seg: int, off: int) -> None:
        mm = st.maps[seg]
        path = self.seg_path(seg)
        index: dict[str, int] = {}
        tomb: dict[str, int] = {}
        end, torn, _, total = index_frames(
            mm, off, len(mm), seg, index, tomb, path, unpublished=True
        )
        if torn:
            self.zero(st, seg, end, last_nonzero(memoryview(mm), end, len(mm)))
            # Synced before anything is written over it: a power loss that tore the
            # next record must find zeros under it, not this garbage (which would
            # make a torn write look like damage).
            try:
                fdatasync(st.fds[seg], path)
            except DurabilityError:
                self.poison()
                raise
        old = st.index
        dead = 0
        for key in (*index, *tomb):
            value = old.get(key)
            if value is not None:
                dead += ((value >> 40) & M36) + len(key) + 29
        self.apply(st, seg << 40 | end, dead, total, index, tomb)

    def apply(
        self, st: State, endw: int, dead: int, total: int,
        puts: dict[str, int], deletes: dict[str, int],
    ) -> None:
        """Publish ``endw`` and apply several changes to the index, all at once for readers.

        The shared end moves first and ``st.end`` last: in between, a reader of this
        process sees them differ and waits in ``refresh`` for the write lock this
        writer holds, so no thread sees half of a batch (its lock-free ``get``
        never sees an index that is part old, part new).
        """
        w = self.words
        if dead:
            w[W_DEAD] += dead
        if total:
            w[W_TOTAL] += total
        w[W_END] = endw
        index, tomb = st.index, st.tomb
        for key, version in deletes.items():
            index.pop(key, None)
            tomb[key] = version
        if puts:
            index.update(puts)
            if tomb:
                for key in puts:
                    tomb.pop(key, None)
        st.end = endw

    def _roll(self, st: State, need: int) -> int:
        """Seal the active segment and start the next one (under the write lock)."""
        old = st.segs[-1]
        new = old + 1
        # The sealed segment is synced before the next one is used (durable or not):
        # then a damaged record in a sealed segment is always corruption, never a
        # write that was in flight at a power loss.
        try:
            fdatasync(st.fds[old], self.seg_path(old))
        except DurabilityError:
            self.poison()  # W7: never retried; no process writes any more
            raise
        sealed = st.end
        with self.sync_mu:
            _fs.flock(self.sync_fd, _EX)
            try:
                if sealed > self.words[W_SYNCED]:
                    self.words[W_SYNCED] = sealed
            finally:
                _fs.flock(self.sync_fd, _UN)
        # Segments grow by doubling up to segment_size, so that a small store stays
        # small on disk and a large one rolls rarely.
        grown = min(self.segment_size, 2 * len(st.maps[old]))
        size = max(grown, need + SEG_HEADER.size)
        fd = create_segment(self.dir, new, size, zero_fill=True)
        try:
            mm = _fs.mmap(fd, size)
            # The manifest names the segment before any process is told to use it.
            write_manifest(self.dir, st.gen, [*st.segs, new])
        except BaseException:
            _fs.close(fd)
            raise
        st.fds[new] = fd
        st.maps[new] = mm
        st.segs = [*st.segs, new]
        self.publish(st, new << 40 | SEG_HEADER.size, 0, 0)
        return new

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

    def publish(self, st: State, endw: int, dead: int, total: int) -> None:
        """Make everything before ``endw`` visible to every process (after the pwrite)."""
        w = self.words
        if dead:
            w[W_DEAD] += dead
        if total:
            w[W_TOTAL] += total
        w[W_END] = endw
        st.end = endw

    def _sync_segment(self, fd: int, seg: int) -> None:
        if fd >= 0:
            fdatasync(fd, self.seg_path(seg))
            return
        # Not in this handle's state (closed meanwhile, or rolled by another
        # process after our write): sync the file by name.
        try:
            fd = _fs.open(self.seg_path(seg), os.O_RDWR | _fs.O_NOFOLLOW)
        except FileNotFoundError:
            return  # an orphan number: never named by the manifest, nothing to sync
        try:
            fdatasync(fd, self.seg_path(seg))
        finally:
            _fs.close(fd)

    def sync(self, endw: int) -> None:
        """Group commit: return once every byte before ``endw`` is fdatasynced.

        Called after the write lock is released. One process at a time (the sync
        lock) fdatasyncs everything published so far and records it in the shared
        header; a writer whose end is already covered returns without a system call.
        """
        w = self.words
        if w[W_SYNCED] >= endw:
            return
        with self.sync_mu:
            if self.state is _CLOSED:
                # Closed by another thread after this write was published: it was
                # written, but its fdatasync did not run.
                raise ValueError(CLOSED_MESSAGE + " (the write was made, not yet synced)")
            w = self.words
            _fs.flock(self.sync_fd, _EX)
            try:
                if w[W_SYNCED] >= endw:
                    return
                if self.poisoned or w[W_POISON]:
                    raise DurabilityError(self.dir, errno.EIO, POISON_MESSAGE.format(self.dir))
                # Everything published before this load was written before it: one
                # fdatasync covers every writer that published so far (group commit).
                target = max(w[W_END], endw)
                st = self.state
                # W_SYNCED < endw: no compaction ran since our write (it would have
                # set W_SYNCED past it), so these segments all still exist.
                for seg in range(w[W_SYNCED] >> 40, (target >> 40) + 1):
                    fd = st.fds.get(seg, -1)
                    if fd < 0 and seg != target >> 40 and seg not in st.segs:
                        continue  # a number no segment of this generation has
                    try:
                        self._sync_segment(fd, seg)
                    except DurabilityError:
                        # W7: never retried; no process writes to this store again.
                        self.poison()
                        raise
                if target > w[W_SYNCED]:
                    w[W_SYNCED] = target
            finally:
                _fs.flock(self.sync_fd, _UN)
