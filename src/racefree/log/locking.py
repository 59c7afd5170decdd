"""The writers' lock of an :class:`~racefree.AppendLog`: ``path.lock``, closed to mere readers.

Every writer of the log at ``path`` (appends, compaction, ``racefree check
--repair``, a salvage) holds the :class:`~racefree.FileLock` on ``path.lock``.
``flock`` needs only read access, so a lock file that users who may only read
the log can open lets any of them hold it for ever and stop every writer. Its
mode therefore gives read and write access only to the classes (owner, group,
others) that may write the log itself (the log's mode, or the mode a new file
gets), and an older, more open lock file the caller owns is narrowed to it
(``lock.create.prepare_data_lock``), once per :class:`LogLock`, before its first
use.

A reader takes the lock only to look again at damage a lock-free read saw (a
writer may have been mid-way). A reader who may not open the lock looks again
without it: see :meth:`LogLock.looking_again`.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from types import TracebackType

from racefree import _fs
from racefree._errors import UnsafePathError
from racefree.lock.create import prepare_data_lock, trusted_data_mode
from racefree.lock.filelock import FileLock

__all__ = ["LogLock"]


class LogLock:
    """The lock on ``path.lock`` of the log at ``path``; ``with`` it to hold it exclusively.

    ``timeout`` as for :class:`~racefree.FileLock` (None waits for ever). The
    lock file's directory must exist (``FileNotFoundError``).
    """

    __slots__ = ("_file", "_ready", "path")

    def __init__(self, path: str, *, timeout: float | None = None) -> None:
        self.path = path
        self._file = FileLock(path + ".lock", timeout=timeout, make_parents=False)
        self._ready = False

    @property
    def lock(self) -> FileLock:
        """The :class:`~racefree.FileLock`, its file made (or narrowed) with the log's mode."""
        if not self._ready:
            # Links followed under the rule, and the mode of a trusted file only: a
            # link another user planted (to /dev/null, 0666) would otherwise make
            # root's lock one they may open, and hold for ever.
            prepare_data_lock(self._file.path, trusted_data_mode(self.path))
            self._ready = True
        return self._file

    def __enter__(self) -> LogLock:
        # FileLock's own with-statement fast path: this runs once per append.
        (self._file if self._ready else self.lock).__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.__exit__(exc_type, exc, tb)

    @contextlib.contextmanager
    def looking_again(self) -> Iterator[None]:
        """Hold the lock to look again at damage a lock-free read saw; a mere reader does not.

        A user who may not open the lock file (it may only read the log, and the
        lock's mode keeps it out) looks again without the lock: if a writer was
        repairing a torn tail at that very moment, the read may show damage that is
        gone when it reads again (docs/log.md). A reader never creates the lock
        file either: where there is none, no writer ever held it (writers make it
        before their first write), so it looks again without it. Any other error
        propagates.
        """
        try:
            _fs.stat(self._file.path, follow_symlinks=False)
        except FileNotFoundError:
            yield  # no writer has ever written this log: nothing is mid-way
            return
        try:
            lock = self.lock
            lock.acquire()
        except PermissionError as exc:
            if isinstance(exc, UnsafePathError) or exc.errno != errno.EACCES:
                raise
            yield  # the lock is closed to this user: see the docstring
            return
        try:
            yield
        finally:
            lock.release()
