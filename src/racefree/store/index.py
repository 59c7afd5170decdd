"""A store handle's index: building it from the segments, and catching it up.

Each process keeps its own index (``State``). ``rebuild`` scans every live
segment under the write lock (the first opener, or after a compactor died at its
commit point) and resets the shared header; ``scan`` does the same without
writing anything (a read-only handle that cannot trust the header); ``load``
builds an index without any lock, retrying if a compaction races it;
``catch_up`` applies the records other processes published since the index was
last current. Segments are read with ``pread`` (never mapped).
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from racefree import _fs
from racefree._errors import CorruptFileError, DurabilityError
from racefree.store.cache import DocCache
from racefree.store.files import (
    SHM,
    SHM_MAGIC,
    W_DEAD,
    W_END,
    W_GEN,
    W_INPROG,
    W_MAGIC,
    W_SYNCED,
    W_TOTAL,
    fdatasync,
    fsync_dir,
    read_manifest,
    read_segment,
    read_segment_into,
    seg_number,
)
from racefree.store.owned import unlink_own
from racefree.store.segment import (
    M40,
    SEG_HEADER,
    first_claim,
    index_frames,
    last_nonzero,
    unsynced_loss,
)


class Core(Protocol):
    """What building and catching up an index needs of a store handle (``store.handle``).

    A protocol, so that the index does not import the handle that imports it.
    """

    dir: str
    state: State
    words: Any
    hdr: Any  # the shared header (None: not open, or closed to this user)
    cache_bytes: int

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def rebuilt(self) -> State: ...
    def poison(self) -> None: ...
    def seg_path(self, seg: int) -> str: ...
    def open_segment(self, st: State, seg: int) -> None: ...
    def zero(self, st: State, seg: int, start: int, stop: int) -> None: ...
    def set_synced(self, value: int) -> None: ...


def _sealed_damage(core: Core, seg: int, offset: int) -> CorruptFileError:
    # A sealed segment was fdatasynced before the next one was used (and the first
    # opener syncs what it recovers): damage there is never a write in flight.
    return CorruptFileError(core.seg_path(seg), "damaged record in a sealed segment", offset=offset)


def _lost_synced(core: Core, seg: int, end: int, claimed: int) -> CorruptFileError:
    return CorruptFileError(
        core.seg_path(seg),
        f"records up to byte {claimed} were synced (the next segment says so) but the valid"
        f" records end at {end}",
        offset=end,
    )


class SyncedLost(CorruptFileError):
    """The segments end before where the shared header says the store had been synced."""


def synced_floor(words: Any, gen: int) -> int:
    """Where a header says generation ``gen`` had been synced (0: not a complete header of it).

    A synced end is stored in the header only after the fdatasync it records
    returned, and the header is never synced itself: whatever version of it
    survived (a power loss included) says at most what is on the disk. Data that
    ends before it was cut short or damaged after it was written.
    """
    if words[W_MAGIC] != SHM_MAGIC or words[W_INPROG] or words[W_GEN] != gen:
        return 0
    return int(words[W_SYNCED])


def synced_lost(path: str, seg: int, end: int, floor: int) -> SyncedLost:
    """The error for the last segment (``seg``, at ``path``) whose data ends before ``floor``."""
    return SyncedLost(
        path,
        f"the store's records end at segment {seg}, byte {end}, but its shared header"
        f" ({SHM}) says they had been synced up to segment {floor >> 40}, byte"
        f" {floor & M40}: a segment was cut short or its last synced records"
        " damaged (if segments were restored from a backup on purpose, remove"
        f" {SHM}; racefree check --repair salvages what is left)",
        offset=end,
    )


class State:
    """One consistent view: the index and the segments it points into.

    Segments are read with ``pread`` on ``fds`` (never mapped: a segment that
    someone truncates is a short read, reported as damage, never a SIGBUS);
    ``sizes`` is each one's size when it was opened or made. ``cache`` holds
    decoded documents of this view (``store.cache``: empty for a new view, so a
    new generation never serves a document of an old one).
    """

    __slots__ = ("cache", "end", "fds", "gen", "index", "segs", "sizes", "tomb")

    def __init__(self, gen: int, segs: list[int], end: int, cache_bytes: int = 0) -> None:
        self.gen = gen
        self.segs = segs
        self.end = end  # the published position this index covers (seg << 40 | offset)
        self.index: dict[str, int] = {}
        self.tomb: dict[str, int] = {}  # deleted id -> its tombstone's version
        self.sizes: dict[int, int] = {}
        self.fds: dict[int, int] = {}
        self.cache = DocCache(cache_bytes)

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                _fs.close(fd)

    def __del__(self) -> None:
        # A replaced state is closed when the last thread using it lets go (a
        # group-commit fdatasync may still be running on its descriptors).
        self.close()


def _index_segments(
    core: Core, st: State, *, repair: bool, floor: int = 0
) -> tuple[int, int]:
    """Index every segment of ``st`` (opened already) to the end of its data.

    Damage in a sealed segment raises, and so does a sealed segment whose
    records end before where the next one says it was synced
    (``segment.unsynced_loss``), or data that ends before ``floor`` (where the
    previous shared header said the store had been synced: :class:`SyncedLost`;
    a segment cut at a record boundary leaves no torn bytes to tell it by, nor
    does damage to the last synced record that looks like a torn write); a
    torn tail of the last one is zeroed with
    ``repair`` (a writer under the write lock), else only left out. Nothing is
    changed on disk before every segment was judged. Returns the dead and total
    bytes (hints for auto-compaction); sets ``st.end``.
    """
    dead = total = 0
    end = SEG_HEADER.size
    ends: dict[int, int] = {}
    claims: dict[int, int] = {}
    torn_to = -1
    space = bytearray(max(st.sizes.values()))
    for seg in st.segs:
        buf = read_segment_into(st.fds[seg], st.sizes[seg], space)
        try:
            end, torn, d, t = index_frames(
                buf, SEG_HEADER.size, len(buf), seg, st.index, st.tomb, core.seg_path(seg)
            )
            dead += d
            total += t
            ends[seg] = end
            claims[seg] = first_claim(buf)
            if torn and seg != st.segs[-1]:
                raise _sealed_damage(core, seg, end)
            if torn:
                torn_to = last_nonzero(buf, end, len(buf))
        finally:
            buf.release()
    lost = unsynced_loss(st.segs, ends, claims)
    if lost is not None:
        raise _lost_synced(core, *lost)
    if floor > (st.segs[-1] << 40 | end):
        raise synced_lost(core.seg_path(st.segs[-1]), st.segs[-1], end, floor)
    if torn_to >= 0 and repair:
        core.zero(st, st.segs[-1], end, torn_to)
    st.end = st.segs[-1] << 40 | end
    return dead, total


def rebuild(core: Core, floor: int = 0) -> State:
    """Scan every live segment, repair a torn tail, and reset the shared header.

    Called with the write lock held: by the first process to open the store,
    and when a compaction was committed (MANIFEST replaced) by a process that
    died before publishing it. ``floor``: the synced end the previous header
    recorded for this generation (0: none); data ending before it is
    :class:`SyncedLost`, raised before any segment is changed.
    """
    gen, segs = read_manifest(core.dir)
    orphans = [
        name for name in _fs.listdir(core.dir)
        if (n := seg_number(name)) is not None and n not in segs
    ]
    if orphans:
        # An unfinished roll or compaction's segments, or the ones a finished
        # compaction replaced: never read. They are removed only once the MANIFEST
        # that does not name them is durable (a compaction whose directory fsync
        # failed may have a rename that a power loss would undo); else kept.
        # A failed directory fsync is never retried (W7): the orphans stay, and the
        # store refuses writes (DurabilityError) until it is verified and cleared.
        try:
            fsync_dir(core.dir)
        except DurabilityError:
            core.poison()
            orphans = []
        for name in orphans:
            # Another user's file at a segment's name is not ours to remove.
            unlink_own(core.dir, name, keep_untrusted=True)
    st = State(gen, list(segs), 0, core.cache_bytes)
    try:
        for seg in segs:
            try:
                core.open_segment(st, seg)
            except FileNotFoundError:
                # Under the write lock no compaction retires segments: it is gone.
                raise _missing(core, seg) from None
        dead, total = _index_segments(core, st, repair=True, floor=floor)
        # Make what survived durable, so that the next records can claim it
        # (their ``synced`` field: how recovery tells damage from a torn write).
        for seg in segs:
            fdatasync(st.fds[seg], core.seg_path(seg))
    except BaseException:
        st.close()
        raise
    w = core.words
    w[W_GEN] = gen
    w[W_END] = st.end
    core.set_synced(st.end)
    w[W_DEAD] = dead
    w[W_TOTAL] = total
    w[W_INPROG] = 0
    return st


def _missing(core: Core, seg: int) -> CorruptFileError:
    return CorruptFileError(core.seg_path(seg), "a segment the MANIFEST names is missing"
                            " (racefree check --repair salvages the others)")


def scan(core: Core) -> State:
    """An index built from the segments alone, changing nothing (a read-only handle).

    What ``rebuild`` does without writing: a torn tail is left out, not zeroed;
    orphans stay; the header is neither trusted nor written. Retried if a
    compaction retires the segments meanwhile.
    """
    for _ in range(20):
        gen, segs = read_manifest(core.dir)
        # Where a header this handle can read says the store had been synced, read
        # before the segments: what was synced then is on the disk when they are
        # read, so data ending before it was cut short or damaged (SyncedLost), as
        # a writer's open finds. A header it cannot read (closed to it) says nothing.
        floor = synced_floor(core.words, gen) if core.hdr is not None else 0
        if floor >> 40 > segs[-1]:
            # A writer rolled to a segment after our MANIFEST read (a roll keeps the
            # generation): this MANIFEST cannot be judged by that end. Read it again.
            continue
        st = State(gen, list(segs), 0, core.cache_bytes)
        try:
            for seg in segs:
                core.open_segment(st, seg)
        except FileNotFoundError:
            st.close()
            if read_manifest(core.dir) == (gen, segs):
                # The MANIFEST still names it: not retired by a compaction, but gone.
                raise _missing(core, seg) from None
            continue  # a compaction retired them after we read the MANIFEST
        try:
            _index_segments(core, st, repair=False, floor=floor)
        except BaseException:
            st.close()
            raise
        return st
    raise CorruptFileError(core.dir, "the store's segments kept changing while read")


def load(core: Core) -> State:
    """A fresh index, built without the write lock (retried if a compaction races it).

    A compaction in flight does not stop it: until the compactor publishes, the
    old generation (the one the shared header names) is the live one, and its
    segments stay until then. Only when the MANIFEST and the header disagree
    for a while (a compactor between its rename and its publish, or one that
    died there) does it take the write lock: after waiting for a live compactor
    it loads again without the lock; a dead one's switch it finishes (rebuild).
    """
    w = core.words
    for _ in range(3):
        st = _load_unlocked(core)
        if st is not None:
            return st
        core.acquire()
        try:
            if core.state.end == w[W_END] and core.state.gen == w[W_GEN]:
                return core.state
            if w[W_INPROG] or read_manifest(core.dir)[0] != w[W_GEN]:
                return core.rebuilt()  # the compactor died between its rename and publish
        finally:
            core.release()
    core.acquire()
    try:
        return core.state if core.state.end == w[W_END] else core.rebuilt()
    finally:
        core.release()


def _load_unlocked(core: Core) -> State | None:
    w = core.words
    for _ in range(20):
        gen = w[W_GEN]
        mgen, segs = read_manifest(core.dir)
        if mgen != gen:
            continue  # a compactor between its rename and its publish (or dead there)
        endw = w[W_END]
        tseg, toff = endw >> 40, endw & M40
        if tseg not in segs:
            continue  # a segment roll raced the manifest read
        st = State(gen, [s for s in segs if s <= tseg], endw, core.cache_bytes)
        try:
            for seg in st.segs:
                core.open_segment(st, seg)
        except FileNotFoundError:
            st.close()  # a compaction removed it after we read the manifest
            continue
        try:
            space = bytearray(max(st.sizes.values()))
            for seg in st.segs:
                stop = min(toff if seg == tseg else st.sizes[seg], len(space))
                buf = read_segment_into(st.fds[seg], stop, space)
                try:
                    end, torn, _, _ = index_frames(
                        buf, SEG_HEADER.size, stop, seg, st.index, st.tomb, core.seg_path(seg)
                    )
                finally:
                    buf.release()
                if torn and seg != tseg:
                    raise _sealed_damage(core, seg, end)
                if seg == tseg and end != toff:
                    raise CorruptFileError(
                        core.seg_path(seg), "a published record does not check", offset=end
                    )
        except BaseException:
            st.close()
            raise
        if w[W_GEN] == gen:
            return st
        st.close()
    return None


def _apply(core: Core, st: State, buf: Any, seg: int, base: int) -> tuple[int, bool]:
    """Apply the frames of ``buf`` (from segment offset ``base``) to ``st``: ``(end, torn)``.

    Into fresh dicts first, so that the ids they change are known: their cached
    documents are dropped (``store.cache``) before the caller moves ``st.end``.
    """
    puts: dict[str, int] = {}
    deletes: dict[str, int] = {}
    end, torn, _, _ = index_frames(
        buf, 0, len(buf), seg, puts, deletes, core.seg_path(seg), base=base
    )
    apply_changes(st, puts, deletes)
    return end, torn


def apply_changes(st: State, puts: dict[str, int], deletes: dict[str, int]) -> None:
    """Apply new index entries and tombstones to ``st`` (its cache forgets those ids).

    An id is in at most one of the two: its last record decides.
    """
    index, tomb = st.index, st.tomb
    for key, version in deletes.items():
        index.pop(key, None)
        tomb[key] = version
    if puts:
        index.update(puts)
        if tomb:
            for key in puts:
                tomb.pop(key, None)
    st.cache.drop_keys([*puts, *deletes])


def catch_up(core: Core, st: State, endw: int) -> bool:
    """Apply the records between ``st.end`` and ``endw``; False if the generation moved."""
    seg, off = st.end >> 40, st.end & M40
    tseg, toff = endw >> 40, endw & M40
    while seg != tseg:
        # ``seg`` was sealed by a roll: finish it up to the end of its frames.
        buf = read_segment(st.fds[seg], off, st.sizes[seg])
        end, torn = _apply(core, st, buf, seg, off)
        if torn:
            raise _sealed_damage(core, seg, off + end)
        later = [s for s in st.segs if s > seg]
        if not later:
            gen, segs = read_manifest(core.dir)
            if gen != st.gen:
                return False
            for s in segs:
                if s > seg and s not in st.fds:
                    core.open_segment(st, s)
            st.segs = list(segs)
            later = [s for s in segs if s > seg]
        seg, off = later[0], SEG_HEADER.size
    if toff > off:
        # Read through pread, not the mapping: the system call orders this read
        # after the load of the published end on any memory model.
        buf = _fs.pread(st.fds[seg], toff - off, off)
        end, _ = _apply(core, st, buf, seg, off)
        if end != toff - off:
            raise CorruptFileError(
                core.seg_path(seg), "a published record does not check", offset=off + end
            )
    st.end = endw
    return True
