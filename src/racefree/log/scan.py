"""The on-disk format of :class:`racefree.AppendLog`, and reading it.

A segment file is a header line then one frame (:mod:`racefree.log.frame`) per
record, or per batch::

    39 8afa8dbf {"racefree_log":1,"segment":0,"base":0}
    7 561bacaf {"a":1}
    10 353e09b9 *3 [1,2,3]

``segment`` is the file's generation (each compaction adds one) and ``base``
the sequence number of its first record. A record's body is its compact JSON
text; a batch's is ``*<n> `` and a JSON array of its ``n`` records (one frame,
so all or nothing). A body written by a ``durable=False`` appender starts with
``~``: it promises nothing about the disk. Every other frame promises that the
file before it had been synced when it was written (and that its writer syncs
it before releasing the lock), so a valid one after a damaged frame proves the
damage is not a power loss's hole in unsynced writes, but corruption.

The snapshot file holds two frames: ``{"racefree_log_snapshot":1,"segment":g,
"upto":n}`` and the folded state, the fold of records ``0..n-1``.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple

from racefree import _fs, _json, _trust
from racefree._errors import CorruptFileError, FormatError
from racefree.log import frame as _frame

__all__ = [
    "FORMAT", "MARK_EVERY", "UNSYNCED", "LogCheck", "Segment", "Snapshot", "View", "count",
    "decode", "dumps", "header", "open_view", "read_header", "read_snapshot", "synced",
]

#: The on-disk format version written in every header and snapshot.
FORMAT = 1
#: The first byte of the body of a frame that was not synced (``durable=False``).
UNSYNCED = b"~"
_HEAD = 4096  # header and snapshot-meta lines are shorter than this
MARK_EVERY = 1024  # a handle's index keeps the offset of every 1024th frame

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_ASCII_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
_loads = json.JSONDecoder().decode


def dumps(value: Any, what: str = "record") -> bytes:
    """``value`` as compact UTF-8 JSON; ``TypeError`` if it is not a JSON value."""
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:  # ValueError: NaN, Infinity, a reference cycle
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:  # nested deeper than the encoder goes from this call stack
        raise TypeError(f"{what} is not JSON-serialisable: it is nested too deeply") from None
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: keep it as a \\u escape
        return _ASCII_ENCODER.encode(value).encode()


def synced(body: bytes) -> bool:
    """Whether a frame proves that the file before it was synced when it was written."""
    return body[:1] != UNSYNCED


def decode(path: str, offset: int, body: bytes) -> list[Any]:
    """The records of one frame's body (a batch frame holds several)."""
    if body[:1] == UNSYNCED:
        body = body[1:]
    try:
        if body[:1] != b"*":
            try:
                return [_loads(body.decode())]
            except RecursionError:  # a deep call stack: parsed again on a fresh one
                return [_json.parse(_loads, body.decode())]
        n = count(path, offset, body)
        space = body.index(b" ")
        records = _json.parse(_loads, body[space + 1 :].decode())
        if isinstance(records, list) and len(records) == n:
            return records
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        pass
    except _json.TooDeep:
        raise CorruptFileError(path, "a record is nested too deeply to parse",
                               offset=offset) from None
    raise CorruptFileError(path, "a record with a valid checksum is not valid JSON", offset=offset)


def count(path: str, offset: int, body: bytes) -> int:
    """How many records a frame holds, without decoding them."""
    if body[:1] == UNSYNCED:
        body = body[1:]
    if body[:1] != b"*":
        return 1
    space = body.find(b" ")
    digits = body[1:space] if space > 0 else b""
    if 0 < len(digits) <= 20 and digits.isdigit() and digits[:1] != b"0":
        n = int(digits)
        # n records in a JSON array take at least 2n + 1 bytes ("[" + n values and
        # n - 1 commas + "]"): a count larger than that is damage, however its checksum
        # came to agree (a batch count must never make len() or a reader believe in
        # records that are not there).
        if 2 * n + 1 <= len(body) - space - 1:
            return n
    raise CorruptFileError(path, "a batch record has no valid count", offset=offset)


