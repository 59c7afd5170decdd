"""The shared-file core of :mod:`racefree.logging`: one log file that many processes append to.

Every process that logs to ``app.log`` also opens its sidecar ``.app.log.lock``
(:mod:`racefree.logging.sidecar`): a lock, and a control block holding the
rotation *generation*.

Writers proceed together. A record of up to ``SHARED_MAX`` bytes is one
``write(2)`` on an ``O_APPEND`` descriptor, which lands whole at the end of the
file whatever the others do. What writers exclude is a rotation, which holds
the lock *exclusively*. A writer appends either holding the lock *shared*
(``flock(LOCK_SH)``, check, write, ``flock(LOCK_UN)``) or, once it has a slot,
without it (:mod:`racefree.logging.sole`: an exclusive holder fences such
writers out before it goes on). Either way:

- a writer compares the generation with the one its descriptor was opened at
  before it writes, and no rotation (which renames the file and bumps the
  generation) can run until that write is done. So no record is ever written
  to a file after that file was rotated: the backup, once renamed, is never
  written again (which is what lets a compressor read it without the lock);
- between a writer's size check (``lseek``) and its ``write``, other writers'
  records may land. So a file can grow past ``maxBytes`` by at most one record
  per writer that was between those two steps; each writer finds the file
  full at its next record and takes the exclusive path, where the size is
  exact and the rotation is decided once. A single writer gets exactly the
  standard library's rule (it counts instead of measuring, see ``sole``);
- writers that found the file full all ask for the exclusive hold, but only
  the first to get it rotates; the others stop waiting as soon as the
  generation moves on (``exclusive.ExclusivePath._append_exclusive``). Waits
  poll (a blocking ``flock`` cannot time out): yielding the processor for the
  first 1 ms, then every 20 µs (plus the timer slack) until 5 ms, then backing off.

Larger records, rotations and the repair of a torn record take the exclusive
path, which sets a "write in progress" mark first: a SIGKILL can stop a large
``write(2)`` between two pages, and the next holder then ends the torn record
with a newline. (A smaller record can be cut only where it crosses a page
boundary, by a SIGKILL inside its ``write(2)``, or by a full disk; the next
record then follows it on the same line. See ``docs/logging.md``.)
"""

from __future__ import annotations

import fcntl
import logging as _stdlib_logging
import logging.handlers as _stdlib_handlers
import os
import sys
import threading
import time
from typing import Any, Literal

from racefree import _fork, _fs
from racefree._errors import DurabilityError
from racefree.logging import compress as _gzip
from racefree.logging.exclusive import NEVER, ExclusivePath
from racefree.logging.finish import _NULL, RotationFinisher, _Finish
from racefree.logging.formatting import TimeText, record_encoding
from racefree.logging.hooks import _FILTER, _HANDLER_FORMAT, StdlibHooks
from racefree.logging.opening import _LIVE, Opening
from racefree.logging.rotation import RotationSteps
from racefree.logging.sidecar import (
    OFF_DIRTY,
    SHARED_MAX,
    UNKNOWN_END,
    W_EPOCH,
    Sidecar,
)
from racefree.logging.sole import SoleWriter
from racefree.logging.stream import SharedStream

__all__ = ["Durable", "SharedFileHandler"]

Durable = Literal["record", "rotate", False]

_LOCK_SH_NB = fcntl.LOCK_SH | fcntl.LOCK_NB
_LOCK_SH = fcntl.LOCK_SH
_LOCK_EX = fcntl.LOCK_EX
_LOCK_UN = fcntl.LOCK_UN
_SEEK_END = os.SEEK_END
_W_EPOCH = W_EPOCH
_LogRecord = _stdlib_logging.LogRecord
#: Whether ``Handler.handle`` logs the record a filter returns (3.12+), or the original.
_FILTER_REPLACES = sys.version_info >= (3, 12)
_WRITTEN = -3  # _append_shared: the record is in the file
_BUSY = -4  # _append_shared without waiting: the lock is held exclusively



