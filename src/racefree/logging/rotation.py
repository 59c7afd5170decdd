"""Rotation steps of the racefree handlers: names, the rename, the switch to a new file.

A mixin of :class:`racefree.logging.handler.SharedFileHandler`, kept apart so
that each module reads in one sitting. Everything here runs holding the
sidecar's lock exclusively: no writer, in any process, writes while a file is
renamed, and every writer sees the new generation before its next write.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging as _stdlib_logging
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from racefree import _fs
from racefree.logging import compress as _gzip
from racefree.logging.finish import _NULL, _Finish
from racefree.logging.sidecar import OFF_GEN, UNKNOWN_END, Sidecar

__all__ = ["RotationSteps"]

_LogRecord = _stdlib_logging.LogRecord
_LOCK_EX = fcntl.LOCK_EX


class RotationSteps:
    """How a racefree handler rotates (mixin; subclasses say when and to which names)."""

    namer: Any
    rotator: Any
    baseFilename: str
    compress: bool
    durable: Any
    lock: Any
    _side: Sidecar | None
    _fd: int
    _plain: bool
    _writing: bool
    _exclusive_held: bool
    _finish: list[_Finish | _gzip.Claim]
    _finish_mutex: threading.Lock
    _switch_pending: bool
    _switch_st: os.stat_result | None
    _switch_gen: int | None

    if TYPE_CHECKING:  # defined by the class this is mixed into

        def _reopen_locked(self, gen: int) -> bool:
            raise NotImplementedError  # pragma: no cover - SharedFileHandler defines it

        def _enter_locked(self) -> int:
            raise NotImplementedError  # pragma: no cover - SharedFileHandler defines it

        def _open(self) -> Any:
            raise NotImplementedError  # pragma: no cover - SharedFileHandler defines it

        def _run_finish(self) -> None:
            raise NotImplementedError  # pragma: no cover - RotationFinisher defines it

    # -- rotation (subclasses) --------------------------------------------
    def shouldRollover(self, record: _LogRecord) -> bool:
        """Whether ``record`` is due to rotate the file (subclasses: the stdlib's answer)."""
        return False

    def _should_rotate_locked(self, size: int, length: int, record: _LogRecord | None) -> bool:
        """Whether to rotate before writing ``length`` bytes to a file of exactly ``size`` bytes."""
        return False

    def _rotate_locked(self) -> None:  # pragma: no cover - subclasses that rotate override it
        raise NotImplementedError

    def _rotate_now_locked(self) -> None:
        try:
            self._rotate_locked()
        except Exception:
            if self._fd >= 0 and not self._still_current():
                # The file left its name before the failure (a rotator that moved it,
                # then raised): a new file, as after a rotation, so that no process
                # goes on writing into the moved one. The failure is still raised.
                self._switch_locked(None)
            raise

    def rotation_filename(self, default_name: str) -> str:
        """The name a backup gets: ``namer(default_name)`` if a namer is set (as the stdlib).

        ``namer`` may be set on the instance or defined as a method of a subclass.
        """
        namer = self.namer
        return namer(default_name) if callable(namer) else default_name

    def rotate(self, source: str, dest: str) -> None:
        """Move the current file to its backup name: ``rotator(source, dest)`` or a rename.

        Called holding the lock exclusively: a custom ``rotator`` blocks every
        writer while it runs (prefer ``compress=True``, which does not), and no
        process writes to ``source`` while it runs or afterwards.
        """
        rotator = self.rotator
        if callable(rotator):
            rotator(source, dest)
        else:
            _fs.replace(source, dest)

    def _has_rotator(self) -> bool:
        return callable(self.rotator)

    def _still_current(self) -> bool:
        """Whether the log's path still names the file this handler appends to."""
        if self._fd < 0:
            return False
        try:
            mine = _fs.fstat(self._fd)
            named = _fs.stat(self.baseFilename, follow_symlinks=False)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)

    def _switch_locked(self, rotated_to: str | None) -> None:
        """After the current file was renamed: open a new one and tell the other processes."""
        assert self._side is not None
        old = self._fd
        self._fd = -1
        try:
            self._switch_st = _fs.fstat(old)
        except BaseException:
            self._switch_pending = True
            _fs.close(old)
            raise
        # The renamed file's own work (its fsync, its compression) is queued first: it
        # is owed whether or not what follows succeeds.
        compress = self.compress and not self._has_rotator()
        if rotated_to is not None and (self.durable or compress):
            with self._finish_mutex:  # another thread may be taking the list in handle()
                self._finish.append(_Finish(old, rotated_to, compress))
        else:
            _fs.close(old)
        # The file left its name. If publishing the new generation or opening the new
        # file fails, the next record, finding no descriptor, takes the exclusive path,
        # which finishes this (``_switch_pending``); until then every record of this
        # handler would go nowhere.
        self._switch_pending = True
        self._publish_switch_locked()

    def _publish_switch_locked(self) -> None:
        """Bump the generation (other processes follow) and open the new file, holding the
        lock exclusively; the new file gets the old one's mode and, as root, owner.

        Called again after a failure until it succeeds: the generation is bumped once
        (``_switch_gen``), and the mode is set on the file whether this call or a failed
        one before it created it.
        """
        assert self._side is not None
        retry = self._switch_gen is not None
        if self._switch_gen is None:
            # The word wraps: a damaged one of all ones must not stop every rotation.
            gen = (self._side.head()[0] + 1) & UNKNOWN_END
            self._side.put_u64(OFF_GEN, gen)
            self._switch_gen = gen
        created = self._reopen_locked(self._switch_gen)
        old_st = self._switch_st
        if (created or retry) and old_st is not None:
            # The new file is what the old one was: same mode (a 0600 log
            # stays 0600) and, when root rotates, the same owner.
            _fs.fchmod(self._fd, stat.S_IMODE(old_st.st_mode))
            if os.geteuid() == 0:
                _fs.fchown(self._fd, old_st.st_uid, old_st.st_gid)
        self._switch_pending = False
        self._switch_st = self._switch_gen = None

    def _rotated_candidates(self, path: str) -> Iterable[str]:
        """Where a file rotated to ``path`` may be now (later rotations shift backups)."""
        return (path,)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The lock held exclusively, outside the record path (placing a .gz); hold self.lock."""
        if self._writing:
            raise RuntimeError("reentrant use of the log's lock from a signal handler")
        assert self._side is not None
        self._writing = True  # before the lock: see SharedFileHandler._append_shared
        try:
            self._side.lock(_LOCK_EX)
            try:
                yield
            finally:
                self._side.unlock()
        finally:
            self._writing = False

    def doRollover(self) -> None:
        """Rotate now, holding the lock exclusively (a no-op for an empty file).

        From a subclass's ``doRollover`` that ``emit`` called (to add work
        around a rotation), ``super().doRollover()`` rotates at once: the lock
        is already held exclusively by this thread.
        """
        if self._exclusive_held:
            self._rotate_now_locked()
            return
        with self.lock if self.lock is not None else _NULL:
            if self._side is None:
                self._open()
                if self._plain:
                    return
            assert self._side is not None
            with self._exclusive():
                self._exclusive_held = True
                try:
                    if self._enter_locked() > 0:
                        self._rotate_now_locked()
                finally:
                    self._exclusive_held = False
        self._run_finish()

