"""The exclusive path of the racefree handlers: open, follow, repair, rotate, large records.

A mixin of :class:`racefree.logging.handler.SharedFileHandler`, kept apart so
that each module reads in one sitting. Records of up to ``SHARED_MAX`` bytes are
appended under the sidecar's lock held *shared* (``SharedFileHandler._append_shared``);
everything else happens here, holding it *exclusively*: no other writer, in any
process, writes meanwhile, so the file's size is exact, a rotation is decided
once, and a record torn by a writer that died mid-write is ended before the next.
"""

from __future__ import annotations

import errno
import fcntl
import logging as _stdlib_logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from racefree import _fs
from racefree._errors import DurabilityError
from racefree.logging.sidecar import OFF_DIRTY, Sidecar

__all__ = ["NEVER", "ExclusivePath"]

_LogRecord = _stdlib_logging.LogRecord
_LOCK_EX = fcntl.LOCK_EX
_SEEK_END = os.SEEK_END
NEVER = -2  # _append_exclusive's force_gen: write without rotating


class ExclusivePath:
    """The records and steps that need the lock exclusively (mixin)."""

    baseFilename: str
    durable: Any
    _side: Sidecar | None
    _fd: int
    _gen: int
    _head: bytes
    _live_gen: int
    _size: int
    _plain: bool
    _writing: bool
    _exclusive_held: bool
    _bom: bytes
    _bom_pending: bool
    _failed: DurabilityError | None
    _deferred: list[BaseException]
    _switch_pending: bool

    if TYPE_CHECKING:  # defined by the classes this is mixed with

        def _open_shared(self) -> None:
            raise NotImplementedError  # pragma: no cover - Opening defines it

        def _reopen_locked(self, gen: int) -> bool:
            raise NotImplementedError  # pragma: no cover - Opening defines it

        def _should_rotate_locked(self, size: int, length: int, record: _LogRecord | None) -> bool:
            raise NotImplementedError  # pragma: no cover - the handler classes define it

        def _overridden(self, name: str) -> bool:
            raise NotImplementedError  # pragma: no cover - StdlibHooks defines it

        def doRollover(self) -> None:
            raise NotImplementedError  # pragma: no cover - the handler classes define it

        def _rotate_now_locked(self) -> None:
            raise NotImplementedError  # pragma: no cover - RotationSteps defines it

        def _still_current(self) -> bool:
            raise NotImplementedError  # pragma: no cover - RotationSteps defines it

        def _switch_locked(self, rotated_to: str | None) -> None:
            raise NotImplementedError  # pragma: no cover - RotationSteps defines it

        def _publish_switch_locked(self) -> None:
            raise NotImplementedError  # pragma: no cover - RotationSteps defines it

    def _append_exclusive(
        self, data: bytes, record: _LogRecord | None, force_gen: int = -1, rotated_gen: int = -1
    ) -> bool:
        """The slow path: open, follow a rotation, repair, rotate, large records.

        With ``rotated_gen`` >= 0 (the file was full in that generation), the
        wait for the exclusive hold ends once another process has rotated:
        False, nothing written, and the caller appends under the shared hold
        again. Otherwise the writers that found the file full would each take
        the exclusive hold in turn after one rotation, each waiting for the
        one before. True: the record is written.
        """
        if self._failed is not None:
            raise self._failed
        if self._writing:
            # This thread is already inside a locked section, and was
            # interrupted by a signal handler that logs: flock would "succeed"
            # (same open file description) and its unlock would release the
            # lock under the interrupted write. Refuse instead (handleError).
            raise RuntimeError("reentrant log record from a signal handler: dropped")
        if self._side is None:
            if not self._plain:
                self._open_shared()
            if self._plain:
                _fs.write_all(self._fd, data)
                return True
        side = self._side
        assert side is not None
        n = len(data)
        # Busy from before the lock is taken until the record is synced (see
        # SharedFileHandler._append_shared): a record logged by a signal handler
        # meanwhile is refused above.
        self._writing = True
        try:
            if not side.lock(_LOCK_EX, rotated_gen):
                return False  # rotated by another process while we waited
            self._size = -1  # measured again at the next shared record
            self._exclusive_held = True
            try:
                size = self._enter_locked()
                if force_gen >= 0:
                    rotate = force_gen == self._gen and size > 0
                elif force_gen == NEVER:
                    rotate = False  # a shouldRollover of the user's said no
                else:
                    rotate = self._should_rotate_locked(size, n, record)
                if rotate:
                    try:
                        if self._overridden("doRollover") or "doRollover" in self.__dict__:
                            self.doRollover()  # a subclass's: it calls ours back, under the lock
                        else:
                            self._rotate_now_locked()
                    except Exception as exc:
                        if self._fd < 0:
                            raise  # opening the new file failed: the next record tries again
                        if not self._still_current():
                            # The file left its name before the failure, in a subclass's
                            # doRollover (ours starts a new file itself): start one.
                            self._switch_locked(None)
                        # Else it failed before the file was renamed (a backup's name taken
                        # by a directory, a rotator that raised): the current file stays.
                        # Either way the record is written, and the failure reported after it.
                        self._deferred.append(exc)
                    size = _fs.lseek(self._fd, 0, _SEEK_END)
                if self._bom_pending:
                    # As the stdlib's text file writes it: before the first record of a
                    # file, which only a holder of the exclusive lock can know it is.
                    if size == 0:
                        data = self._bom + data
                        n = len(data)
                    self._bom_pending = False
                # A SIGKILL can stop a large write(2) between pages; the next holder
                # sees this mark and ends the torn record with a newline.
                side.put_u64(OFF_DIRTY, size + n)
                fd = self._fd
                _fs.write_all(fd, data)
                side.put_u64(OFF_DIRTY, 0)
            finally:
                self._exclusive_held = False
                side.unlock()
            if self.durable == "record":
                # Outside the lock: if another process rotates meanwhile, ``fd``
                # still names the inode this record went to.
                self._sync(_fs.fdatasync, fd, self.baseFilename)
            return True
        finally:
            self._writing = False

    def _enter_locked(self) -> int:
        """Holding the lock exclusively: follow a rotation, repair a torn tail; the exact size."""
        assert self._side is not None
        if self._switch_pending:
            # Our rotation renamed the file but failed before the new generation was
            # published or the new file opened: finish it now.
            self._publish_switch_locked()
        gen, dirty = self._side.head()
        if gen != self._gen or self._fd < 0:
            self._reopen_locked(gen)  # another process rotated: our descriptor names a backup
        if dirty:
            return self._repair_torn_tail(dirty)
        return _fs.lseek(self._fd, 0, _SEEK_END)

    def _repair_torn_tail(self, expected_end: int) -> int:
        """The previous exclusive holder died (or failed) mid-write: end its partial record."""
        assert self._side is not None
        size = _fs.lseek(self._fd, 0, _SEEK_END)
        if 0 < size < expected_end and _fs.pread(self._fd, 1, size - 1) != b"\n":
            _fs.write_all(self._fd, b"\n")
            size += 1
        self._side.put_u64(OFF_DIRTY, 0)
        return size

    def _sync(self, fn: Callable[[Any], None], target: Any, path: str) -> None:
        try:
            fn(target)
        except OSError as exc:
            # Never retried (pitfall W7): a second fsync can "succeed" after the
            # kernel dropped the dirty pages. The handler refuses further records.
            self._failed = DurabilityError(path, exc.errno or errno.EIO, "log handler")
            self._head = b""
            self._live_gen = -1
            raise self._failed from exc
