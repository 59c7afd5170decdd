"""Record framing: one record per line, ``<len> <crc32> <body>\\n``.

A frame is the decimal byte length of ``body``, a space, the CRC-32 of
``body`` as 8 lowercase hex digits, a space, ``body`` and a newline::

    13 6c2a0f3e {"n":1,"x":2}

``body`` may be any bytes without a newline (JSON text never has one: JSON
escapes control characters), so a framed file stays one record per line,
readable with ``less`` and ``grep``. The length and the checksum let a reader
tell a whole frame from a torn one (a crash in the middle of a write, the
garbage or NUL-filled tail a power loss can leave: pitfall S6) and from a
damaged one; every frame starts right after a newline (or at the start), so a
reader that meets a bad frame can look for good frames after it and tell a
torn tail (nothing good after it) from corruption (good frames after it).

This module only frames bytes; what a body means is up to its user.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator

from racefree import _fs
from racefree._errors import CorruptFileError

__all__ = [
    "MAX_HEADER", "Reader", "Suspect", "damaged_in_place", "decode_at", "encode", "find_next",
    "line_at", "scan",
]

_crc32 = zlib.crc32
_HEX8 = re.compile(rb"[0-9a-f]{8}")

#: The longest frame header (``<len> <crc32> ``) this module writes or accepts.
MAX_HEADER = 12 + 1 + 8 + 1


def encode(body: bytes) -> bytes:
    """The frame of ``body``: ``b"<len> <crc32 hex> <body>\\n"``.

    Raises ``ValueError`` if ``body`` holds a newline (it would split the line).
    """
    if b"\n" in body:
        raise ValueError("a frame body must not contain a newline")
    return b"%d %08x %s\n" % (len(body), _crc32(body), body)


def decode_at(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """The body of the valid frame at ``buf[pos:]`` and the offset after it, or None.

    None means no whole, valid frame starts at ``pos``: it is incomplete, torn
    or damaged. The header must be exactly what :func:`encode` writes (no
    leading zeros, no signs, lowercase hex), so garbage is not mistaken for a
    frame.
    """
    space = buf.find(b" ", pos, pos + 13)
    if space <= pos:
        return None
    digits = buf[pos:space]
    if not digits.isdigit():
        return None
    start = space + 10
    stop = start + int(digits)
    if stop >= len(buf) or buf[stop] != 10:  # 10 == ord("\n")
        return None
    body = buf[start:stop]
    if buf[pos:start] != b"%d %08x " % (stop - start, _crc32(body)):
        return None
    return body, stop + 1


def scan(buf: bytes, pos: int = 0, base: int = 0) -> tuple[list[tuple[int, bytes]], int]:
    """Decode the run of valid frames that starts at ``buf[pos:]``.

    Returns ``(frames, end)``: ``frames`` lists ``(base + offset, body)`` for
    each valid frame in order, and ``end`` is the offset in ``buf`` just after
    the last of them. If ``end < len(buf)``, ``buf[end:]`` does not start with
    a valid frame: if it holds no newline it may be an incomplete frame (read
    more); otherwise the frame at ``end`` is torn or damaged (see
    :func:`find_next`).
    """
    frames: list[tuple[int, bytes]] = []
    append = frames.append
    find = buf.find
    size = len(buf)
    while pos < size:
        # The same checks as decode_at, inlined: this loop runs once per record.
        space = find(b" ", pos, pos + 13)
        if space <= pos:
            break
        digits = buf[pos:space]
        if not digits.isdigit():
            break
        start = space + 10
        stop = start + int(digits)
        if stop >= size or buf[stop] != 10:
            break
        body = buf[start:stop]
        if buf[pos:start] != b"%d %08x " % (stop - start, _crc32(body)):
            break
        append((base + pos, body))
        pos = stop + 1
    return frames, pos


def find_next(buf: bytes, pos: int, proves: Callable[[bytes], bool] | None = None) -> int:
    """The offset of the first valid frame after ``pos`` (at a line start), or -1.

    With ``proves``, only a frame whose body it accepts counts. A reader that
    found a bad frame at ``pos`` calls this on the rest of the file: -1 means
    the bad bytes are a torn tail; anything else means a damaged record with
    good records after it, which is corruption.
    """
    nl = buf.find(b"\n", pos)
    while nl >= 0:
        got = decode_at(buf, nl + 1)
        if got is not None and (proves is None or proves(got[0])):
            return nl + 1
        nl = buf.find(b"\n", nl + 1)
    return -1


def damaged_in_place(tail: bytes) -> bool:
    """Whether ``tail`` (the bytes after the last valid frame) starts with a frame that had
    been written whole and was damaged afterwards: a flipped bit, a bad sector, a stray write.

    No crash leaves that (S6): a torn write is a prefix of one frame, cut before its
    newline, and a part that never reached the disk reads back as NUL bytes (at any
    offset: the crash model tears writes finer than a sector). So, with no NUL byte in
    them, the first frame's bytes are damage in place when

    - its length field parses and a newline stands where it says the frame ends (its
      body or its checksum changed, or a byte of its body became a newline), or its
      checksum field agrees with the body it delimits (its own newline changed: the
      next frame no longer starts a line);
    - or an 8-hex-digit field near the start of its first line agrees, as a checksum,
      with the rest of the line after one separator (its length field or a separator
      changed).

    A garbage tail almost never does either.
    """
    space = tail.find(b" ", 0, 13)
    if space > 0 and tail[:space].isdigit():
        start = space + 10
        stop = start + int(tail[:space])
        if stop < len(tail) and b"\0" not in tail[: stop + 1]:
            if tail[stop] == 10:  # 10 == ord("\n")
                return True
            if tail[space + 1 : space + 9] == b"%08x" % _crc32(tail[start:stop]):
                return True
    nl = tail.find(b"\n")
    if nl < 0 or b"\0" in tail[:nl]:
        return False
    line = tail[:nl]
    for i in range(min(len(line) - 8, MAX_HEADER)):
        field = line[i : i + 8]
        if _HEX8.fullmatch(field) and b"%08x" % _crc32(line[i + 9 :]) == field:
            return True
    return False


class Suspect(Exception):
    """Damage with valid frames after it, seen by a reader that holds no lock.

    A lock-free read can mix bytes from before and after a writer replaced a
    torn tail, so the caller must look again while holding the writers' lock.
    """

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class Reader:
    """The valid frames of an open file from ``offset`` on, read in chunks through the seam.

    Iterating yields lists of ``(offset, body)``. Afterwards ``end`` is the
    offset just after the last valid frame, and what follows it, if anything,
    is one of three things (S6):

    - corruption: :class:`CorruptFileError` if ``confirmed`` (the caller holds
      the writers' lock, so no write is in flight), else :class:`Suspect`. It
      is corruption when a valid frame that ``proves`` accepts (any valid frame
      if it is None) comes later; or when the damaged bytes before the next
      valid frame hold no NUL byte, or the first damaged line is a whole frame
      damaged in place (:func:`damaged_in_place`): no crash leaves those.
    - a hole: valid frames come later, none of them proves, and the damage
      holds NUL bytes, which is what a power loss does to writes that were
      never synced (the kernel may write a later page before an earlier one).
      ``held`` is then the number of bytes from ``end`` to the end of the file:
      they are neither read nor ``torn``, and must not be cut (they hold valid
      records). Seen without the lock it is :class:`Suspect` first.
    - a torn tail: anything else (an incomplete last frame, a NUL-filled or
      garbage tail); ``torn`` is its size, invisible to readers.

    ``proves`` lets a format say which frames prove that the bytes before them
    had reached the disk. ``limit`` stops reading at that offset; a frame it
    cuts is left for later, not taken for torn.
    """

    def __init__(
        self, path: str, fd: int, offset: int, *, confirmed: bool, limit: int | None = None,
        proves: Callable[[bytes], bool] | None = None, chunk: int = 1 << 22,
    ) -> None:
        self.path = path
        self.fd = fd
        self.end = offset
        self.torn = 0
        self.held = 0
        self.confirmed = confirmed
        self.limit = limit
        self.proves = proves
        self.chunk = chunk

    def __iter__(self) -> Iterator[list[tuple[int, bytes]]]:
        pending = b""
        while True:
            at = self.end + len(pending)
            want = self.chunk if self.limit is None else min(self.chunk, self.limit - at)
            data = _fs.pread(self.fd, want, at) if want > 0 else b""
            buf = pending + data if pending else data
            frames, used = scan(buf, 0, self.end)
            self.end += used
            if frames:
                yield frames
            pending = buf[used:]
            if b"\n" not in pending:
                if data:
                    continue  # read on: nothing left, or a frame the next chunk completes
                if self.limit is None:
                    if damaged_in_place(pending):  # a whole last frame, its newline damaged
                        if not self.confirmed:
                            raise Suspect(self.end)  # or a write seen before its last byte
                        raise self.corrupt("the last record is damaged: it is whole but does"
                                           " not end its line")
                    self.torn = len(pending)
                return
            rest = pending + _read_from(self.fd, self.end + len(pending))
            nxt = find_next(rest, 0)
            in_place = damaged_in_place(rest)  # a flipped bit, not a torn write
            if nxt < 0:
                if not in_place:
                    self.torn = len(rest)
                    return
                detail = "the last record is damaged: it is whole but fails its checksum"
            else:
                detail = "a damaged record is followed by valid records"
                if (not in_place and self.proves is not None and b"\0" in rest[:nxt]
                        and find_next(rest, nxt - 1, self.proves) < 0):
                    if not self.confirmed:
                        raise Suspect(self.end)
                    self.held = len(rest)  # a power loss's hole before unsynced frames
                    return
            if not self.confirmed:
                raise Suspect(self.end)
            raise self.corrupt(detail)

    def corrupt(self, detail: str) -> CorruptFileError:
        """A :class:`CorruptFileError` at ``end`` (the first byte after the valid frames)."""
        return CorruptFileError(self.path, detail, offset=self.end,
                                line=line_at(self.fd, self.end))


def _read_from(fd: int, offset: int) -> bytes:
    parts = []
    while block := _fs.pread(fd, 1 << 22, offset):
        parts.append(block)
        offset += len(block)
    return b"".join(parts)


def line_at(fd: int, offset: int) -> int:
    """The 1-based line number of byte ``offset`` of an open file."""
    lines, pos = 1, 0
    while pos < offset and (block := _fs.pread(fd, min(1 << 22, offset - pos), pos)):
        lines += block.count(b"\n")
        pos += len(block)
    return lines