def header(gen: int, base: int) -> bytes:
    """The first line of a segment of generation ``gen`` whose first record is ``base``."""
    return _frame.encode(b'{"racefree_log":%d,"segment":%d,"base":%d}' % (FORMAT, gen, base))


_LIMIT = 1 << 63


def _meta(path: str, body: bytes, key: str, fields: tuple[str, str]) -> tuple[int, int] | None:
    """The two integer ``fields`` of a header-like JSON object tagged ``key``, or None."""
    try:
        obj = _json.parse(_loads, body.decode())
    except (ValueError, _json.TooDeep):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), int):
        return None
    if obj[key] > FORMAT:
        raise FormatError(path, f"written in format {obj[key]} by a newer racefree")
    a, b = obj.get(fields[0]), obj.get(fields[1])
    # Below 2**63: no log reaches that many records or generations (``len()`` could not
    # say it), so a larger value, with a valid checksum, is damage, not a header.
    if type(a) is int and type(b) is int and 0 <= a < _LIMIT and 0 <= b < _LIMIT:
        return a, b
    return None


def read_header(head: bytes, path: str = "log") -> tuple[int, int, int] | None:
    """``(generation, base, offset of the first record)`` from a segment's first bytes.

    None for an empty file (an empty log); :class:`FormatError` if the first
    line is not a log header.
    """
    if not head:
        return None
    got = _frame.decode_at(head, 0)
    meta = _meta(path, got[0], "racefree_log", ("segment", "base")) if got else None
    if got is None or meta is None:
        raise FormatError(path, "not a racefree log: its first line is not a valid log header")
    return meta[0], meta[1], got[1]


@dataclass(frozen=True)
class LogCheck:
    """What :meth:`AppendLog.check` found. Every count is of records, not lines."""

    path: str
    segment: int  #: the generation of the active segment file (0 before any compaction)
    first: int  #: the sequence number of the first record the segment stores
    snapshot_upto: int | None  #: records before this are in the snapshot; None: no snapshot
    records: int  #: records after the snapshot: what iterating the log yields
    next: int  #: ``len(log)``: the sequence number the next record will get
    size: int  #: bytes of the segment file
    torn: int  #: bytes of an incomplete last record (0: none); the next append removes them


class Snapshot(NamedTuple):
    gen: int
    upto: int  # the records before this one are folded into `state`
    state: Any


def read_snapshot(path: str, *, state: bool) -> Snapshot | None:
    """The snapshot file at ``path``, all of it (``state``) or only its first line; None if absent.

    It is written with ``atomic_write``, so any damage is corruption. It is
    racefree's own file: opened with ``_trust.open_own`` (never through a link,
    never blocking on a FIFO, a regular file of a trusted owner, or
    :class:`~racefree.UnsafePathError`).
    """
    try:
        fd, _st, _created = _trust.open_own(path, os.O_RDONLY, create=False)
    except FileNotFoundError:
        return None
    try:
        data = _fs.read_all(fd) if state else _fs.pread(fd, _HEAD, 0)
    finally:
        _fs.close(fd)
    got = _frame.decode_at(data, 0)
    meta = _meta(path, got[0], "racefree_log_snapshot", ("segment", "upto")) if got else None
    if got is None or meta is None:
        raise CorruptFileError(path, "not a valid log snapshot", offset=0, line=1)
    if not state:
        return Snapshot(meta[0], meta[1], None)
    second = _frame.decode_at(data, got[1])
    if second is None or second[1] != len(data):
        raise CorruptFileError(path, "the snapshot's state is damaged", offset=got[1], line=2)
    try:
        value = _json.parse(_loads, second[0].decode())
    except ValueError:
        raise CorruptFileError(path, "the snapshot's state is not valid JSON",
                               offset=got[1], line=2) from None
    except _json.TooDeep:
        raise CorruptFileError(path, "the snapshot's state is nested too deeply to parse",
                               offset=got[1], line=2) from None
    return Snapshot(meta[0], meta[1], value)


