"""The shared-file core of :mod:`racefree.logging`: one log file that many processes append to.

Every process that logs to ``app.log`` also opens a small sidecar file,
``.app.log.lock`` in the same directory, which is never deleted (pitfall L1). It
serves twice:

- its ``flock`` is the *write lock*: a record is appended, and a rotation done,
  only while holding it exclusively. ``flock`` belongs to an open file
  description, so every handler instance (and every forked child, which reopens
  it, see :func:`_after_fork_in_child`) has its own, and the kernel releases it
  when its holder dies;
- its first bytes, mapped shared into every process, are the *control block*:
  a rotation generation (bumped by the process that rotates, under the lock), a
  "write in progress" mark, the current file's size (kept by every writer, so
  a record needs no ``fstat``), and, for timed rotation, the next rollover time.

A writer compares the generation with the one it opened its descriptor at: a
plain memory read, instead of a ``stat`` of the path per record; a different
value means the file was rotated by someone else and it reopens the path before
writing. Because the check and the write happen under the same exclusive lock,
no record can ever land in a file after that file was rotated, which is how the
standard handlers lose records (several processes rename ``app.log`` in turn,
each over the previous one's backup).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging as _stdlib_logging
import os
import struct
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from mmap import mmap
from typing import Any, Literal

from racefree import _fork, _fs
from racefree._errors import DurabilityError
from racefree.logging import compress as _gzip
from racefree.logging.finish import _NULL, RotationFinisher, _Finish

__all__ = ["Durable", "SharedFileHandler"]

Durable = Literal["record", "rotate", False]

#: The control block, at the start of the lock file (little-endian). Fields are
#: written only while holding the write lock exclusively, and read under the lock.
_U64 = struct.Struct("<Q")
_HOT = struct.Struct("<QQQ")  # gen, dirty, size: what every record reads, in one unpack
_OFF_GEN = 0  # u64: rotation generation, bumped by each rotation
_OFF_DIRTY = 8  # u64: file size the record being written will end at; 0 when none is
_OFF_SIZE = 16  # u64: size of the current file after the last whole record
# 24..32: reserved
_ROLLOVER = struct.Struct("<d")
_OFF_ROLLOVER = 32  # f64: next timed rollover (epoch seconds), 0.0 when not set yet
_CONTROL_SIZE = 64

_DONE = struct.Struct("<QQ")  # dirty and size, cleared and advanced together
_unpack_hot = _HOT.unpack_from
_pack_u64 = _U64.pack_into
_pack_done = _DONE.pack_into
_LOCK_EX = fcntl.LOCK_EX
_LOCK_UN = fcntl.LOCK_UN

# Read access too: the torn-tail repair reads the last byte through it.
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT

# Live handlers, so that a forked child can drop the descriptors it inherited.
_LIVE: weakref.WeakSet[SharedFileHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_LIVE):
        handler._forget_inherited()


_fork.on_child(_after_fork_in_child)  # before any use in the child: see racefree._fork


def _exists(path: str) -> bool:
    try:
        _fs.stat(path)
    except FileNotFoundError:
        return False
    return True


class SharedFileHandler(RotationFinisher, _stdlib_logging.Handler):
    """Base of the racefree handlers: appends whole records under the shared write lock.

    Subclasses decide when to rotate (:meth:`_should_rotate_locked`) and how
    (:meth:`_rotate_locked`); this class owns the descriptors, the lock, the
    control block, fork safety, durability and the compression of rotated files.
    """

    terminator = "\n"

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
    ) -> None:
        if mode != "a":
            # Truncating ("w") a file other processes append to throws their records away.
            raise ValueError(f"mode must be 'a' for a shared log file, not {mode!r}")
        if durable not in ("record", "rotate", False):
            raise ValueError(f"durable must be 'record', 'rotate' or False, not {durable!r}")
        super().__init__()
        self.baseFilename = os.path.abspath(os.fspath(filename))
        self.mode = mode
        self.encoding = encoding if encoding is not None else "utf-8"
        self.errors = errors
        self.delay = delay
        self.durable: Durable = durable
        self.compress = compress
        self.namer: Callable[[str], str] | None = None
        self.rotator: Callable[[str, str], None] | None = None
        directory, name = os.path.split(self.baseFilename)
        self._dir = directory
        self.lockFilename = os.path.join(directory, f".{name}.lock")
        self._lock_fd = -1
        self._control: mmap | None = None
        self._fd = -1
        self._gen = -1
        self._failed: DurabilityError | None = None
        # A file smaller than this, plus the record, is never rotated: lets the
        # hot path skip the subclass's decision (0: always ask it).
        self._rotate_floor: float = 0
        self._writing = False  # inside the locked section (see _append)
        self._finish: list[_Finish | _gzip.Claim] = []
        self._finish_mutex = threading.Lock()
        _LIVE.add(self)
        if not delay:
            self._open_shared()

    # -- descriptors -------------------------------------------------------
    def _open_shared(self) -> None:
        """Open the lock file and map its control block; with ``delay=False`` also the log."""
        fd = _fs.open(self.lockFilename, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if _fs.fstat(fd).st_size < _CONTROL_SIZE:
                # Two processes may both extend it: ftruncate to the same size
                # never shrinks the file nor clears what the other wrote.
                _fs.ftruncate(fd, _CONTROL_SIZE)
            self._control = _fs.mmap(fd, _CONTROL_SIZE, writable=True)
        except BaseException:
            _fs.close(fd)
            raise
        self._lock_fd = fd
        _LIVE.add(self)  # again after a close(): a record reopens, fork must still be safe
        if not self.delay:
            # Shared is enough: only a rotation (exclusive) changes what the path names.
            _fs.flock(fd, fcntl.LOCK_SH)
            try:
                self._reopen(self._read_gen())
            finally:
                _fs.flock(fd, fcntl.LOCK_UN)

    def _read_gen(self) -> int:
        assert self._control is not None
        return int(_U64.unpack_from(self._control, _OFF_GEN)[0])

    def _reopen(self, gen: int) -> None:
        """(Re)open the path for appending; call with the write lock held."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _fs.close(fd)
        self._fd = _fs.open(self.baseFilename, _OPEN_FLAGS, 0o666)
        self._gen = gen
        if self.durable == "record":
            # The file may be new (a rotation, or the first record): its name
            # must be durable before a record in it is called durable (W2).
            self._sync(_fs.fsync_dir, self._dir, self._dir)

    def _sync_size_locked(self) -> int:
        """Store the file's real size in the control block (after a reopen, repair, rotation).

        Between these, every writer keeps the size up to date under the lock,
        so a record costs no ``fstat``. Resyncing at each reopen means a lock
        file older than the log (the log was removed or replaced by hand, or
        written by some other program) never hands out a stale size for long.
        """
        assert self._control is not None
        size = _fs.fstat(self._fd).st_size
        _U64.pack_into(self._control, _OFF_SIZE, size)
        return size

    def _enter_locked(self) -> int:
        """With the lock just taken: follow a rotation, repair a torn tail; the file's size."""
        assert self._control is not None
        # Three fields in one read of shared memory, instead of a stat() of
        # the path and an fstat() of the descriptor per record.
        gen, dirty, size = _HOT.unpack_from(self._control, 0)
        if gen != self._gen or self._fd < 0:
            # Another process rotated: our descriptor names the old file.
            self._reopen(gen)
            size = self._sync_size_locked()
        if dirty:
            size = self._repair_torn_tail(dirty)
        return int(size)

    def _forget_inherited(self) -> None:
        """In a forked child: close the parent's descriptors, reopen lazily on the next record.

        The child must never lock through the parent's open file description:
        flock would treat parent and child as one owner, letting both write at
        once (concurrent-log-handler issue #8). Closing the child's copies
        releases nothing the parent holds (the parent's descriptors keep the
        open file description, and its lock, alive).
        """
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):  # a child's copy always closes
                    _fs.close(fd)
        if self._control is not None:
            self._control.close()
        self._fd = self._lock_fd = -1
        self._gen = -1
        self._control = None
        self._writing = False  # another thread of the parent may have been mid-record
        # The parent finishes its own rotations; the child must not compress them twice.
        for job in self._finish:
            with contextlib.suppress(OSError):
                if isinstance(job, _gzip.Claim):
                    job.release()  # the parent's claim: its flock stays with the parent
                else:
                    _fs.close(job.fd)
        self._finish = []
        self._finish_mutex = threading.Lock()

    # -- the write path ----------------------------------------------------
    def format_bytes(self, record: _stdlib_logging.LogRecord) -> bytes:
        """The bytes one record is written as: the formatted message, the terminator, encoded."""
        text = self.format(record) + self.terminator
        return text.encode(self.encoding, self.errors or "strict")

    def emit(self, record: _stdlib_logging.LogRecord) -> None:
        """Append ``record`` whole; rotate first when the subclass says so.

        Atomic: the record is written with one ``write(2)`` (short writes
        looped) on an ``O_APPEND`` descriptor while holding the exclusive write
        lock, so no other writer's bytes can come between its bytes, at any
        size. Durable when it returns only with ``durable="record"``. Errors go
        to :meth:`handleError`, as for every logging handler; after a failed
        fsync every later record fails with the same :class:`DurabilityError`.
        """
        try:
            text = self.format(record) + self.terminator
            self._append(text.encode(self.encoding, self.errors or "strict"), record)
        except RecursionError:  # the stdlib handlers let this one through too
            raise
        except Exception:
            self.handleError(record)

    def handle(self, record: _stdlib_logging.LogRecord) -> bool:
        """As :meth:`logging.Handler.handle`; then finishes a rotation this thread did.

        Compression and the rotation fsyncs run here, after the handler's lock
        is released, so they block neither other processes nor other threads.
        """
        rv = super().handle(record)
        if self._finish:
            try:
                self._run_finish()
            except Exception:
                self.handleError(record)  # as for emit: a handler never raises into the caller
        return rv

    def _append(self, data: bytes, record: _stdlib_logging.LogRecord | None) -> None:
        if _fork.maybe_child:
            _fork.check()  # a forked child drops the parent's descriptors first (L5)
        if self._failed is not None:
            raise self._failed
        control = self._control
        if control is None:
            self._open_shared()
            control = self._control
            assert control is not None
        if self._writing:
            # This thread is already inside the locked section below, and was
            # interrupted by a signal handler that logs: flock would "succeed"
            # (same open file description) and its unlock would release the
            # lock under the interrupted write. Refuse instead (handleError).
            raise RuntimeError("reentrant log record from a signal handler: dropped")
        lock_fd = self._lock_fd
        n = len(data)
        _fs.flock(lock_fd, _LOCK_EX)
        self._writing = True
        try:
            # Three fields in one read of shared memory, instead of a stat() of
            # the path and an fstat() of the descriptor per record.
            gen, dirty, size = _unpack_hot(control, 0)
            if gen != self._gen or dirty or self._fd < 0:
                size = self._enter_locked()
            if size + n >= self._rotate_floor and self._should_rotate_locked(size, n, record):
                self._rotate_locked()
                size = self._sync_size_locked()
            # A SIGKILL can stop a large write(2) between pages; the next holder
            # sees this mark and ends the torn record with a newline, so that
            # the records after it still start on a line of their own.
            _pack_u64(control, _OFF_DIRTY, size + n)
            fd = self._fd
            written = _fs.write(fd, data)
            if written != n:  # a short write (W6): finish it, still under the lock
                _fs.write_all(fd, memoryview(data)[written:])
            _pack_done(control, _OFF_DIRTY, 0, size + n)
        finally:
            self._writing = False
            _fs.flock(lock_fd, _LOCK_UN)
        if self.durable == "record":
            # Outside the lock: if another process rotates meanwhile, ``fd``
            # still names the inode this record went to.
            self._sync(_fs.fdatasync, fd, self.baseFilename)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The write lock, outside the record path (rotation, placing a .gz); hold self.lock."""
        if self._writing:
            raise RuntimeError("reentrant use of the log's write lock from a signal handler")
        _fs.flock(self._lock_fd, _LOCK_EX)
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
            _fs.flock(self._lock_fd, _LOCK_UN)

    def _repair_torn_tail(self, expected_end: int) -> int:
        """The previous holder died (or failed) mid-write: end its partial record with a newline.

        Returns the file's size afterwards (also stored in the control block).
        """
        assert self._control is not None
        size = _fs.fstat(self._fd).st_size
        if 0 < size < expected_end and _fs.pread(self._fd, 1, size - 1) != b"\n":
            _fs.write_all(self._fd, b"\n")
        _U64.pack_into(self._control, _OFF_DIRTY, 0)
        return self._sync_size_locked()

    def _sync(self, fn: Callable[[Any], None], target: Any, path: str) -> None:
        try:
            fn(target)
        except OSError as exc:
            # Never retried (pitfall W7): a second fsync can "succeed" after the
            # kernel dropped the dirty pages. The handler refuses further records.
            self._failed = DurabilityError(path, exc.errno or errno.EIO, "log handler")
            raise self._failed from exc

    # -- rotation (subclasses) --------------------------------------------
    def _should_rotate_locked(
        self, size: int, length: int, record: _stdlib_logging.LogRecord | None
    ) -> bool:
        """Whether to rotate before writing ``length`` bytes to a file of ``size`` bytes."""
        return False

    def _rotate_locked(self) -> None:  # pragma: no cover - subclasses that rotate override it
        raise NotImplementedError

    def rotation_filename(self, default_name: str) -> str:
        """The name a backup gets: ``namer(default_name)`` if a namer is set (as the stdlib)."""
        return default_name if self.namer is None else self.namer(default_name)

    def rotate(self, source: str, dest: str) -> None:
        """Move the current file to its backup name: ``rotator(source, dest)`` or a rename.

        Called with the write lock held exclusively: a custom ``rotator`` blocks
        every writer while it runs (prefer ``compress=True``, which does not).
        """
        if self.rotator is None:
            _fs.replace(source, dest)
        else:
            self.rotator(source, dest)

    def _switch_locked(self, rotated_to: str | None) -> None:
        """After the current file was renamed: open a new one and tell the other processes."""
        assert self._control is not None
        old = self._fd
        self._fd = -1
        gen = self._read_gen() + 1
        _U64.pack_into(self._control, _OFF_GEN, gen)
        self._reopen(gen)
        if rotated_to is not None and (self.durable or self.compress):
            with self._finish_mutex:  # another thread may be taking the list in handle()
                self._finish.append(_Finish(old, rotated_to))
        else:
            _fs.close(old)

    def _rotated_candidates(self, path: str) -> Iterable[str]:
        """Where a file rotated to ``path`` may be now (later rotations shift backups)."""
        return (path,)

    # -- the rest of the Handler API --------------------------------------
    def doRollover(self) -> None:
        """Rotate now (under the write lock; a no-op for an empty file)."""
        with self.lock if self.lock is not None else _NULL:
            if self._lock_fd < 0:
                self._open_shared()
            with self._exclusive():
                if self._enter_locked() > 0:
                    self._rotate_locked()
                    self._sync_size_locked()
        self._run_finish()

    def flush(self) -> None:
        """Nothing to do: every record is written to the file before ``emit`` returns."""

    def close(self) -> None:
        """Finish pending rotation work, close the descriptors. The lock file stays (L1)."""
        with self.lock if self.lock is not None else _NULL:
            try:
                self._run_finish()
            finally:
                for fd in (self._fd, self._lock_fd):
                    if fd >= 0:
                        _fs.close(fd)
                if self._control is not None:
                    self._control.close()
                self._fd = self._lock_fd = -1
                self._control = None
                _LIVE.discard(self)
                super().close()

    def __repr__(self) -> str:
        level = _stdlib_logging.getLevelName(self.level)
        return f"<{type(self).__name__} {self.baseFilename} ({level})>"
