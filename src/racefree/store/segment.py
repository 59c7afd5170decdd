"""The on-disk record format of :class:`racefree.Store`: segments of framed records.

A segment file (``seg-NNNNNNNN.rfs``) is a 16-byte file header followed by
frames, then zeros up to the file's preallocated size::

    file header  b"RFSTSEG\\x01" + u64 segment number
    frame        u32 magic 0x31524652 ("RFR1") | u32 payload length | u32 crc32(payload)
    payload      u64 synced | one or more entries
    entry        u8 op (1 put, 2 delete) | u32 id length | u64 version | u32 doc length
                 id (UTF-8, surrogates kept) | doc (compact ASCII JSON)

A batch is one frame with several entries, so a crash leaves all of it or none
of it (the crc covers the whole payload). The end of the data is the first
position whose 4 bytes are zero (segments are zero-filled ahead of use).

``synced`` is the store position (``seg << 40 | offset``) up to which every byte
was known to be fdatasynced when the frame was written. It is what tells a
power loss from damage (pitfall S6): a frame that does not check, with a valid
frame after it, is

- *corruption* (``CorruptFileError``, nothing changed) when a later frame claims
  it was synced, or when it does not look torn;
- a *torn write that was in flight* when nothing claims it was synced and it
  looks torn the way a power loss tears a write: its first bytes are zeros (the
  head never reached the disk), or it ends in a zero byte right where the next
  frame begins (the tail never did). Un-synced writes may reach the disk in any
  order, so the frames after it were in flight too: everything from it on is a
  torn tail, dropped (and zeroed by the next writer). None was acknowledged as
  durable: their fdatasync would have covered the torn one.

A damaged frame with nothing valid after it is a torn tail if it looks torn
(the same test, or its header or declared length runs past the end of the
data: a file cut short); a whole frame that only fails its crc is corruption.

The in-memory index packs a document's place into one int (``pack``): the
version, the segment number, the doc's length and its offset in the segment.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from racefree._errors import CorruptFileError

SEG_MAGIC = b"RFSTSEG\x01"
SEG_HEADER = struct.Struct("<8sQ")
FRAME_MAGIC = 0x31524652
FRAME = struct.Struct("<III")
SYNCED = struct.Struct("<Q")
ENTRY = struct.Struct("<BIQI")
#: Bytes from a frame's start to its first entry.
PREFIX = FRAME.size + SYNCED.size
OP_PUT = 1
OP_DELETE = 2
ZERO4 = b"\0\0\0\0"
_MAGIC_BYTES = FRAME.pack(FRAME_MAGIC, 0, 0)[:4]

# The packed index value: version | seg (24 bits) | doc length (36) | doc offset (40).
M24 = (1 << 24) - 1
M36 = (1 << 36) - 1
M40 = (1 << 40) - 1


def pack(version: int, seg: int, length: int, offset: int) -> int:
    return (((version << 24 | seg) << 36 | length) << 40) | offset


def unpack(value: int) -> tuple[int, int, int, int]:
    """``(version, seg, length, offset)`` of a packed index value."""
    return value >> 100, (value >> 76) & M24, (value >> 40) & M36, value & M40


def frame(synced: int, entries: bytes) -> bytes:
    """A frame whose payload is ``synced`` followed by the encoded ``entries``."""
    payload = SYNCED.pack(synced) + entries
    return FRAME.pack(FRAME_MAGIC, len(payload), zlib.crc32(payload)) + payload


def reclaim(record: bytes, synced: int) -> bytes:
    """``record`` (a whole frame) with its ``synced`` field replaced (and its crc redone)."""
    payload = SYNCED.pack(synced) + record[PREFIX:]
    return FRAME.pack(FRAME_MAGIC, len(payload), zlib.crc32(payload)) + payload


def frame_at(buf: Any, pos: int) -> int:
    """The length of the valid frame at ``pos``; 0 at the end of the data; -1 if damaged."""
    if pos + 4 > len(buf) or buf[pos:pos + 4] == ZERO4:
        return 0
    if pos + FRAME.size > len(buf):
        return -1
    magic, plen, crc = FRAME.unpack_from(buf, pos)
    end: int = pos + FRAME.size + plen
    if magic != FRAME_MAGIC or plen < SYNCED.size + ENTRY.size or end > len(buf):
        return -1
    if zlib.crc32(buf[pos + FRAME.size:end]) != crc:
        return -1
    return end - pos


def iter_frames(buf: Any, start: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of each valid frame from ``start`` to the end of the chain."""
    pos = start
    while True:
        n = frame_at(buf, pos)
        if n <= 0:
            return
        yield pos, n
        pos += n


