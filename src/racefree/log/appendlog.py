"""``AppendLog``: an append-only log of JSON records that many processes share.

Files (see ``docs/log.md``): ``path`` is the active segment, one framed line
per record (:mod:`racefree.log.frame`) after a header line; ``path.snapshot``
holds the fold of the records compaction removed; ``path.lock`` is the
:class:`FileLock` every writer holds. Readers take no lock (except to look
again at damage they saw): they read up to the last whole, valid frame.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from racefree import _fs, _trust
from racefree._errors import CorruptFileError, DurabilityError
from racefree.files.atomic import atomic_write
from racefree.log import frame as _frame
from racefree.log.locking import LogLock
from racefree.log.scan import (
    FORMAT,
    MARK_EVERY,
    UNSYNCED,
    LogCheck,
    Segment,
    View,
    count,
    decode,
    dumps,
    header,
    open_view,
    read_snapshot,
    synced,
)

__all__ = ["AppendLog", "LogCheck"]

T = TypeVar("T")


def _keep(state: Any, record: Any) -> Any:  # check(): decode every record, fold nothing
    return state


# Why a hole is kept (S6): the records after it are valid and were acknowledged; a power
# loss can explain the hole, a flipped bit could not, and cutting them would give their
# sequence numbers to new records. A person decides (docs/log.md, "Torn tails and damage").
_HOLE = ("a damaged record is followed by valid records that were never synced (durable=False): "
         "a power loss can leave that, and so can damage; readers stop before it and appends "
         "refuse, so that the records after it are not thrown away")


class AppendLog:
    """An append-only log of JSON records in one file, shared by threads and processes.

    Every record gets a sequence number: its 0-based position in the log,
    unchanged by compaction; ``len(log)`` is the next one. A number is given
    again only if its record is gone: never acknowledged (a crash tore it), or
    lost to a power loss before it was synced (``durable=False``, or a failed
    sync); nothing racefree does removes a record that is there.

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
      records after it, or a whole record that fails its checksum, raises
      :class:`CorruptFileError` (file, offset, line) for readers and writers;
      nothing is ever thrown away. A hole that a power loss can leave in
      ``durable=False`` records (NUL bytes, then valid unsynced records) is
      the one damage readers read up to rather than raise on; appends and
      :meth:`check` raise ``CorruptFileError`` there and keep every byte
      (see ``docs/log.md``).
    - :meth:`compact` folds records into a snapshot without losing appends
      that land while it runs (pitfall S4).

    A missing file, or an existing empty one, is a new, empty log: the first
    append writes its header line. A handle may be shared by threads; after
    ``fork`` the child reopens the file on first use (``close`` included).
    Close it with :meth:`close` (or ``with``).
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = os.fspath(path)
        self.durable = durable
        self._snapshot_path = self.path + ".snapshot"
        # The log's directory must exist: its lock does not create it either.
        self._lock = LogLock(self.path)
        self._mutex = threading.RLock()  # the cached segment; taken after _lock, never before
        self._seg: Segment | None = None
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
        body = dumps(record)
        return self._write(_frame.encode(body if self.durable else UNSYNCED + body), 1)

    def extend(self, records: Iterable[Any]) -> range:
        """Append several JSON values as one unit; return their sequence numbers.

        All or nothing: the batch is one frame, so a crash leaves all of it or
        none of it, and no other appender's record lands in between.
        """
        bodies = [dumps(record) for record in records]
        if not bodies:
            n = len(self)
            return range(n, n)
        body = bodies[0] if len(bodies) == 1 else b"*%d [%s]" % (len(bodies), b",".join(bodies))
        first = self._write(_frame.encode(body if self.durable else UNSYNCED + body), len(bodies))
        return range(first, first + len(bodies))

    def _write(self, frame: bytes, n: int) -> int:
        self._check(write=True)
        with self._lock, self._mutex:
            seg = self._writable()
            if self.durable and not seg.clean:
                # The frame before ours came from a durable=False appender. Our frame
                # will promise that everything before it was synced (see _logscan), so
                # make it true: otherwise a power loss could keep our record and lose
                # the earlier one, and the hole would be taken for corruption.
                self._sync(seg, "earlier records may or may not be durable")
            offset = seg.end
            try:
                _fs.pwrite_all(seg.fd, frame, offset)
            except BaseException:
                # Take back a partial frame (W6, ENOSPC) rather than leave it for the
                # next writer; if even that fails it is a torn tail, which the next
                # writer removes, and the original error is what the caller sees.
                with contextlib.suppress(OSError):
                    _fs.ftruncate(seg.fd, offset)
                raise
            seq = seg.base + seg.count
            seg.note(offset, n, self.durable)
            seg.end = offset + len(frame)
            if self.durable:
                self._sync(seg, f"record {seq} may or may not be durable")
            return seq

    def _sync(self, seg: Segment, detail: str) -> None:
        try:
            _fs.fdatasync(seg.fd)
        except OSError as exc:  # never retried (W7): the kernel may have dropped the pages
            self._failed = DurabilityError(self.path, exc.errno or errno.EIO, detail)
            raise self._failed from exc

    def _writable(self) -> Segment:
        """The active segment, open for writing, scanned to its end (``_lock`` held)."""
        seg = self._refresh(locked=True, write=True)
        if seg is None or seg.start == 0:  # no file, or an empty one: give it a header
            if read_snapshot(self._snapshot_path, state=False) is not None:
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
        self._check(write=True)
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
            snap = read_snapshot(self._snapshot_path, state=False)
            gen = max(seg.gen, 0 if snap is None else snap.gen) + 1
            meta = b'{"racefree_log_snapshot":%d,"segment":%d,"upto":%d}' % (FORMAT, gen, upto)
            # The snapshot first: until the new segment replaces the old one, the
            # old one still holds every record from `upto` on, so a crash between
            # the two writes leaves a whole log (readers skip what the snapshot covers).
            try:
                # The snapshot is the log's own file: a link at its name is replaced, never
                # followed (T1).
                atomic_write(self._snapshot_path, _frame.encode(meta) + _frame.encode(body),
                             follow_symlinks=False)
                atomic_write(self.path, header(gen, upto) + carried)
            except DurabilityError as exc:  # W7: this handle writes no more
                self._failed = exc
                raise
            self._refresh(locked=True, write=True)
        return upto, state

    def _fold_view(self, view: View | None, fold: Callable[[T, Any], T], initial: T,
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
            for offset, body, seq, _ in self._frames(view.fd, view.start, view.base, tail,
                                                     limit):
                records = decode(self.path, offset, body)
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
            if start - view.base >= MARK_EVERY:  # jump close to `start` with the handle's index
                seg = self._fresh()
                with self._mutex:
                    if seg is not None and seg.ident == view.ident:
                        first, at = seg.locate(start)
            size = _fs.fstat(view.fd).st_size
            for offset, body, seq, n in self._frames(view.fd, at, first, None, size):
                if seq + n > start:  # decode only what is yielded
                    for i, record in enumerate(decode(self.path, offset, body), seq):
                        if i >= start:
                            yield i, record
        finally:
            _fs.close(view.fd)

    def snapshot(self) -> tuple[int, Any] | None:
        """The last compaction's ``(upto, state)``, or None if there was none."""
        self._check()
        snap = read_snapshot(self._snapshot_path, state=True)
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

        Raises :class:`CorruptFileError` (or :class:`FormatError`) on damage,
        and on a hole before valid ``durable=False`` records (which appends
        refuse to cut); an incomplete last record is not damage: it is reported
        as ``torn``, and only that is what the next append (or ``racefree check
        --repair``) cuts. Changes nothing. Takes the writers' lock only to look
        again at damage a lock-free read saw (a writer may have been mid-way).
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
        """Close the file. Other calls then raise ``ValueError``. Idempotent; fork-safe."""
        self._after_fork()
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
    def _check(self, *, write: bool = False) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if write and self._failed is not None:
            raise DurabilityError(self.path, self._failed.errno or errno.EIO,
                                  "an earlier sync failed; this handle refuses further writes")
        self._after_fork()

    def _after_fork(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the parent's descriptor and mutex state are not ours (the
            # mutex may have been held by a parent thread that does not exist here).
            self._pid = os.getpid()
            self._mutex = threading.RLock()
            self._drop()

    def _drop(self) -> None:
        seg, self._seg = self._seg, None
        if seg is not None:
            _fs.close(seg.fd)

    def _fresh(self) -> Segment | None:
        """The cached segment brought up to date without the lock (with it if damage is seen)."""
        with self._mutex:
            try:
                return self._refresh(locked=False, write=False)
            except _frame.Suspect:
                pass
        with self._lock.looking_again(), self._mutex:
            return self._refresh(locked=True, write=False)

    def _refresh(self, *, locked: bool, write: bool) -> Segment | None:
        """Scan the cached segment from where it ended to the end of the file.

        The caller holds ``_mutex``, and ``_lock`` if ``locked``. A switched
        file (a compaction replaced it) is reopened. With ``write`` (the lock
        held) a torn tail is cut off (S6), so that the next frame starts at a
        clean line; a hole before valid unsynced frames is never cut: it raises
        :class:`CorruptFileError` (a reader stops before it).
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
            reader = _frame.Reader(self.path, seg.fd, seg.end, confirmed=locked, proves=synced)
            for frames in reader:
                for offset, body in frames:
                    seg.note(offset, count(self.path, offset, body), synced(body))
                seg.end = reader.end
            if write and reader.held:
                raise reader.corrupt(_HOLE)
            if write and reader.torn:
                _fs.ftruncate(seg.fd, seg.end)  # nothing valid follows (the Reader looked)
                # Sync the cut before anything is written in its place: otherwise a power
                # loss could keep the old torn bytes under part of the new frame, a whole
                # line failing its checksum, which a reader must take for corruption.
                self._sync(seg, "a torn tail was cut")
        except BaseException:
            self._drop()  # the next call rescans from the start, never counts twice
            raise
        return seg

    def _open_segment(self, write: bool) -> Segment:
        # The log is the caller's file: trusted links followed, never blocking, and a
        # FIFO, another user's file in a shared directory or a link they planted refused
        # (UnsafePathError). Opened once per file, not per append (see _refresh).
        fd, _st = _trust.open_followed(self.path, os.O_RDWR if write else os.O_RDONLY)
        try:
            seg = Segment(self.path, fd, write)
        except BaseException:
            _fs.close(fd)
            raise
        self._drop()
        self._seg = seg
        return seg

    def _frames(self, fd: int, offset: int, seq: int, tail: list[_frame.Reader] | None = None,
                limit: int | None = None) -> Iterator[tuple[int, bytes, int, int]]:
        """``(offset, body, sequence number of its first record, records)`` of each valid frame.

        Reads without the lock; damage seen that way is looked at again under
        the lock (a writer may have been rewriting a torn tail), where it
        raises :class:`CorruptFileError` if it is real. ``tail`` (``check()``)
        receives the reader, to learn where the valid frames ended and how much
        is torn, and makes a hole before valid unsynced frames an error too.
        """
        reader = _frame.Reader(self.path, fd, offset, confirmed=False, limit=limit,
                               proves=synced)
        try:
            for frames in reader:
                for offset, body in frames:
                    n = count(self.path, offset, body)
                    yield offset, body, seq, n
                    seq += n
        except _frame.Suspect:
            with self._lock.looking_again():  # collect the rest under the lock; yield it after
                reader = _frame.Reader(self.path, fd, reader.end, confirmed=True, limit=limit,
                                       proves=synced)
                rest = [frame for frames in reader for frame in frames]
            for offset, body in rest:
                n = count(self.path, offset, body)
                yield offset, body, seq, n
                seq += n
        if tail is not None:
            if reader.held:
                raise reader.corrupt(_HOLE)
            tail.append(reader)

    def _open_view(self, *, state: bool) -> View | None:
        return open_view(self.path, self._snapshot_path, self._lock.looking_again(), state=state)
