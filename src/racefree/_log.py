"""``AppendLog``: an append-only log of JSON records that many processes share.

Files (see ``docs/log.md``): ``path`` is the active segment, one framed line
per record (:mod:`racefree._frame`) after a header line; ``path.snapshot``
holds the fold of the records compaction removed; ``path.lock`` is the
:class:`FileLock` every writer holds. Readers take no lock: they read up to
the last whole, valid frame.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from . import _frame, _fs
from ._atomic import atomic_write
from ._errors import CorruptFileError, DurabilityError, FormatError
from ._lock import FileLock

__all__ = ["AppendLog", "LogCheck"]

T = TypeVar("T")

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_ASCII_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
_loads = json.JSONDecoder().decode


def dumps(value: Any, what: str = "record") -> bytes:
    """``value`` as compact UTF-8 JSON; ``TypeError`` if it is not a JSON value."""
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:  # ValueError: NaN, Infinity, a reference cycle
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from None
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: keep it as a \\u escape
        return _ASCII_ENCODER.encode(value).encode()


def _decode(path: str, offset: int, body: bytes) -> list[Any]:
    """The records of one frame's body (a batch frame holds several)."""
    try:
        if body[:1] != b"*":
            return [_loads(body.decode())]
        space = body.index(b" ")
        records = _loads(body[space + 1 :].decode())
        if isinstance(records, list) and len(records) == int(body[1:space]):
            return records
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        pass
    raise CorruptFileError(path, "a record with a valid checksum is not valid JSON", offset=offset)


#: The on-disk format version written in every header and snapshot.
FORMAT = 1
_HEAD = 4096  # header and snapshot-meta lines are shorter than this
_MARK_EVERY = 1024  # the per-handle index keeps the offset of every 1024th frame


def header(gen: int, base: int) -> bytes:
    """The first line of a segment: its generation and the sequence number of its first record."""
    return _frame.encode(b'{"racefree_log":%d,"segment":%d,"base":%d}' % (FORMAT, gen, base))


def _meta(path: str, body: bytes, key: str, fields: tuple[str, str]) -> tuple[int, int] | None:
    """The two integer ``fields`` of a header-like JSON object tagged ``key``, or None."""
    try:
        obj = _loads(body.decode())
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), int):
        return None
    if obj[key] > FORMAT:
        raise FormatError(path, f"written in format {obj[key]} by a newer racefree")
    a, b = obj.get(fields[0]), obj.get(fields[1])
    if isinstance(a, int) and isinstance(b, int) and a >= 0 and b >= 0:
        return a, b
    return None


def _read_header(path: str, fd: int) -> tuple[int, int, int] | None:
    """``(generation, base, offset of the first record)``, or None for an empty file."""
    head = _fs.pread(fd, _HEAD, 0)
    if not head:
        return None
    got = _frame.decode_at(head, 0)
    meta = _meta(path, got[0], "racefree_log", ("segment", "base")) if got else None
    if got is None or meta is None:
        raise FormatError(path, "not a racefree log: its first line is not a valid log header")
    return meta[0], meta[1], got[1]


def _count(path: str, offset: int, body: bytes) -> int:
    """How many records a frame holds (a batch frame's body is ``*<n> [...]``)."""
    if body[:1] != b"*":
        return 1
    digits = body[1 : body.find(b" ")]
    if digits.isdigit():
        return int(digits)
    raise CorruptFileError(path, "a batch record has no valid count", offset=offset)


class _Snapshot(NamedTuple):
    gen: int
    upto: int
    state: Any


class _View(NamedTuple):
    """A segment opened for one read, and the snapshot that goes with it."""

    fd: int
    ident: tuple[int, int]
    gen: int
    base: int
    start: int
    upto: int  # records before this are in the snapshot
    snapshot: _Snapshot | None


class _Changed(Exception):
    """The segment was switched while a view was being opened: try again."""