def _valid_after(data: bytes, pos: int) -> int:
    at = data.find(_MAGIC_BYTES, pos + 1)
    while at != -1:
        if frame_at(data, at) > 0:
            return at
        at = data.find(_MAGIC_BYTES, at + 1)
    return -1


#: The smallest piece a write reaches the disk in: a write torn by a power loss keeps
#: or loses each aligned piece of this many bytes (a disk sector is 512 or 4096
#: bytes, a page 4096: unions of these pieces). The crash tests tear at 16 too.
TEAR = 16
_ZERO_RUN = re.compile(b"\0{%d,}" % TEAR)
MIN_FRAME = PREFIX + ENTRY.size  # a frame holds at least one entry


def _zeros(data: bytes, lo: int, hi: int) -> bool:
    return hi > lo and data.count(0, lo, hi) == hi - lo


def _lost_piece(data: bytes, lo: int, hi: int, base: int) -> bool:
    """Whether some piece of a write of ``data[lo:hi]`` never reached the disk (reads as zeros).

    Pieces are cut at file offsets (``base`` + index) that are multiples of
    :data:`TEAR`: the first and the last piece may be short, the others are whole.
    """
    first = min(hi, lo + TEAR - (base + lo) % TEAR)
    last = max(lo, hi - 1 - (base + hi - 1) % TEAR)
    if _zeros(data, lo, first) or _zeros(data, last, hi):
        return True
    for run in _ZERO_RUN.finditer(data, first, last):
        aligned = run.start() + (-(base + run.start())) % TEAR
        if aligned + TEAR <= run.end():
            return True
    return False


def _whole_but_length(data: bytes, pos: int, stop: int, crc: int) -> bool:
    """Whether the frame at ``pos`` is all there and only its length field is wrong.

    Its entries are walked by their own lengths; if the payload up to the end of
    some entry matches the frame's crc, every byte of it was written, so the
    declared length is damage: a torn write's length field is whole or partly
    zero (a subset of its bits), and then its crc field is zero too.
    """
    p = pos + PREFIX
    running = zlib.crc32(data[pos + FRAME.size:p])
    while p + ENTRY.size <= stop:
        op, idlen, _, doclen = ENTRY.unpack_from(data, p)
        q = p + ENTRY.size + idlen + doclen
        if op not in (OP_PUT, OP_DELETE) or q > stop:
            return False
        running = zlib.crc32(data[p:q], running)
        if running == crc:
            return True
        p = q
    return False


