"""Compaction and verification of a :class:`racefree.Store`'s segments.

Compaction copies every live document (and every tombstone, so deleted ids keep
their versions) into new segments, makes them durable, and switches to them by
replacing the MANIFEST: that rename is the commit point. Before it, a crash
leaves the old segments in force (the new ones are orphans nobody reads); after
it, the new ones. Tombstones need no "older segment" bookkeeping (pitfall S5)
because the switch retires every older segment at once: no segment that could
still hold an older version of a deleted id stays live.

Writers wait while a compaction runs (it holds the write lock); readers never
wait: they keep reading the old segments (still mapped, even once unlinked)
until they see the new generation, then reload their index.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

from racefree import _fs, _json
from racefree._errors import CorruptFileError
from racefree.store.core import Core
from racefree.store.files import (
    W_DEAD,
    W_END,
    W_GEN,
    W_INPROG,
    W_POISON,
    W_SYNCED,
    W_TOTAL,
    create_segment,
    fdatasync,
    open_segment,
    poison_marker,
    read_manifest,
    read_segment,
    seg_name,
    write_manifest,
)
from racefree.store.header import open_header_readonly
from racefree.store.index import State, synced_floor, synced_lost
from racefree.store.owned import unlink_own
from racefree.store.segment import (
    ENTRY,
    FRAME,
    M40,
    OP_DELETE,
    OP_PUT,
    PREFIX,
    SEG_HEADER,
    first_claim,
    frame,
    index_frames,
    last_nonzero,
    pack,
    unpack,
    unsynced_loss,
)

_FLUSH = 1 << 20


@dataclass(frozen=True)
class StoreReport:
    """What :meth:`Store.check` found: every record checked, every document parsed."""

    documents: int  #: live documents
    tombstones: int  #: deleted ids whose versions are remembered
    segments: int  #: live segment files
    records: int  #: frames read (a batch is one frame)
    record_bytes: int  #: bytes of all frames
    dead_bytes: int  #: bytes of overwritten or deleted documents (reclaimed by compact)


class Writer:
    """Appends frames to fresh segments, buffered, rolling to a new one when full."""

    def __init__(self, directory: str, seg_size: int, st: State, first: int) -> None:
        self.dir = directory
        self.seg_size = seg_size
        self.st = st
        self.next = first
        self.seg = -1
        self.pos = self.size = 0
        self.buf = bytearray()
        self.buf_at = 0
        self.total = 0

    def new_segment(self, need: int) -> None:
        self.flush()
        size = max(self.seg_size, need + SEG_HEADER.size)
        seg = self.next
        self.next += 1
        fd = create_segment(self.dir, seg, size, zero_fill=True)
        self.st.fds[seg] = fd
        self.st.sizes[seg] = size
        self.st.segs.append(seg)
        self.seg, self.pos, self.size = seg, SEG_HEADER.size, size
        self.buf_at = self.pos

    def add(self, op: int, idb: bytes, version: int, doc: bytes) -> tuple[int, int]:
        """Buffer one single-entry frame; returns ``(seg, doc offset)``."""
        entry = ENTRY.pack(op, len(idb), version, len(doc)) + idb + doc
        n = PREFIX + len(entry)
        if self.seg < 0 or self.pos + n > self.size:
            self.new_segment(n)
        # Each copy claims itself synced: it is, before the MANIFEST makes it live.
        self.buf += frame(self.seg << 40 | (self.pos + n), entry)
        at = self.pos + PREFIX + ENTRY.size + len(idb)
        self.pos += n
        self.total += n
        if len(self.buf) >= _FLUSH:
            self.flush()
        return self.seg, at

    def flush(self) -> None:
        if self.buf:
            _fs.pwrite_all(self.st.fds[self.seg], bytes(self.buf), self.buf_at)
            self.buf_at += len(self.buf)
            self.buf = bytearray()


def compact_locked(core: Core, st: State) -> State:
    """Rewrite ``st``'s live data into new segments and switch to them (write lock held)."""
    w = core.words
    gen = st.gen + 1
    new = State(gen, [], 0, core.cache_bytes)
    out = Writer(core.dir, core.first_size(max(0, w[W_TOTAL] - w[W_DEAD])), new, st.segs[-1] + 1)
    w[W_INPROG] = gen
    committed = False
    try:
        for ident, value in st.index.items():
            version, seg, length, off = unpack(value)
            doc = read_doc(core, st, seg, off, length)
            at_seg, at = out.add(OP_PUT, ident.encode("utf-8", "surrogatepass"), version, doc)
            new.index[ident] = pack(version, at_seg, length, at)
        for ident, version in st.tomb.items():
            out.add(OP_DELETE, ident.encode("utf-8", "surrogatepass"), version, b"")
            new.tomb[ident] = version
        if out.seg < 0:
            out.new_segment(0)
        out.flush()
        # The copies must be on disk before the manifest names them: after the
        # switch they are the only copy of every document (W1 for segments).
        for seg in new.segs:
            fdatasync(new.fds[seg], os.path.join(core.dir, seg_name(seg)))
        write_manifest(core.dir, gen, list(new.segs))
        committed = True
        new.end = out.seg << 40 | out.pos
        with core.locks.syncing():
            w[W_GEN] = gen
            w[W_END] = new.end
            w[W_SYNCED] = new.end
            w[W_DEAD] = 0
            w[W_TOTAL] = out.total
            w[W_INPROG] = 0
    except BaseException:
        if not committed and _manifest_gen(core.dir) == gen:
            # The rename happened and only its directory fsync failed: the new
            # segments are named (maybe durably, maybe not), so neither set may be
            # removed. W_INPROG stays set: the next call rebuilds from the MANIFEST.
            committed = True
        if not committed:
            w[W_INPROG] = 0
            new.close()
            for seg in new.segs:
                with contextlib.suppress(OSError):
                    _fs.unlink(os.path.join(core.dir, seg_name(seg)))
        raise
    core.state = new
    for seg in st.segs:
        # Retired: processes that still have them open keep reading until they reload.
        unlink_own(core.dir, seg_name(seg), keep_untrusted=True)
    return new