class _Segment:
    """A handle's cached knowledge of the active segment: where it ends, how many records."""

    __slots__ = ("base", "count", "end", "fd", "frames", "gen", "ident", "mark_off",
                 "mark_seq", "start", "writable")

    def __init__(self, fd: int, ident: tuple[int, int], gen: int, base: int, start: int,
                 writable: bool) -> None:
        self.fd = fd
        self.ident = ident
        self.gen = gen
        self.base = base
        self.start = self.end = start
        self.count = self.frames = 0
        self.writable = writable
        self.mark_seq: list[int] = []
        self.mark_off: list[int] = []

    def note(self, offset: int, n: int) -> None:
        """Count the frame at ``offset`` holding ``n`` records."""
        if not self.frames % _MARK_EVERY:
            self.mark_seq.append(self.base + self.count)
            self.mark_off.append(offset)
        self.frames += 1
        self.count += n

    def locate(self, seq: int) -> tuple[int, int]:
        """``(sequence number, offset)`` of an indexed frame at or before record ``seq``."""
        i = bisect_right(self.mark_seq, seq) - 1
        return (self.base, self.start) if i < 0 else (self.mark_seq[i], self.mark_off[i])


def _keep(state: Any, record: Any) -> Any:
    return state


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


class AppendLog:
    """An append-only log of JSON records in one file, shared by threads and processes.

    Every record gets a sequence number: its 0-based position in the log,
    never reused and unchanged by compaction; ``len(log)`` is the next one.

    - :meth:`append` and :meth:`extend` are atomic (a record, or a whole batch,
      is there entirely or not at all, also after a crash) and, with
      ``durable=True`` (the default), durable when they return (``fdatasync``).
      With ``durable=False`` an acknowledged record survives the process being
      killed but not a power loss.
    - Appends from any number of threads and processes never interleave or
      get lost; each appender's records keep its order.
    - Readers never block writers and see every record acknowledged before
      their read began. An incomplete last record (a crash mid-append) is
      invisible, and the next append removes it. A damaged record with valid
      records after it raises :class:`CorruptFileError` (file, offset, line);
      nothing is ever thrown away.
    - :meth:`compact` folds records into a snapshot without losing appends
      that land while it runs (pitfall S4).

    A handle may be shared by threads; after ``fork`` the child reopens the
    file on first use. Close it with :meth:`close` (or ``with``).
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = os.fspath(path)
        self.durable = durable
        self._snapshot_path = self.path + ".snapshot"
        self._lock = FileLock(self.path + ".lock")
        self._mutex = threading.RLock()  # the cached segment; taken after _lock, never before
        self._seg: _Segment | None = None
        self._pid = os.getpid()
        self._failed: DurabilityError | None = None
        self._closed = False

    # -- writing --------------------------------------------------------------
    def append(self, record: Any) -> int:
        """Append one JSON value; return its sequence number.

        ``TypeError`` (nothing written) if ``record`` is not a JSON value.
        Atomic; durable when it returns if ``durable=True``. If the write or
        the sync fails the error is raised: after a failed write nothing is
        appended, after a failed sync (:class:`DurabilityError`) the record may
        or may not be there, and this handle refuses further writes.
        """
        return self._write(_frame.encode(dumps(record)), 1)

    def extend(self, records: Iterable[Any]) -> range:
        """Append several JSON values as one unit; return their sequence numbers.

        All or nothing: the batch is one frame, so a crash leaves all of it or
        none of it, and no other appender's record lands in between.
        """
        bodies = [dumps(record) for record in records]
        if not bodies:
            n = len(self)
            return range(n, n)
        if len(bodies) == 1:
            frame = _frame.encode(bodies[0])
        else:
            frame = _frame.encode(b"*%d [%s]" % (len(bodies), b",".join(bodies)))
        first = self._write(frame, len(bodies))
        return range(first, first + len(bodies))

    def _write(self, frame: bytes, n: int) -> int:
        self._check()
        if self._failed is not None:
            raise DurabilityError(self.path, self._failed.errno or errno.EIO,
                                  "an earlier sync failed; this handle refuses further writes")
        with self._lock, self._mutex:
            seg = self._writable()
            offset = seg.end
            try:
                _fs.pwrite_all(seg.fd, frame, offset)
            except BaseException:
                # Take back a partial frame (W6, ENOSPC) so that no reader ever
                # meets it; if even that fails it is a torn tail that the next
                # writer removes, and the original error is what the caller sees.
                with contextlib.suppress(OSError):
                    _fs.ftruncate(seg.fd, offset)
                raise
            seq = seg.base + seg.count
            seg.note(offset, n)
            seg.end = offset + len(frame)
            if self.durable:
                try:
                    _fs.fdatasync(seg.fd)
                except OSError as exc:  # never retried (W7): the pages may be gone
                    self._failed = DurabilityError(self.path, exc.errno or errno.EIO,
                                                   f"record {seq} may or may not be durable")
                    raise self._failed from exc
            return seq

    def _writable(self) -> _Segment:
        """The active segment, open for writing, scanned to its end (``_lock`` held)."""
        seg = self._refresh(locked=True, write=True)
        if seg is None or seg.start == 0:  # no file, or an empty one: give it a header
            if self._read_snapshot(state=False) is not None:
                raise CorruptFileError(self.path, f"the log is missing or empty but "
                                       f"{self._snapshot_path} exists")
            atomic_write(self.path, header(0, 0), durable=True)
            seg = self._refresh(locked=True, write=True)
            assert seg is not None
        return seg

    # -- compaction -----------------------------------------------------------
    def compact(self, fold: Callable[[T, Any], T], initial: T) -> tuple[int, T]:
        """Fold the stored records into the snapshot and start a new, shorter segment.

        The new snapshot is ``fold`` applied to each record after the current
        snapshot, starting from its state (or from ``initial`` if there is
        none). Returns ``(upto, state)``: records before ``upto`` are now only
        in the snapshot; sequence numbers go on from where they were. The fold
        runs without the lock; under the lock, the records appended meanwhile
        are carried into the new segment, so none is lost (S4). Always durable.
        A crash at any point leaves the old state or the new one (see
        ``docs/log.md``); running it again is safe. If ``fold`` raises, or its
        result is not a JSON value (``TypeError``), nothing is written.
        """
        self._check()
        ident, state, upto, end = self._fold_view(self._open_view(state=True), fold, initial)
        with self._lock, self._mutex:
            seg = self._writable()
            if seg.ident != ident:  # another compaction, or the first append, came first
                ident, state, upto, end = self._fold_view(
                    self._open_view(state=True), fold, initial)
            if ident != seg.ident or not seg.start <= end <= seg.end:
                raise CorruptFileError(self.path, "the log changed while its lock was held")
            # Records appended while the fold ran (S4: the seed's compactLog lost them).
            carried = _fs.pread(seg.fd, seg.end - end, end) if seg.end > end else b""
            body = dumps(state, "the folded state")
            gen = max(seg.gen, self._snapshot_gen()) + 1
            meta = b'{"racefree_log_snapshot":%d,"segment":%d,"upto":%d}' % (FORMAT, gen, upto)
            # The snapshot first: until the new segment replaces the old one, the
            # old one still holds every record from `upto` on, so a crash between
            # the two writes leaves a whole log (readers skip what the snapshot covers).
            atomic_write(self._snapshot_path, _frame.encode(meta) + _frame.encode(body))
            atomic_write(self.path, header(gen, upto) + carried)
            self._refresh(locked=True, write=True)
        return upto, state

    def _fold_view(self, view: _View | None, fold: Callable[[T, Any], T], initial: T,
                   tail: list[_frame.Reader] | None = None,
                   ) -> tuple[tuple[int, int] | None, T, int, int]:
        """``(ident, state, upto, end)``: ``fold`` over the view's records after its snapshot.

        Only the records in the file when the view was opened, unless ``tail``
        is given: then every record up to the end, and ``tail`` gets the reader.
        """
        if view is None:
            return None, initial, 0, 0
        try:
            state: T = view.snapshot.state if view.snapshot is not None else initial
            nxt = view.base
            limit = None if tail is not None else _fs.fstat(view.fd).st_size
            tail = [] if tail is None else tail
            for offset, body, seq in self._frames(view.fd, view.start, view.base, tail, limit):
                records = _decode(self.path, offset, body)
                for i, record in enumerate(records, seq):
                    if i >= view.upto:
                        state = fold(state, record)
                nxt = seq + len(records)
            if nxt < view.upto:
                raise CorruptFileError(self._snapshot_path, f"the snapshot covers records up to "
                                       f"{view.upto} but the log ends at {nxt}")
            return view.ident, state, nxt, tail[-1].end
        finally:
            _fs.close(view.fd)

    # -- reading --------------------------------------------------------------
    def __len__(self) -> int:
        """The number of records ever appended (the next sequence number)."""
        self._check()
        seg = self._fresh()
        return 0 if seg is None else seg.base + seg.count

    def __iter__(self) -> Iterator[Any]:
        """Iterate the records after the snapshot (all of them if there is none)."""
        return self.read()

    def read(self, start: int | None = None) -> Iterator[Any]:
        """Iterate the records from sequence number ``start`` on.

        ``start=None`` starts after the snapshot (see :meth:`snapshot`). The
        iterator reads the file as it is when iteration begins: it yields every
        record acknowledged before then, and may yield some appended later; it
        keeps working across a compaction. A ``start`` before the first stored
        record (compacted into the snapshot) raises ``ValueError``.
        """
        return (record for _, record in self.items(start))

    def items(self, start: int | None = None) -> Iterator[tuple[int, Any]]:
        """Like :meth:`read`, yielding ``(sequence number, record)`` pairs."""
        self._check()
        view = self._open_view(state=False)
        if view is None:
            return
        try:
            if start is None:
                start = view.upto
            if start < view.base:
                raise ValueError(f"records before {view.base} of {self.path} were compacted "
                                 f"into its snapshot; read from {view.base} on")
            at, first = view.start, view.base
            if start - view.base >= _MARK_EVERY:  # jump close to `start` with the handle's index
                seg = self._fresh()
                with self._mutex:
                    if seg is not None and seg.ident == view.ident:
                        first, at = seg.locate(start)
            size = _fs.fstat(view.fd).st_size
            for offset, body, seq in self._frames(view.fd, at, first, None, size):
                if body[:1] != b"*":
                    if seq >= start:
                        yield seq, _decode(self.path, offset, body)[0]
                    continue
                for i, record in enumerate(_decode(self.path, offset, body), seq):
                    if i >= start:
                        yield i, record
        finally:
            _fs.close(view.fd)

    def snapshot(self) -> tuple[int, Any] | None:
        """The last compaction's ``(upto, state)``, or None if there was none."""
        self._check()
        snap = self._read_snapshot(state=True)
        return None if snap is None else (snap.upto, snap.state)

    def replay(self, fold: Callable[[T, Any], T], initial: T) -> T:
        """The fold of every record ever appended: the snapshot's state, then the records after it.

        The snapshot and the records are read consistently, also while another
        process compacts. ``initial`` is used only if there is no snapshot.
        """
        self._check()
        return self._fold_view(self._open_view(state=True), fold, initial)[1]

    def check(self) -> LogCheck:
        """Verify the segment and the snapshot: framing, checksums, JSON, sequence numbers.

        Raises :class:`CorruptFileError` (or :class:`FormatError`) on damage;
        an incomplete last record is not damage: it is reported as ``torn``.
        Takes no lock and changes nothing.
        """
        self._check()
        view = self._open_view(state=True)
        if view is None:
            return LogCheck(self.path, 0, 0, None, 0, 0, 0, 0)
        tail: list[_frame.Reader] = []
        nxt = self._fold_view(view, _keep, None, tail)[2]
        end, torn = tail[0].end, tail[0].torn
        upto = None if view.snapshot is None else view.snapshot.upto
        return LogCheck(self.path, view.gen, view.base, upto, nxt - max(view.base, view.upto),
                        nxt, end + torn, torn)

    def close(self) -> None:
        """Close the file. Other calls then raise ``ValueError``. Idempotent."""
        with self._mutex:
            self._closed = True
            self._drop()

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<AppendLog {self.path!r} durable={self.durable}>"

    # -- the machinery --------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if self._pid != os.getpid():
            # A forked child: the parent's descriptor and mutex state are not ours.
            self._pid = os.getpid()
            self._mutex = threading.RLock()
            self._drop()

    def _drop(self) -> None:
        seg, self._seg = self._seg, None
        if seg is not None:
            _fs.close(seg.fd)

    def _fresh(self) -> _Segment | None:
        """The cached segment brought up to date without the lock (with it if damage is seen)."""
        with self._mutex:
            try:
                return self._refresh(locked=False, write=False)
            except _frame.Suspect:
                pass
        with self._lock, self._mutex:
            return self._refresh(locked=True, write=False)

    def _refresh(self, *, locked: bool, write: bool) -> _Segment | None:
        """Scan the cached segment from where it ended to the end of the file.

        The caller holds ``_mutex``, and ``_lock`` if ``locked``. A switched
        file (a compaction replaced it) is reopened. With ``write`` (the lock
        held) an incomplete last record is cut off (S6), so that the next frame
        starts at a clean line.
        """
        try:
            st = _fs.stat(self.path)
        except FileNotFoundError:
            self._drop()
            return None
        seg = self._seg
        try:
            if seg is None or seg.ident != (st.st_dev, st.st_ino) or (write and not seg.writable):
                seg = self._open_segment(write)
            elif st.st_size == seg.end:
                return seg
            elif st.st_size < seg.end:
                raise CorruptFileError(self.path, "the file was cut short behind valid records",
                                       offset=st.st_size)
            reader = _frame.Reader(self.path, seg.fd, seg.end, confirmed=locked)
            for frames in reader:
                for offset, body in frames:
                    seg.note(offset, _count(self.path, offset, body))
                seg.end = reader.end
            if write and reader.torn:
                _fs.ftruncate(seg.fd, seg.end)
        except BaseException:
            self._drop()  # the next call rescans from the start, never counts twice
            raise
        return seg

    def _open_segment(self, write: bool) -> _Segment:
        fd = _fs.open(self.path, os.O_RDWR if write else os.O_RDONLY)
        try:
            st = _fs.fstat(fd)
            gen, base, start = _read_header(self.path, fd) or (0, 0, 0)
        except BaseException:
            _fs.close(fd)
            raise
        self._drop()
        self._seg = _Segment(fd, (st.st_dev, st.st_ino), gen, base, start, write)
        return self._seg

    def _frames(self, fd: int, offset: int, seq: int, tail: list[_frame.Reader] | None = None,
                limit: int | None = None) -> Iterator[tuple[int, bytes, int]]:
        """``(offset, body, sequence number of its first record)`` of each valid frame.

        Reads without the lock; damage seen that way is looked at again under
        the lock (a writer may have been rewriting a torn tail), where it
        raises :class:`CorruptFileError` if it is real. ``tail`` receives the
        reader, to learn where the valid frames ended and how much is torn.
        """
        reader = _frame.Reader(self.path, fd, offset, confirmed=False, limit=limit)
        try:
            for frames in reader:
                for offset, body in frames:
                    yield offset, body, seq
                    seq += _count(self.path, offset, body)
        except _frame.Suspect:
            with self._lock:  # collect the rest under the lock; yield it after releasing
                reader = _frame.Reader(self.path, fd, reader.end, confirmed=True, limit=limit)
                rest = [frame for frames in reader for frame in frames]
            for offset, body in rest:
                yield offset, body, seq
                seq += _count(self.path, offset, body)
        if tail is not None:
            tail.append(reader)

    def _read_snapshot(self, *, state: bool) -> _Snapshot | None:
        """The snapshot file, all of it (``state``) or only its first line; None if absent."""
        path = self._snapshot_path
        try:
            fd = _fs.open(path, os.O_RDONLY)
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
            return _Snapshot(meta[0], meta[1], None)
        second = _frame.decode_at(data, got[1])
        if second is None or second[1] != len(data):
            raise CorruptFileError(path, "the snapshot's state is damaged", offset=got[1], line=2)
        try:
            value = _loads(second[0].decode())
        except ValueError:
            raise CorruptFileError(path, "the snapshot's state is not valid JSON",
                                   offset=got[1], line=2) from None
        return _Snapshot(meta[0], meta[1], value)

    def _snapshot_gen(self) -> int:
        snap = self._read_snapshot(state=False)
        return 0 if snap is None else snap.gen

    def _open_view(self, *, state: bool) -> _View | None:
        """Open the active segment for one read, with its snapshot; None if there is no log.

        Lock-free: the snapshot is written before the segment it goes with is
        renamed into place, so if the file opened is still the active one after
        the snapshot was read, the two belong together. After three switches
        in a row (compactions back to back) it takes the lock.
        """
        for attempt in range(4):
            try:
                if attempt < 3:
                    return self._try_view(state)
                with self._lock:
                    return self._try_view(state)
            except _Changed:
                continue
        raise CorruptFileError(self.path, "the log file is being replaced by something else")

    def _try_view(self, state: bool) -> _View | None:
        try:
            fd = _fs.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            if self._read_snapshot(state=False) is not None:
                raise CorruptFileError(self.path, f"the log is missing but "
                                       f"{self._snapshot_path} exists") from None
            return None
        try:
            st = _fs.fstat(fd)
            ident = (st.st_dev, st.st_ino)
            gen, base, start = _read_header(self.path, fd) or (0, 0, 0)
            snap = self._read_snapshot(state=state)
            try:
                now = _fs.stat(self.path)
            except FileNotFoundError:
                raise _Changed from None
            if (now.st_dev, now.st_ino) != ident:
                raise _Changed
            upto = 0 if snap is None else snap.upto
            if upto < base:
                raise CorruptFileError(self.path, f"records {upto} to {base - 1} are neither "
                                       f"in the log nor in its snapshot")
            return _View(fd, ident, gen, base, start, upto, snap)
        except BaseException:
            _fs.close(fd)
            raise