def explain(data: bytes, pos: int, stop: int, base: int) -> str | None:
    """None if the damaged frame at ``pos`` can be a write a crash cut short; else why not.

    ``stop`` is where the next valid frame starts, or the end of the segment.
    Segments are zero-filled and synced before use, so what a write never got
    to the disk reads as zeros. A power loss keeps or loses each aligned piece
    of a write (:data:`TEAR`) independently, in any order, so a torn frame has
    a piece that reads as zeros: its first piece, the one that cuts its header,
    or, where its header is whole, a piece within its declared length. A
    process killed between two parts of a short write leaves a prefix: the
    frame ends in zeros. A whole header's length cannot run past ``stop`` (a
    torn length field only loses bits, and segments are never shorter than a
    frame in them), nor be the wrong length of a frame that is otherwise all
    there. Anything else no crash leaves: damage.
    """
    if _zeros(data, pos, min(stop, pos + TEAR - (base + pos) % TEAR)):
        return None  # the head never reached the disk
    if pos + FRAME.size <= stop:
        magic, plen, crc = FRAME.unpack_from(data, pos)
        end = pos + FRAME.size + plen
        if magic == FRAME_MAGIC and plen >= MIN_FRAME - FRAME.size:
            if end > stop:
                where = "the next valid record" if stop < len(data) else "the end of the segment"
                return f"its length ({plen}) runs past {where}: no write leaves that length"
            if _whole_but_length(data, pos, stop, crc):
                return "the record is whole but its length field is damaged"
            if data[end - 1] == 0 or _lost_piece(data, pos, end, base):
                return None
            return "damaged record (it does not look torn: no piece of it reads as unwritten)"
    if pos + MIN_FRAME <= stop:
        # The header is not whole. A power loss lost the piece that cuts it (the
        # first piece is not zeros, see above), or a killed writer left a prefix
        # that ends inside it: then the rest of the smallest frame is zeros.
        cut = pos + TEAR - (base + pos) % TEAR
        if cut < pos + FRAME.size and _zeros(data, cut, cut + TEAR):
            return None
        if _zeros(data, pos + FRAME.size, pos + MIN_FRAME):
            return None
        return "damaged record header (it does not look torn)"
    if stop >= len(data):
        return "a record header is cut short by the end of the segment: the file was cut"
    return "damaged bytes too short for a record before the next valid record"


def _classify(buf: Any, pos: int, limit: int, seg: int, path: str, base: int) -> bool:
    """A frame at ``pos`` does not check: True if it is a torn tail, else raise (see above)."""
    data = bytes(buf[:limit])
    after = _valid_after(data, pos)
    if after == -1:
        if not data[pos:].rstrip(b"\0"):
            return False  # zeros (shorter than a header) up to the limit: the end of the data
        # Nothing valid after it: a write cut short by a crash, or damage.
        why = explain(data, pos, limit, base)
        if why is None:
            return True
        raise CorruptFileError(path, why, offset=base + pos)
    claimed = 0
    at = after
    while at != -1:  # the newest claim is the largest: claims only grow
        for fpos, n in iter_frames(data, at):
            claimed = max(claimed, SYNCED.unpack_from(data, fpos + FRAME.size)[0])
            at = fpos + n
        at = _valid_after(data, at)
    if claimed > (seg << 40 | (base + pos)):
        raise CorruptFileError(
            path, f"damaged record that was synced (a valid record follows at {base + after})",
            offset=base + pos,
        )
    why = explain(data, pos, after, base)
    if why is None:
        return True
    raise CorruptFileError(
        path, f"{why} (a valid record follows at {base + after})", offset=base + pos
    )


