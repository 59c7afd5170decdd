"""Record framing (``racefree.log.frame``): exact bytes, torn tails, damage, chunked reading."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from racefree import CorruptFileError
from racefree.log import frame as _frame


def frame(body: bytes) -> bytes:
    return b"%d %08x %s\n" % (len(body), zlib.crc32(body), body)


def reader_over(path: Path, data: bytes, **kwargs: object) -> tuple[_frame.Reader, list[bytes]]:
    """Write ``data`` to ``path`` and read it with a Reader; return it and the bodies."""
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = _frame.Reader(str(path), fd, 0, **kwargs)  # type: ignore[arg-type]
        bodies = [body for frames in reader for _, body in frames]
    finally:
        os.close(fd)
    return reader, bodies


def test_encode_exact_bytes() -> None:
    """A frame is ``<len> <crc32 as 8 lowercase hex> <body>\\n``."""
    assert _frame.encode(b'{"a":1}') == b'7 %08x {"a":1}\n' % zlib.crc32(b'{"a":1}')
    assert _frame.encode(b"") == b"0 00000000 \n"


def test_encode_rejects_newline() -> None:
    """A body with a newline would split its line: ValueError."""
    with pytest.raises(ValueError, match="newline"):
        _frame.encode(b"a\nb")


def test_decode_at_round_trip_and_strict_header() -> None:
    """decode_at returns the body and the next offset; a non-canonical header is no frame."""
    data = b"xx" + frame(b"hello") + frame(b"[1]")
    assert _frame.decode_at(data, 2) == (b"hello", 2 + len(frame(b"hello")))
    good = frame(b"hello")
    crc = b"%08x" % zlib.crc32(b"hello")
    for bad in (
        b"05 " + crc + b" hello\n",  # leading zero
        b"+5 " + crc + b" hello\n",  # sign
        b"5 " + crc.upper() + b" hello\n",  # uppercase hex
        b"5 " + crc + b" hellO\n",  # checksum mismatch
        b"4 " + crc + b" hello\n",  # wrong length
        good[:-1],  # no newline
        good[:-1] + b"x",  # something else than a newline
        b"",
    ):
        assert _frame.decode_at(bad, 0) is None, bad


def test_scan_stops_at_first_bad_frame() -> None:
    """scan returns the offsets (plus base) and bodies of the valid run and where it ends."""
    a, b = frame(b"1"), frame(b'"two"')
    data = a + b + b"7 0000"
    frames, end = _frame.scan(data, 0, 100)
    assert frames == [(100, b"1"), (100 + len(a), b'"two"')]
    assert end == len(a) + len(b)
    assert _frame.scan(data, len(a)) == ([(len(a), b'"two"')], len(a) + len(b))


def test_find_next() -> None:
    """find_next finds the first valid frame after a bad one, or -1 when only garbage follows."""
    a = frame(b"1")
    damaged = bytearray(frame(b"12345"))
    damaged[-3] ^= 0x01
    assert _frame.find_next(bytes(damaged) + a, 0) == len(damaged)
    assert _frame.find_next(bytes(damaged) + b"\x00" * 40, 0) == -1
    assert _frame.find_next(b"garbage\nmore garbage\n", 0) == -1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=20))
def test_scan_round_trip(bodies: list[bytes]) -> None:
    """Any bodies without newlines survive encode + scan exactly."""
    data = b"".join(_frame.encode(b) for b in bodies)
    frames, end = _frame.scan(data)
    assert [body for _, body in frames] == bodies
    assert end == len(data)


def test_reader_every_cut_of_the_last_frame_is_a_torn_tail(tmp_path: Path) -> None:
    """Cut anywhere inside the last frame: the others are read, the rest is `torn`."""
    head = frame(b'"first"') + frame(b'"second"')
    last = frame(b'{"third":[1,2,3]}')
    for cut in range(len(last)):
        reader, bodies = reader_over(tmp_path / "f", head + last[:cut], confirmed=True)
        assert bodies == [b'"first"', b'"second"']
        assert (reader.end, reader.torn) == (len(head), cut)


def test_reader_chunks_split_frames(tmp_path: Path) -> None:
    """Frames that straddle chunk boundaries are read whole (chunk of 5 bytes)."""
    bodies = [b'"%d"' % i * (i % 4) for i in range(30)]
    data = b"".join(frame(b) for b in bodies)
    reader, got = reader_over(tmp_path / "f", data, confirmed=True, chunk=5)
    assert got == bodies
    assert (reader.end, reader.torn) == (len(data), 0)


def test_reader_garbage_tail_is_torn(tmp_path: Path) -> None:
    """A NUL-filled or garbage tail with no valid frame after it is torn, not damage (S6)."""
    data = frame(b"1") + b"\x00" * 4096 + b"\n\x00\x00 junk\n"
    reader, bodies = reader_over(tmp_path / "f", data, confirmed=True)
    assert bodies == [b"1"]
    assert (reader.end, reader.torn) == (len(frame(b"1")), len(data) - len(frame(b"1")))


def test_reader_damage_before_valid_frames_is_corruption(tmp_path: Path) -> None:
    """A flipped byte with valid frames after it: CorruptFileError naming offset and line."""
    a, b, c = frame(b'"aaaa"'), frame(b'"bbbb"'), frame(b'"cccc"')
    data = bytearray(a + b + c)
    data[len(a) + 12] ^= 0x20
    with pytest.raises(CorruptFileError) as info:
        reader_over(tmp_path / "f", bytes(data), confirmed=True)
    assert (info.value.offset, info.value.line) == (len(a), 2)
    assert info.value.path == str(tmp_path / "f")
    with pytest.raises(_frame.Suspect) as suspect:
        reader_over(tmp_path / "f", bytes(data), confirmed=False)
    assert suspect.value.offset == len(a)


def test_reader_limit_leaves_a_cut_frame_for_later(tmp_path: Path) -> None:
    """A frame cut by `limit` is neither read nor counted as torn."""
    a, b = frame(b"1"), frame(b"22")
    reader, bodies = reader_over(tmp_path / "f", a + b, confirmed=True, limit=len(a) + 3)
    assert bodies == [b"1"]
    assert (reader.end, reader.torn) == (len(a), 0)


def test_line_at(tmp_path: Path) -> None:
    """line_at counts the newlines before an offset."""
    path = tmp_path / "f"
    path.write_bytes(b"a\nbb\nccc\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert [_frame.line_at(fd, off) for off in (0, 2, 5, 9)] == [1, 2, 3, 4]
    finally:
        os.close(fd)


def test_damaged_in_place() -> None:
    """A whole line without NUL whose length or checksum field agrees is a frame damaged in
    place; a prefix, NUL bytes or garbage are not."""
    good = frame(b'{"a":"bcd"}')
    flipped = good.replace(b"bcd", b"bed")
    assert _frame.damaged_in_place(flipped)  # the length agrees, the checksum does not
    assert _frame.damaged_in_place(b"3" + good[2:])  # "11" -> "3": the checksum agrees
    assert not _frame.damaged_in_place(good[:-1])  # no newline: a prefix
    assert not _frame.damaged_in_place(good[:14] + b"\0" * 5 + good[19:])  # a hole
    assert not _frame.damaged_in_place(b"garbage without a header\n")
    assert not _frame.damaged_in_place(b"11 0000000 {}\n")
    # A separator changed: the checksum field agrees with the rest of the line.
    assert _frame.damaged_in_place(good.replace(b" ", b"!", 1))
    assert _frame.damaged_in_place(good[:11] + b"!" + good[12:])
    # Its own newline changed: the checksum agrees with the body its length delimits,
    # and the next frame no longer starts a line.
    nxt = frame(b'"next"')
    assert _frame.damaged_in_place(good[:-1] + b"\x0b" + nxt)
    assert _frame.damaged_in_place(good[:-1] + b"\x0b")
    # A byte of the body became a newline: a newline stands where the length says.
    assert _frame.damaged_in_place(good.replace(b"bcd", b"b\nd") + nxt)
    # A prefix of a frame and the next frame's bytes (no newline where the length says).
    assert not _frame.damaged_in_place(good[:-3])


def test_reader_hole_before_unproven_frames_is_held(tmp_path: Path) -> None:
    """NUL bytes in a frame with valid frames after it that prove nothing: a possible power
    loss's hole. Read up to it; `held` counts the bytes from there on (never torn); a lock-free
    reader gets Suspect first. Without NUL bytes the same damage is corruption."""
    a, b, c = frame(b'"a"'), frame(b'~"bbbbbbbbbbbb"'), frame(b'~"c"')
    holed = a + b[:5] + b"\0" * 8 + b[13:] + c
    reader, bodies = reader_over(tmp_path / "f", holed, confirmed=True,
                                 proves=lambda body: body[:1] != b"~")
    assert bodies == [b'"a"']
    assert (reader.end, reader.torn, reader.held) == (len(a), 0, len(b) + len(c))
    with pytest.raises(_frame.Suspect):
        reader_over(tmp_path / "f", holed, confirmed=False, proves=lambda body: body[:1] != b"~")
    garbled = a + b[:5] + b"x" * 8 + b[13:] + c
    with pytest.raises(CorruptFileError, match="followed by valid records"):
        reader_over(tmp_path / "f", garbled, confirmed=True, proves=lambda body: body[:1] != b"~")


def test_reader_last_frame_damaged_in_place_is_corruption(tmp_path: Path) -> None:
    """A whole last frame that fails its checksum is corruption, not a torn tail."""
    a, b = frame(b'"a"'), frame(b'"bb"')
    data = a + b.replace(b"bb", b"bc")
    with pytest.raises(CorruptFileError, match="the last record is damaged") as info:
        reader_over(tmp_path / "f", data, confirmed=True)
    assert (info.value.offset, info.value.line) == (len(a), 2)


def test_every_bit_flip_in_the_last_records_is_corruption_or_harmless(tmp_path: Path) -> None:
    """Each single-bit flip in a log's last frames: the log reads every record back, or
    opening it is CorruptFileError (FormatError in its header line). Never a log that
    silently lost acknowledged records, as when a flipped newline, separator or batch mark
    made whole frames look like a torn tail. A flip that makes a NUL byte is the exception:
    a power loss leaves NUL bytes, and the crash model tears writes in 16-byte pieces, so a
    NUL inside the last frame may be a write cut short (docs/log.md)."""
    import racefree
    from racefree._errors import RacefreeError

    path = tmp_path / "ev.log"
    with racefree.AppendLog(path) as log:
        for i in range(3):
            log.append({"i": i})
        log.extend([10, 11, 12])
    raw = path.read_bytes()
    last_two = raw.rindex(b"\n", 0, raw.rindex(b"\n", 0, len(raw) - 1))  # frames 3 and 4
    silent = []
    for pos in range(last_two - 20, len(raw)):
        for bit in range(8):
            damaged = bytearray(raw)
            damaged[pos] ^= 1 << bit
            if damaged[pos] == 0:
                continue
            copy = tmp_path / "copy.log"
            copy.write_bytes(bytes(damaged))
            try:
                with racefree.AppendLog(copy) as log:
                    if len(log) != 6 or list(log) != [{"i": 0}, {"i": 1}, {"i": 2}, 10, 11, 12]:
                        silent.append((pos, bit))
            except RacefreeError:
                pass
            copy.unlink()
    assert silent == []