class SharedFileHandler(
    Opening, SoleWriter, StdlibHooks, ExclusivePath, RotationSteps, RotationFinisher,
    _stdlib_handlers.BaseRotatingHandler,
):
    """Base of the racefree handlers: appends whole records, rotates under the exclusive hold.

    A :class:`logging.handlers.BaseRotatingHandler` (so a ``FileHandler``) with
    its attributes: ``baseFilename``, ``mode``, ``encoding``, ``errors``,
    ``delay``, ``stream`` (a file-like object writing through the handler, None
    until the file is open), ``namer``, ``rotator``. Subclasses decide when to
    rotate (:meth:`_should_rotate_locked`) and how (:meth:`_rotate_locked`);
    this class owns the descriptors, the sidecar, fork safety, durability and
    compression. A path that exists and is not a regular file (``os.devnull``,
    a terminal) is written as the standard ``FileHandler`` would: no sidecar,
    no rotation.
    """

    #: Set by subclasses: the size the fast path must stay below (None: any).
    _limit: float | None = None

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        *,
        durable: Durable = False,
        compress: bool = False,
        lock_timeout: float | None = 30.0,
    ) -> None:
        if mode not in ("a", "w"):
            raise ValueError(f"mode must be 'a' or 'w' for a shared log file, not {mode!r}")
        if durable not in ("record", "rotate", False):
            raise ValueError(f"durable must be 'record', 'rotate' or False, not {durable!r}")
        if lock_timeout is not None and not lock_timeout >= 0:
            raise ValueError(f"lock_timeout must be >= 0 or None, not {lock_timeout!r}")
        # The stdlib constructors open the stream in the middle; set every
        # attribute of FileHandler here instead, then open ours.
        _stdlib_logging.Handler.__init__(self)
        self.baseFilename = os.path.abspath(os.fspath(filename))
        self.mode = mode
        self.encoding = encoding if encoding is not None else "utf-8"
        # Records are encoded without a byte-order mark; the mark starts each file.
        self._enc, self._bom = record_encoding(self.encoding)
        self._bom_pending = False  # set at each (re)open with a mark: see _append_exclusive
        self.errors = errors
        self.delay = delay
        self.durable: Durable = durable
        self.compress = compress
        self.lock_timeout = lock_timeout
        self.stream: Any = None
        directory, name = os.path.split(self.baseFilename)
        self._dir = directory
        self.lockFilename = os.path.join(directory, f".{name}.lock")
        self._proxy = SharedStream(self)
        self._side: Sidecar | None = None
        self._plain = False  # a device or FIFO: written as the stdlib does, no sidecar
        self._fd = -1
        self._gen = -1
        self._head = b""
        self._live_gen = -1  # the generation our descriptor is current in; -1: none
        # The only writer tracks the file's size (see _ask_alone); -1: unknown / not alone.
        self._size = -1
        self._sole = -1  # the writers word when alone() said so; -1: not alone
        self._sole_seen = -1  # the writers word alone() was last asked at
        self._recheck = 0
        self._free = -1  # the fence word while appending without the lock; -1: with it
        self._slot_w = 0
        self._at: float | None = None  # timed handlers: the rollover time of this generation
        self._truncate = mode == "w"  # at the first open only, as the stdlib does
        self._failed: DurabilityError | None = None
        self._writing = False  # inside a locked section or its sync (see _append_shared)
        self._exclusive_held = False
        self._finish: list[_Finish | _gzip.Claim] = []
        self._finish_mutex = threading.Lock()
        self._deferred: list[BaseException] = []
        # A rotation that renamed the file but did not finish (see RotationSteps).
        self._switch_pending = False
        self._switch_st: os.stat_result | None = None
        self._switch_gen: int | None = None
        self._times = TimeText()
        self._hooks()
        _LIVE.add(self)
        if not delay:
            self._open()


    # -- the write path ----------------------------------------------------
    def format_bytes(self, record: _LogRecord) -> bytes:
        """The bytes one record is written as: the formatted message, the terminator, encoded."""
        text = self.format(record) + self.terminator
        return text.encode(self._enc, self.errors or "strict")

    def emit(self, record: _LogRecord) -> None:
        """Append ``record`` whole; rotate first when it is due.

        Atomic: the record is one ``write(2)`` on an ``O_APPEND`` descriptor
        (short writes finished while still holding the lock), so no other
        writer's bytes come between its bytes. Durable when it returns only
        with ``durable="record"``. Errors go to :meth:`handleError`, as for
        every logging handler: a failed fsync (every later record then fails
        with the same :class:`~racefree.DurabilityError`), a lock held by
        someone else for longer than ``lock_timeout``
        (:class:`~racefree.LockTimeout`: the record is not written), a
        sidecar that is not racefree's (:class:`~racefree.UnsafePathError`).
        """
        try:
            mine = self.__dict__  # a method set on the instance replaces the class's
            if "format" not in mine and type(self).format is _HANDLER_FORMAT:
                # Handler.format without its frame: the stdlib formatter's text, its
                # strftime reused while its arguments are the same.
                formatter = self.formatter or _stdlib_logging._defaultFormatter  # type: ignore[attr-defined]
                text = self._times.format(formatter, record) + self.terminator
            else:
                text = self.format(record) + self.terminator
            if self.stream is not self._proxy and self._emit_elsewhere(text):
                return
            data = text.encode(self._enc, self.errors or "strict")
            if "shouldRollover" in mine or type(self).shouldRollover is not self._should_fn:
                # A shouldRollover of the user's decides, as with the stdlib: True
                # rotates (once per generation), False writes without rotating.
                if self.shouldRollover(record):
                    self._append_exclusive(data, record, self._gen)
                else:
                    self._append(data, record, decided=True)
            else:
                self._append(data, record)
            if "flush" in mine or type(self).flush is not _FLUSH:
                self.flush()  # a flush of the user's: after each record, as StreamHandler.emit
        except Exception:  # RecursionError too, as BaseRotatingHandler.emit
            self.handleError(record)

    def _emit_elsewhere(self, text: str) -> bool:
        """Not our stream: None (open it, False) or one set with setStream (write there, True)."""
        stream = self.stream
        if stream is None:
            if self.mode == "w" and getattr(self, "_closed", False):
                return True  # as the stdlib (bpo-42378): a closed "w" handler writes nothing
            self._open()
            return False
        stream.write(text)
        self.flush()  # as StreamHandler.emit (a flush of the user's, or the stream's)
        return True

    def handle(self, record: _LogRecord) -> Any:
        """As :meth:`logging.Handler.handle`; then finishes a rotation this thread did.

        Compression and the rotation fsyncs run here, after the handler's lock
        is released, so they block neither other processes nor other threads.

        Where no hook is replaced (``emit``, ``format``, ``shouldRollover``,
        ``flush``; see :mod:`racefree.logging.hooks`), the common record (the
        file open and current, nothing to repair, no rotation due, the lock free
        to share) is formatted here and handed to the shared section
        (:meth:`_append_shared`) without the frames of ``emit`` and ``_append``
        (about 0.3 µs of a record's 8 µs). Anything else goes through ``emit``,
        as with the standard handler.
        """
        mine = self.__dict__
        cls = type(self)
        rv: Any
        if self.filters or cls.filter is not _FILTER or "filter" in mine:
            rv = self.filter(record)
            if _FILTER_REPLACES and rv is not True and isinstance(rv, _LogRecord):
                record = rv  # 3.12+: a filter may return the record to log instead
            if not rv:
                return rv
        else:
            rv = record if _FILTER_REPLACES else True  # what Filterer.filter returns
        # Handler.acquire()/release() without their two extra calls.
        lock = self.lock
        with lock if lock is not None else _NULL:
            side = self._side
            if (cls.emit is not _EMIT or "emit" in mine or "format" in mine
                    or cls.format is not _HANDLER_FORMAT or "shouldRollover" in mine
                    or cls.shouldRollover is not self._should_fn or cls.flush is not _FLUSH
                    or "flush" in mine or self.stream is not self._proxy
                    or side is None or _fork.maybe_child or self._writing or self._bom_pending
                    or (self._at is not None and time.time() >= self._at)):
                self.emit(record)
            else:
                try:
                    formatter = self.formatter or _stdlib_logging._defaultFormatter  # type: ignore[attr-defined]
                    text = self._times.format(formatter, record) + self.terminator
                    data = text.encode(self._enc, self.errors or "strict")
                    if (len(data) > SHARED_MAX
                            or self._append_shared(side, data, self._limit, False) != _WRITTEN):
                        self._append(data, record)  # waits, follows, rotates, repairs
                except Exception:  # RecursionError too, as BaseRotatingHandler.emit
                    self.handleError(record)
        if self._finish or self._deferred:
            self._after_record(record)
        return rv

    def _after_record(self, record: _LogRecord) -> None:
        while self._deferred:
            error = self._deferred.pop(0)
            try:
                raise error
            except Exception:
                self.handleError(record)  # reported as emit reports, never raised into the caller
        if self._finish:
            try:
                self._run_finish()
            except Exception:
                self.handleError(record)

    def _append(self, data: bytes, record: _LogRecord | None, decided: bool = False) -> None:
        """Append ``data``, rotating first when it is due (``decided``: never)."""
        if _fork.maybe_child:
            _fork.check()  # a forked child drops the parent's descriptors first (L5)
        side = self._side
        at = None if decided else self._at
        if (side is None or len(data) > SHARED_MAX or self._writing or self._bom_pending
                or (at is not None and time.time() >= at)):
            self._append_exclusive(data, record, NEVER if decided else -1)
            return
        # A second pass only after another process rotated while this one waited to.
        while True:
            full_at = self._append_shared(side, data, None if decided else self._limit, True)
            if full_at == _WRITTEN:
                return
            if self._append_exclusive(data, record, NEVER if decided else -1, full_at):
                return

    def _append_shared(self, side: Sidecar, data: bytes, limit: float | None, wait: bool) -> int:
        """Append ``data`` holding the lock shared: :data:`_WRITTEN`, or why not.

        Not written: the generation in which the file is full (a rotation is
        due), -1 when the exclusive hold is needed for another reason (a torn
        record to repair, a failed handler), or :data:`_BUSY` when ``wait`` is
        False and the lock is held exclusively (a rotation or a large record
        in progress). The one place where records are appended under the
        shared hold, so only records of at most :data:`SHARED_MAX` bytes (the
        callers check): :meth:`handle` calls it first, without waiting.
        """
        if self._fd < 0:
            return -1  # no file (a rotation failed after its rename): the exclusive path opens one
        lock_fd = side.fd
        # Busy from before the lock is taken until the record is synced: a record a
        # signal handler logs in between is refused (ExclusivePath._append_exclusive),
        # instead of taking the lock again through the same open file description
        # (flock cannot tell them apart), whose unlock would drop ours, or of
        # following a rotation, which closes the descriptor still to be synced.
        self._writing = True
        try:
            free = self._free
            if free >= 0:
                # Without the lock (see racefree.logging.sole): "in a record" is
                # stored in our slot before the fence word is loaded.
                words = side.words
                assert words is not None  # enter_free needs the mapping
                slot = self._slot_w
                fd = self._fd
                written = -1
                words[slot] = 1
                try:
                    if words[_W_EPOCH] == free and words[0] == self._live_gen and not words[1]:
                        n = len(data)
                        size = -1
                        sole = words[2] == self._sole
                        if limit is not None:
                            # The only writer counts; others measure (the bound the
                            # module docstring states for writers sharing the lock).
                            size = self._size if sole else -1
                            if size < 0:
                                size = _fs.lseek(fd, 0, _SEEK_END)
                            if size + n >= limit:
                                return self._live_gen  # full in this generation: rotate
                        try:
                            written = _fs.write(fd, data)
                            if written != n:  # short (W6): finished before leaving the record
                                _fs.write_all(fd, memoryview(data)[written:])
                        except BaseException:
                            side.put_u64(OFF_DIRTY, UNKNOWN_END)  # see the locked path below
                            self._size = -1
                            raise
                        if sole:
                            if size >= 0:
                                self._size = size + n
                        else:
                            self._recheck -= 1  # ask again, now and then, if it is alone
                            if self._recheck <= 0:
                                self._free = -1
                    else:
                        # Someone took the lock exclusively (or the handler failed): back
                        # to the locked path, which waits for them; asked again after it.
                        self._free = -1
                        self._recheck = 0
                finally:
                    words[slot] = 0
                if self._free < 0:
                    # Only now, with the slot cleared: a writer that takes it next must
                    # not see our store land after its own. Letting go tells an
                    # exclusive holder that could not run a barrier that this handler
                    # left the mode (Sidecar.fence).
                    side.leave_free()
                if written >= 0:
                    if self.durable == "record":
                        self._sync(_fs.fdatasync, fd, self.baseFilename)
                    return _WRITTEN
            try:
                _fs.flock(lock_fd, _LOCK_SH_NB)
            except BlockingIOError:
                if not wait:
                    return _BUSY
                side._wait(_LOCK_SH)  # a rotation or a large record: bounded wait
            try:
                # Generation unchanged and no torn record to repair: two mapped words, or
                # one compare of the bytes a pread gave (see sidecar.Sidecar.words).
                words = side.words
                if words is not None:
                    fresh = words[0] == self._live_gen and not words[1]
                    head = b"" if fresh else side.read(16)
                else:
                    head = _fs.pread(lock_fd, 16, 0)
                    fresh = head == self._head
                if not (fresh or self._follow_shared(head)):
                    return -1
                fd = self._fd
                n = len(data)
                if words is not None and (words[2] != self._sole or self._free < 0):
                    # Not known to be the only writer (see _ask_alone), or not yet
                    # appending without the lock. Asked before the lseek: a writer
                    # that leaves after the answer has finished its records, so the
                    # lseek sees them.
                    self._recheck -= 1
                    if self._recheck <= 0 or words[2] != self._sole_seen:
                        self._ask_alone(int(words[2]))
                size = self._size
                if limit is not None and (size < 0 or words is None or words[2] != self._sole):
                    # Not the only writer: other writers may append between this
                    # lseek and the write; see the module docstring for the bound
                    # this leaves.
                    size = _fs.lseek(fd, 0, _SEEK_END)
                if limit is not None and size + n >= limit:
                    return self._live_gen  # full in this generation: a rotation is due
                try:
                    written = _fs.write(fd, data)
                    if written != n:  # short (W6): finished still holding the lock
                        _fs.write_all(fd, memoryview(data)[written:])
                except BaseException:
                    # Part of the record may be in the file (a full disk, an
                    # interrupt): the next holder checks the tail, exclusively.
                    side.put_u64(OFF_DIRTY, UNKNOWN_END)
                    self._size = -1
                    raise
                if limit is not None:
                    self._size = size + n  # trusted only while alone (above)
            finally:
                _fs.flock(lock_fd, _LOCK_UN)
            if self.durable == "record":
                # Outside the lock, as after an exclusive write: ``fd`` still names
                # the inode this record went to if another process rotates meanwhile.
                self._sync(_fs.fdatasync, fd, self.baseFilename)
            return _WRITTEN
        finally:
            self._writing = False

    # -- the rest of the Handler API --------------------------------------
    def setStream(self, stream: Any) -> Any:
        """As the stdlib: records then go to ``stream`` (no lock, no rotation) until set back.

        ``setStream(handler._open())`` returns to the shared log file.
        """
        return super().setStream(stream)

    def flush(self) -> None:
        """Flush a stream set with :meth:`setStream`; the log file needs none (written at emit)."""
        stream = self.stream
        if stream is not None and stream is not self._proxy and hasattr(stream, "flush"):
            with self.lock if self.lock is not None else _NULL:
                stream.flush()

    def close(self) -> None:
        """Finish pending rotation work, close the descriptors. The sidecar stays (L1).

        As ``FileHandler.close``: ``flush()`` first while a stream is set, and a
        stream set with :meth:`setStream` is closed too.
        """
        with self.lock if self.lock is not None else _NULL:
            try:
                stream = self.stream
                if stream:
                    try:
                        self.flush()
                    finally:
                        if stream is not self._proxy and hasattr(stream, "close"):
                            stream.close()
                self._run_finish()
            finally:
                self._drop_descriptors()
                self._plain = False
                self.stream = None
                _LIVE.discard(self)
                _stdlib_logging.Handler.close(self)

    def __repr__(self) -> str:
        level = _stdlib_logging.getLevelName(self.level)
        return f"<{type(self).__name__} {self.baseFilename} ({level})>"


#: racefree's own ``emit``: a handler whose class still has it may skip its frame (``handle``).
_EMIT = SharedFileHandler.emit
#: racefree's own ``flush`` (nothing to flush in the log file): another is called per record.
_FLUSH = SharedFileHandler.flush