def index_frames(
    buf: Any,
    start: int,
    stop: int,
    seg: int,
    index: dict[str, int],
    tomb: dict[str, int],
    path: str,
    *,
    base: int = 0,
    verify: bool = True,
    unpublished: bool = False,
) -> tuple[int, bool, int, int]:
    """Apply the frames of ``buf[start:stop]`` (segment ``seg``) to ``index``.

    ``tomb`` maps each deleted id to its tombstone's version, so that a later put
    of that id continues its versions (an old ``expect_version`` never matches a
    re-created document). ``buf`` is a segment's bytes from segment offset
    ``base`` (an mmap with ``base=0``, or bytes read with pread). Returns
    ``(end, torn, dead, total)``: the offset in ``buf`` after the last valid
    frame; whether what follows is a torn tail to repair (see the module
    docstring; damage raises :class:`CorruptFileError`); and the bytes that
    became garbage and the bytes of the frames read (hints for auto-compaction).
    With ``unpublished`` (bytes past the published end, in a store that other
    processes have open), a frame that does not check is always a torn tail: its
    writer died before publishing it, so nobody was told it was written.
    The loop is inlined (no call per record): it is what opening a store costs.
    """
    pos = start
    hsize = FRAME.size
    esize = ENTRY.size
    first = PREFIX
    unpack_frame = FRAME.unpack_from
    unpack_entry = ENTRY.unpack_from
    crc32 = zlib.crc32
    limit = min(stop, len(buf))
    view = memoryview(buf)
    dead = total = 0
    get = index.get
    try:
        while pos < limit:
            if pos + hsize <= limit:
                magic, plen, crc = unpack_frame(buf, pos)
            else:  # fewer bytes left than a header: zeros, or a file cut short
                magic, plen, crc = 0, 0, 0
            end = pos + hsize + plen
            if (
                magic != FRAME_MAGIC
                or plen < esize + 8
                or end > limit
                or (verify and crc32(view[pos + hsize:end]) != crc)
            ):
                if magic == 0 and plen == 0 and crc == 0 and not _nonzero_after(view, pos, limit):
                    return pos, False, dead, total  # the end of the data
                if unpublished:
                    return pos, True, dead, total
                return pos, _classify(buf, pos, limit, seg, path, base), dead, total
            p = pos + first
            while p < end:
                op, idlen, version, doclen = unpack_entry(buf, p)
                ida = p + esize
                doc_at = ida + idlen
                p = doc_at + doclen
                if p > end or op not in (OP_PUT, OP_DELETE):
                    raise CorruptFileError(path, "malformed record", offset=base + pos)
                ident = bytes(buf[ida:doc_at]).decode("utf-8", "surrogatepass")
                old = get(ident)
                if old is not None:
                    dead += ((old >> 40) & M36) + idlen + 29
                if op == OP_PUT:
                    index[ident] = (((version << 24 | seg) << 36 | doclen) << 40) | (base + doc_at)
                    if tomb:
                        tomb.pop(ident, None)
                else:
                    tomb[ident] = version
                    if old is not None:
                        del index[ident]
            total += end - pos
            pos = end
        return pos, False, dead, total
    finally:
        view.release()


def first_claim(buf: Any) -> int:
    """How far the store was synced, as a segment's first records claim it (0 if none).

    The roll's own record (re-stamped by :func:`reclaim`) and the first record
    written after the roll: the larger ``synced`` of the two.
    """
    claim, pos = 0, SEG_HEADER.size
    for _ in range(2):
        n = frame_at(buf, pos)
        if n <= 0:
            break
        claim = max(claim, SYNCED.unpack_from(buf, pos + FRAME.size)[0])
        pos += n
    return int(claim)


def unsynced_loss(
    segs: list[int], ends: dict[int, int], claims: dict[int, int]
) -> tuple[int, int, int] | None:
    """``(seg, end, claimed)`` if a segment's data ends before where a later one says it was synced.

    A roll syncs the sealed segment and the next segment's first records claim
    its end (``synced``, :func:`first_claim` of each segment in ``claims``): if
    the sealed segment's valid records now end sooner (its last records zeroed,
    or the file cut at a record boundary), synced records are gone. ``ends``
    maps each segment to the end of its valid records.
    """
    for seg in segs[1:]:
        claim = claims.get(seg, 0)
        cseg, coff = claim >> 40, claim & M40
        if claim and cseg != seg and cseg in ends and coff > ends[cseg]:
            return cseg, ends[cseg], coff
    return None


_ZEROS = bytes(1 << 20)


def _nonzero_after(view: memoryview, pos: int, limit: int) -> bool:
    """Whether any byte of ``view[pos:limit]`` is not zero (a memcmp per MiB)."""
    chunk = len(_ZEROS)
    while pos < limit:
        n = min(limit - pos, chunk)
        if bytes(view[pos:pos + n]) != (_ZEROS if n == chunk else bytes(n)):
            return True
        pos += n
    return False


def last_nonzero(view: memoryview, pos: int, limit: int) -> int:
    """One past the last byte of ``view[pos:limit]`` that is not zero (``pos`` if none)."""
    end = limit
    chunk = len(_ZEROS)
    while end > pos:
        start = max(pos, end - chunk)
        block = bytes(view[start:end])
        stripped = len(block.rstrip(b"\0"))
        if stripped:
            return start + stripped
        end = start
    return pos