class View(NamedTuple):
    """A segment opened for one read (the caller closes ``fd``), and its snapshot."""

    fd: int
    ident: tuple[int, int]  # (st_dev, st_ino) of the segment file
    gen: int
    base: int
    start: int  # offset of the first record
    upto: int  # records before this are in the snapshot (0: no snapshot)
    snapshot: Snapshot | None


class _Changed(Exception):
    """The segment was switched while a view was being opened: try again."""


def open_view(path: str, snapshot_path: str, lock: AbstractContextManager[object], *,
              state: bool) -> View | None:
    """Open the active segment and read its snapshot; None if there is no log.

    Lock-free and consistent: compaction writes the snapshot before it renames
    the new segment into place, so if the file opened here is still the active
    one after the snapshot was read, the two belong together; if not, it tries
    again. After three switches in a row (compactions back to back) it takes
    ``lock``, the writers' lock.
    """
    for attempt in range(4):
        try:
            if attempt < 3:
                return _try_view(path, snapshot_path, state)
            with lock:
                return _try_view(path, snapshot_path, state)
        except _Changed:
            continue
    raise CorruptFileError(path, "the log file is being replaced by something else")


def _try_view(path: str, snapshot_path: str, state: bool) -> View | None:
    try:
        fd, _st = _trust.open_followed(path, os.O_RDONLY)  # the caller's file: see AppendLog
    except FileNotFoundError:
        if read_snapshot(snapshot_path, state=False) is not None:
            raise CorruptFileError(path, f"the log is missing but {snapshot_path} exists") from None
        return None
    try:
        st = _fs.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        gen, base, start = read_header(_fs.pread(fd, _HEAD, 0), path) or (0, 0, 0)
        snap = read_snapshot(snapshot_path, state=state)
        try:
            now = _fs.stat(path)
        except FileNotFoundError:
            raise _Changed from None
        if (now.st_dev, now.st_ino) != ident:
            raise _Changed
        upto = 0 if snap is None else snap.upto
        if upto < base:
            raise CorruptFileError(path, f"records {upto} to {base - 1} are neither in the log "
                                   f"nor in its snapshot")
        return View(fd, ident, gen, base, start, upto, snap)
    except BaseException:
        _fs.close(fd)
        raise


class Segment:
    """A handle's cached knowledge of the active segment: where it ends, how many records."""

    __slots__ = ("base", "clean", "count", "end", "fd", "frames", "gen", "ident", "mark_off",
                 "mark_seq", "start", "writable")

    def __init__(self, path: str, fd: int, writable: bool) -> None:
        """Read the header of the open segment ``fd`` (the caller closes it on error)."""
        st = _fs.fstat(fd)
        self.fd = fd
        self.writable = writable
        self.ident = (st.st_dev, st.st_ino)
        self.gen, self.base, self.start = read_header(_fs.pread(fd, _HEAD, 0), path) or (0, 0, 0)
        self.end = self.start
        self.count = self.frames = 0
        self.clean = True  # the last frame (or the header) is known to be synced
        self.mark_seq: list[int] = []
        self.mark_off: list[int] = []

    def note(self, offset: int, n: int, clean: bool) -> None:
        """Count the frame at ``offset``, holding ``n`` records, synced by its writer or not."""
        if not self.frames % MARK_EVERY:
            self.mark_seq.append(self.base + self.count)
            self.mark_off.append(offset)
        self.frames += 1
        self.count += n
        self.clean = clean

    def locate(self, seq: int) -> tuple[int, int]:
        """``(sequence number, offset)`` of an indexed frame at or before record ``seq``."""
        i = bisect_right(self.mark_seq, seq) - 1
        return (self.base, self.start) if i < 0 else (self.mark_seq[i], self.mark_off[i])