def read_doc(core: Core, st: State, seg: int, off: int, length: int) -> bytes:
    """A document's bytes, read with ``pread``; a segment cut short is CorruptFileError."""
    raw = _fs.pread(st.fds[seg], length, off)
    if len(raw) != length:
        raise cut_short(core, seg, off)
    return raw


def cut_short(core: Core, seg: int, off: int) -> CorruptFileError:
    """The error for a record missing from a segment someone truncated while it was open."""
    return CorruptFileError(
        core.seg_path(seg), "the segment is shorter than when it was opened (cut short by"
        " someone)", offset=off,
    )


def _manifest_gen(directory: str) -> int | None:
    try:
        return read_manifest(directory)[0]
    except (OSError, ValueError):
        return None


def check_state(core: Core, st: State) -> StoreReport:
    """Re-read every frame up to ``st.end``, check every crc, parse every document."""
    gen, segs = read_manifest(core.dir)
    if gen != st.gen or segs[: len(st.segs)] != st.segs:
        raise CorruptFileError(core.dir, "the manifest does not match the open store")
    index: dict[str, int] = {}
    tomb: dict[str, int] = {}
    records = dead = total = 0
    tseg, toff = st.end >> 40, st.end & M40
    bufs: dict[int, bytes] = {}
    for seg in st.segs:
        if seg > tseg:
            break  # rolled to after this state's end: being written, not ours to check
        path = os.path.join(core.dir, seg_name(seg))
        stop = toff if seg == tseg else st.sizes[seg]
        mm = bufs[seg] = read_segment(st.fds[seg], 0, stop)
        end, torn, d, t = index_frames(mm, SEG_HEADER.size, stop, seg, index, tomb, path)
        if torn and seg != tseg:
            raise CorruptFileError(path, "damaged record in a sealed segment", offset=end)
        if seg == tseg and end != toff:
            raise CorruptFileError(path, "a published record does not check", offset=end)
        dead += d
        total += t
        pos = SEG_HEADER.size
        while pos < end:
            records += 1
            pos += FRAME.size + FRAME.unpack_from(mm, pos)[1]
    _parse_all(core.dir, index, bufs)
    if index != st.index or tomb != st.tomb:
        raise CorruptFileError(core.dir, "the index does not match the segments")
    return StoreReport(
        documents=len(index),
        tombstones=len(tomb),
        segments=len(st.segs),
        records=records,
        record_bytes=total,
        dead_bytes=dead,
    )


def repair(core: Core) -> bool:
    """``racefree check --repair``: repair the tail, and clear a poison by rewriting the data.

    Under the write lock: catch up and repair bytes a dead writer left past the
    end (as any writer does). If an fsync had failed (the store is poisoned),
    compact: every live document is rewritten into new segments from what this
    process reads, and fdatasynced, before the MANIFEST switches to them, so no
    record is left that claims "synced" over a possible hole (fsyncgate); only
    then is the ``POISONED`` marker removed. Returns whether it was poisoned.
    """
    core.acquire()
    try:
        st = core.writable(poisoned_ok=True)
        poisoned = core.poisoned or bool(core.words[W_POISON]) or poison_marker(core.dir)
        if poisoned:
            compact_locked(core, st)
            core.clear_poison()
        return poisoned
    finally:
        core.release()


