"""The write path of a :class:`racefree.Store` handle: append, publish, roll, group commit.

A writer holds the write lock (``Handle.acquire``), catches up (``writable``),
checks versions, ``pwrite``s one frame at the end of the active segment
(``append``, rolling to a new segment when it is full), makes it visible to
every process (``apply`` / ``publish``: one u64 store in the shared header),
releases the lock, and then shares one fdatasync with every writer that
published meanwhile (``sync``: group commit). A failed fdatasync is never
retried: the store is poisoned for every process (W7).
"""

from __future__ import annotations

import errno

from racefree import _fs
from racefree._errors import CorruptFileError, DurabilityError, InheritedLockError, ReadOnlyError
from racefree.store import commit
from racefree.store.files import (
    W_DEAD,
    W_END,
    W_INPROG,
    W_POISON,
    W_SLOT0,
    W_SYNCED,
    W_TOTAL,
    create_segment,
    fdatasync,
    read_segment,
    write_manifest,
)
from racefree.store.handle import _CLOSED, CLOSED_MESSAGE, POISON_MESSAGE, Handle
from racefree.store.index import State, apply_changes
from racefree.store.segment import (
    M36,
    M40,
    SEG_HEADER,
    ZERO4,
    index_frames,
    last_nonzero,
    reclaim,
)

__all__ = ["CLOSED_MESSAGE", "Core"]


class Core(Handle):
    """A store handle that writes: every method here runs under the write lock but ``sync``."""

    def acquire_write(self) -> None:
        """Take the write lock to write: ``ReadOnlyError`` at once for a read-only handle."""
        if self.readonly:
            raise ReadOnlyError(self.dir, "the store was opened with readonly=True")
        self.acquire()

    def writable(self, poisoned_ok: bool = False) -> State:
        """The caught-up state, for a writer holding the write lock.

        Refuses before anything is written: a read-only handle
        (:class:`ReadOnlyError`), a child forked inside a locked call whose lock
        is its parent's (:class:`InheritedLockError`), a poisoned store
        (:class:`DurabilityError`), a segment cut short (:class:`CorruptFileError`).
        """
        if self.readonly:
            raise ReadOnlyError(self.dir)
        if self.locks.inherited:
            raise InheritedLockError(self.dir)
        w = self.words
        if (self.poisoned or w[W_POISON]) and not poisoned_ok:
            raise DurabilityError(self.dir, errno.EIO, POISON_MESSAGE.format(self.dir))
        if w[W_INPROG]:
            self.rebuilt()  # a compactor died between its manifest and its publish
        st = self.refresh()
        seg, off = st.end >> 40, st.end & M40
        if off + 4 <= st.sizes[seg]:
            # One pread, not a mapped load: a segment cut short is a short read here.
            head = _fs.pread(st.fds[seg], 4, off)
            if len(head) < 4:
                raise CorruptFileError(
                    self.seg_path(seg), "the segment is shorter than when it was opened (cut"
                    " short by someone)", offset=off,
                )
            if head != ZERO4:
                # Bytes past the published end: a writer died after its pwrite (a whole
                # frame: adopt it, it was checked under the lock) or in the middle of it
                # (a torn frame: zero it). Done before the caller checks any version.
                self._repair_tail(st, seg, off)
        return st

    def append(self, st: State, frame: bytes) -> tuple[int, int]:
        """Write ``frame`` at the end (not yet published); returns ``(seg, offset)``."""
        seg, off = st.end >> 40, st.end & M40
        if off + len(frame) > st.sizes[seg]:
            seg, off = self._roll(st, len(frame)), SEG_HEADER.size
            # The roll synced the sealed segment: this first record of the new one
            # claims it, so that recovery knows where the sealed segment's synced
            # records end (segment.unsynced_loss).
            frame = reclaim(frame, self.words[W_SYNCED])
        fd = st.fds[seg]
        n = _fs.pwrite(fd, frame, off)
        if n != len(frame):
            _fs.pwrite_all(fd, memoryview(frame)[n:], off + n)
        return seg, off

    def _repair_tail(self, st: State, seg: int, off: int) -> None:
        buf = read_segment(st.fds[seg], off, st.sizes[seg])
        path = self.seg_path(seg)
        index: dict[str, int] = {}
        tomb: dict[str, int] = {}
        rel, torn, _, total = index_frames(
            buf, 0, len(buf), seg, index, tomb, path, base=off, unpublished=True
        )
        end = off + rel
        if torn:
            self.zero(st, seg, end, off + last_nonzero(memoryview(buf), rel, len(buf)))
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
        if self.slot >= 0:
            w[W_SLOT0 + self.slot] = endw  # for group commit: this handle has a record to sync
        apply_changes(st, puts, deletes)  # the cache drops them before st.end moves
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
        with self.locks.syncing():
            if sealed > self.words[W_SYNCED]:
                self.words[W_SYNCED] = sealed
        # Segments grow by doubling up to segment_size, so that a small store stays
        # small on disk and a large one rolls rarely.
        grown = min(self.segment_size, 2 * st.sizes[old])
        size = max(grown, need + SEG_HEADER.size)
        fd = create_segment(self.dir, new, size, zero_fill=True)
        try:
            # The manifest names the segment before any process is told to use it.
            write_manifest(self.dir, st.gen, [*st.segs, new])
        except BaseException:
            _fs.close(fd)
            raise
        st.fds[new] = fd
        st.sizes[new] = size
        st.segs = [*st.segs, new]
        self.publish(st, new << 40 | SEG_HEADER.size, 0, 0)
        return new

    def publish(self, st: State, endw: int, dead: int, total: int) -> None:
        """Make everything before ``endw`` visible to every process (after the pwrite)."""
        w = self.words
        if dead:
            w[W_DEAD] += dead
        if total:
            w[W_TOTAL] += total
        w[W_END] = endw
        if self.slot >= 0:
            w[W_SLOT0 + self.slot] = endw  # for group commit: this handle has a record to sync
        st.end = endw

    def sync(self, endw: int) -> None:
        """Group commit: return once every byte before ``endw`` is fdatasynced.

        Called after the write lock is released (see ``store.commit``). A writer
        whose end is already covered returns without a system call (when the
        header is mapped: a header read with pread is only trusted for this under
        the sync lock, where nobody writes the synced end).
        """
        hdr = self.hdr
        if hdr is not None and hdr.mapped and self.words[W_SYNCED] >= endw:
            return
        with self.locks.sync_mu:
            if self.state is _CLOSED:
                # Closed by another thread after this write was published: it was
                # written, but its fdatasync did not run.
                raise ValueError(CLOSED_MESSAGE + " (the write was made, not yet synced)")
            commit.sync(self, endw, POISON_MESSAGE.format(self.dir))
