"""The on-disk record format of :class:`racefree.Store`: segments of framed records.

A segment file (``seg-NNNNNNNN.rfs``) is a 16-byte file header followed by
frames, then zeros up to the file's preallocated size::

    file header  b"RFSTSEG\\x01" + u64 segment number
    frame        u32 magic 0x31524652 ("RFR1") | u32 payload length | u32 crc32(payload)
                 payload = one or more entries
    entry        u8 op (1 put, 2 delete) | u32 id length | u64 version | u32 doc length
                 id (UTF-8, surrogates kept) | doc (compact ASCII JSON)

A batch is one frame with several entries, so a crash leaves all of it or
none of it (the crc covers the whole payload). The end of the data is the first
position whose 4 bytes are zero (segments are zero-filled ahead of use).
A frame that does not check out is a *torn tail* when no valid frame follows it
in the segment (a crash in the middle of a write: ignored, then zeroed by the
next writer) and *corruption* when one does (pitfall S6): ``CorruptFileError``.

The in-memory index packs a document's place into one int (``pack``): the
version, the segment number, the doc's length and its offset in the segment.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

from ._errors import CorruptFileError

SEG_MAGIC = b"RFSTSEG\x01"
SEG_HEADER = struct.Struct("<8sQ")
FRAME_MAGIC = 0x31524652
FRAME = struct.Struct("<III")
ENTRY = struct.Struct("<BIQI")
OP_PUT = 1
OP_DELETE = 2
ZERO4 = b"\0\0\0\0"

# The packed index value: version | seg (24 bits) | doc length (36) | doc offset (40).
M24 = (1 << 24) - 1
M36 = (1 << 36) - 1
M40 = (1 << 40) - 1
MAX_DOC = M36
MAX_SEGMENT_SIZE = M40


def pack(version: int, seg: int, length: int, offset: int) -> int:
    return (((version << 24 | seg) << 36 | length) << 40) | offset


def unpack(value: int) -> tuple[int, int, int, int]:
    """``(version, seg, length, offset)`` of a packed index value."""
    return value >> 100, (value >> 76) & M24, (value >> 40) & M36, value & M40


def end_word(seg: int, offset: int) -> int:
    """A position in the store as one comparable u64: later positions are larger."""
    return seg << 40 | offset


def encode_entry(op: int, idb: bytes, version: int, doc: bytes) -> bytes:
    return ENTRY.pack(op, len(idb), version, len(doc)) + idb + doc


def encode_frame(payload: bytes) -> bytes:
    return FRAME.pack(FRAME_MAGIC, len(payload), zlib.crc32(payload)) + payload


# One parsed entry: (op, id, version, doc offset within the segment, doc length).
Entry = tuple[int, str, int, int, int]


def parse_entries(payload: bytes | memoryview, base: int) -> list[Entry]:
    """The entries of a checked payload whose first byte is at segment offset ``base``.

    Raises ``ValueError`` when the payload's structure is inconsistent.
    """
    out: list[Entry] = []
    pos = 0
    n = len(payload)
    unpack_entry = ENTRY.unpack_from
    size = ENTRY.size
    while pos < n:
        op, idlen, version, doclen = unpack_entry(payload, pos)
        start = pos + size
        doc_at = start + idlen
        pos = doc_at + doclen
        if pos > n or op not in (OP_PUT, OP_DELETE):
            raise ValueError("entry overruns its frame")
        ident = bytes(payload[start:doc_at]).decode("utf-8", "surrogatepass")
        out.append((op, ident, version, base + doc_at, doclen))
    return out


def frame_at(buf: bytes | memoryview, pos: int) -> int:
    """The length of the valid frame at ``pos``; 0 at the end of the data; -1 if it is damaged."""
    if pos + 4 > len(buf) or buf[pos:pos + 4] == ZERO4:
        return 0
    if pos + FRAME.size > len(buf):
        return -1
    magic, plen, crc = FRAME.unpack_from(buf, pos)
    end: int = pos + FRAME.size + plen
    if magic != FRAME_MAGIC or plen == 0 or end > len(buf):
        return -1
    if zlib.crc32(buf[pos + FRAME.size:end]) != crc:
        return -1
    return end - pos


def valid_frame_after(buf: bytes | memoryview, pos: int) -> int:
    """The offset of the first valid frame that starts after ``pos``, or -1."""
    data = bytes(buf) if isinstance(buf, memoryview) else buf
    needle = FRAME.pack(FRAME_MAGIC, 0, 0)[:4]
    at = data.find(needle, pos + 1)
    while at != -1:
        if frame_at(data, at) > 0:
            return at
        at = data.find(needle, at + 1)
    return -1


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
) -> tuple[int, bool, int, int]:
    """Apply the frames of ``buf[start:stop]`` (segment ``seg``) to ``index``.

    ``tomb`` maps each deleted id to its tombstone's version, so that a later put
    of that id continues its versions (an old ``expect_version`` never matches a
    re-created document).

    ``buf`` is a segment's bytes from segment offset ``base`` (an mmap with
    ``base=0``, or bytes read with pread). Returns ``(end, torn, dead, total)``:
    the offset in ``buf`` after the last valid frame; whether bytes that are not
    zero follow it (a torn tail: the caller decides whether to repair it); and
    the bytes that became garbage and the bytes of the frames read (hints for
    auto-compaction). A damaged frame followed by a valid one raises
    :class:`CorruptFileError` (pitfall S6): nothing is skipped silently. The
    loop is inlined (no call per record): it is what opening a store costs.
    """
    pos = start
    hsize = FRAME.size
    esize = ENTRY.size
    unpack_frame = FRAME.unpack_from
    unpack_entry = ENTRY.unpack_from
    crc32 = zlib.crc32
    limit = min(stop, len(buf))
    view = memoryview(buf)
    dead = total = 0
    get = index.get
    try:
        while pos + 4 <= limit:
            if pos + hsize <= limit:
                magic, plen, crc = unpack_frame(buf, pos)
            else:
                magic, plen, crc = -1, 0, 0
            end = pos + hsize + plen
            if (
                magic != FRAME_MAGIC
                or plen < esize
                or end > limit
                or (verify and crc32(view[pos + hsize:end]) != crc)
            ):
                if buf[pos:pos + 4] == ZERO4:
                    return pos, _nonzero_after(view, pos, limit), dead, total
                after = valid_frame_after(view[:limit], pos)
                if after != -1:
                    raise CorruptFileError(
                        path,
                        f"damaged record (a valid record follows at {base + after})",
                        offset=base + pos,
                    )
                return pos, True, dead, total
            p = pos + hsize
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


def iter_frames(buf: bytes | memoryview, start: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of each valid frame from ``start`` to the end of the chain."""
    pos = start
    while True:
        n = frame_at(buf, pos)
        if n <= 0:
            return
        yield pos, n
        pos += n