@dataclass(frozen=True)
class FilesReport:
    """What :func:`check_files` found: the report, an incomplete last record, the poison."""

    report: StoreReport
    torn_bytes: int  #: an incomplete last record left by a crash (removed by the next writer)
    poisoned: bool  #: an fsync failed: writes are refused until ``racefree check --repair``


def check_files(directory: str) -> FilesReport:
    """Verify a store's files without opening it as a store: reads only, changes nothing.

    Maps every segment the MANIFEST names read-only, checks every frame and crc
    and parses every document. Damage raises :class:`CorruptFileError`; an
    incomplete last record (a crash in the middle of a write, removed by the next
    opener or writer) is reported in ``torn_bytes``, a ``POISONED`` marker in
    ``poisoned``. Retried if a compaction
    replaces the segments meanwhile.
    """
    for attempt in range(20):
        gen, segs = read_manifest(directory)
        floor = _header_floor(directory, gen)  # before the segments: what it covers is there
        if floor >> 40 > segs[-1] and attempt < 19:
            continue  # a segment roll since the MANIFEST was read: look again
        maps: dict[int, Any] = {}
        try:
            for seg in segs:
                maps[seg] = _read_readonly(directory, seg)
        except FileNotFoundError:
            if read_manifest(directory)[0] != gen:
                continue  # a compaction retired them meanwhile: look again
            raise CorruptFileError(directory, "a segment the MANIFEST names is missing") from None
        return _scan(directory, segs, maps, floor)
    raise CorruptFileError(directory, "the store's segments kept changing while checked")


def _header_floor(directory: str, gen: int) -> int:
    """Where the shared header says generation ``gen`` had been synced (``index.synced_floor``)."""
    try:
        hdr = open_header_readonly(directory)
    except PermissionError:
        return 0  # a user who may only read: the header is closed to them (case 16)
    if hdr is None:
        return 0
    try:
        return synced_floor(hdr.words, gen)
    finally:
        hdr.close()


def _read_readonly(directory: str, seg: int) -> bytes:
    # Read, not mapped: a segment someone truncates meanwhile is a short read.
    fd, size = open_segment(directory, seg, writable=False)
    try:
        return read_segment(fd, 0, size)
    finally:
        _fs.close(fd)


def _scan(directory: str, segs: list[int], maps: dict[int, Any], floor: int = 0) -> FilesReport:
    index: dict[str, int] = {}
    tomb: dict[str, int] = {}
    records = dead = total = torn_bytes = 0
    ends: dict[int, int] = {}
    for seg in segs:
        mm = maps[seg]
        path = os.path.join(directory, seg_name(seg))
        end, torn, d, t = index_frames(mm, SEG_HEADER.size, len(mm), seg, index, tomb, path)
        ends[seg] = end
        if torn and seg != segs[-1]:
            raise CorruptFileError(path, "damaged record in a sealed segment", offset=end)
        if torn:
            torn_bytes = last_nonzero(memoryview(mm), end, len(mm)) - end
        dead += d
        total += t
        pos = SEG_HEADER.size
        while pos < end:
            records += 1
            pos += FRAME.size + FRAME.unpack_from(mm, pos)[1]
    lost = unsynced_loss(segs, ends, {seg: first_claim(maps[seg]) for seg in segs})
    if lost is not None:
        seg, end, claimed = lost
        raise CorruptFileError(
            os.path.join(directory, seg_name(seg)),
            f"records up to byte {claimed} were synced (the next segment says so) but the valid"
            f" records end at {end}",
            offset=end,
        )
    last = segs[-1]
    if floor > (last << 40 | ends[last]):
        raise synced_lost(os.path.join(directory, seg_name(last)), last, ends[last], floor)
    _parse_all(directory, index, maps)
    report = StoreReport(
        documents=len(index),
        tombstones=len(tomb),
        segments=len(segs),
        records=records,
        record_bytes=total,
        dead_bytes=dead,
    )
    return FilesReport(report, torn_bytes, poison_marker(directory))


def _parse_all(directory: str, index: dict[str, int], maps: dict[int, Any]) -> None:
    for ident, value in index.items():
        _, seg, length, off = unpack(value)
        raw = maps[seg][off:off + length]
        path = os.path.join(directory, seg_name(seg))
        try:
            doc = _json.parse(json.loads, raw)
        except ValueError as exc:
            raise CorruptFileError(
                path, f"document {ident!r} is not JSON: {exc}", offset=off
            ) from None
        except _json.TooDeep:
            raise CorruptFileError(
                path, f"document {ident!r} is nested too deeply to parse",
                offset=off + _json.deep_offset(raw),
            ) from None
        if not isinstance(doc, dict):
            raise CorruptFileError(path, f"document {ident!r} is not an object", offset=off)
