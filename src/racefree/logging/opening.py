"""Opening the shared log and its sidecar, following a rotation, and fork safety.

A mixin of :class:`racefree.logging.handler.SharedFileHandler`, kept apart so
that each module reads in one sitting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import threading
import weakref
from typing import TYPE_CHECKING, Any

from racefree import _fork, _fs, _trust
from racefree.logging import compress as _gzip
from racefree.logging.finish import _Finish
from racefree.logging.sidecar import HEAD, OFF_DIRTY, OFF_WRITERS, UNCOUNTED, Sidecar

__all__ = ["Opening"]

_LOCK_EX = fcntl.LOCK_EX

# Live handlers, so that a forked child can drop the descriptors it inherited.
_LIVE: weakref.WeakSet[Opening] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_LIVE):
        handler._forget_inherited()


_fork.on_child(_after_fork_in_child)  # before any use in the child: see racefree._fork


#: Paths that name a process's descriptor (its stream), not a log file of its own.
_STREAM = re.compile(r"/dev/std(out|err)|/dev/fd/\d+|/proc/(self|thread-self|\d+)"
                     r"(/task/\d+)?/fd/\d+")


class Opening:
    """The descriptors of a racefree handler (mixin)."""

    baseFilename: str
    lockFilename: str
    durable: Any
    lock_timeout: float | None
    stream: Any
    _dir: str
    _proxy: Any
    _side: Sidecar | None
    _plain: bool
    _fd: int
    _gen: int
    _head: bytes
    _size: int
    _sole: int
    _sole_seen: int
    _free: int
    _live_gen: int
    _bom: bytes
    _bom_pending: bool
    _truncate: bool
    _failed: BaseException | None
    _writing: bool
    _exclusive_held: bool
    _finish: list[_Finish | _gzip.Claim]
    _finish_mutex: threading.Lock
    _deferred: list[BaseException]

    if TYPE_CHECKING:  # defined by the class this is mixed into

        def _sync(self, fn: Any, target: Any, path: str) -> None:
            raise NotImplementedError  # pragma: no cover - SharedFileHandler defines it

        def _ask_alone(self, writers: int) -> None:
            raise NotImplementedError  # pragma: no cover - SharedFileHandler defines it

    # -- opening -------------------------------------------------------------
    def _open(self) -> Any:
        """Open the log (and its sidecar) if this handler has not; return :attr:`stream`.

        Called whenever this process opens the log: at the first record (or at
        construction without ``delay``) and after every rotation, by this
        process or another. An override must call ``super()._open()`` and
        return what it returns.
        """
        if self._side is None and not self._plain:
            self._open_shared()
        self.stream = self._proxy
        return self._proxy

    def _open_log(self) -> tuple[int, os.stat_result, bool]:
        """Open (or create) the log file for appending, following only trusted links."""
        target = _trust.resolve(self.baseFilename).path
        return _trust.open_own(target, os.O_RDWR | os.O_APPEND, 0o666)

    def _open_shared(self) -> None:
        where = _trust.resolve(self.baseFilename)
        # abspath keeps a leading "//" (POSIX leaves it to the system): Linux does not.
        stream = _STREAM.fullmatch("/" + self.baseFilename.lstrip("/")) is not None
        if where.st is not None and (stream or not stat.S_ISREG(where.st.st_mode)) and (
                self._open_plain(regular=stream)):
            return
        fd, st, _ = self._open_log()
        try:
            side = Sidecar(self.lockFilename, st.st_mode, self.lock_timeout)
        except BaseException:
            _fs.close(fd)
            raise
        self._side, self._fd = side, fd
        _LIVE.add(self)  # again after a close(): a record reopens, fork must still be safe
        self._writing = True  # before the lock: see SharedFileHandler._append_shared
        try:
            side.lock(_LOCK_EX)
        except BaseException:
            self._writing = False
            self._drop_descriptors()
            raise
        try:
            gen, dirty = side.head()
            # The log was opened before the lock: a rotation may have renamed it since.
            now = _fs.stat(where.path)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                self._reopen_locked(gen)
            else:
                self._set_gen(gen)
            if self._truncate:
                self._truncate = False
                _fs.ftruncate(self._fd, 0)
                if dirty:
                    side.put_u64(OFF_DIRTY, 0)
            # Counted among the writers since the Sidecar took its read lock: now
            # tell a handler that believes it is alone that it is not (_ask_alone).
            # The count wraps in its 63 bits (a damaged word of all ones must not stop
            # every handler from opening the log); the top bit is kept.
            word = side.writers()
            writers = (word & UNCOUNTED) | ((word + 1) & (UNCOUNTED - 1))
            if not side.counted:
                writers |= UNCOUNTED
            side.put_u64(OFF_WRITERS, writers)
            self._ask_alone(writers)
            self._opened_locked()
        except BaseException:
            self._writing = False
            side.unlock()
            self._drop_descriptors()
            raise
        self._writing = False
        side.unlock()

    def _open_plain(self, regular: bool = False) -> bool:
        """Open a log that is not a regular file (``os.devnull``, a FIFO); False if it now is.

        ``regular``: a process's own stream (``/dev/stdout``, ``/proc/self/fd/1``),
        whatever it leads to: a file the shell opened for this process is written
        as it is, never rotated, with no sidecar (``/dev`` is not the log's
        directory; the stdlib would rename ``/dev/stdout`` itself at a rotation).

        bpo-45401: the stdlib never rotates what is not a regular file; no
        sidecar either (it would need a writable ``/dev`` for ``os.devnull``).
        The path is opened as the caller's file (``_trust.open_followed``): a
        link or a FIFO another user planted in a shared directory is refused,
        a link swapped in after the lstat above is never followed (it is
        resolved again, under the rule), the descriptor is checked with
        ``fstat``, and the open never blocks (a FIFO nobody reads is
        ``OSError(ENXIO)``). Writes then block as the stdlib's do.
        """
        fd, st = _trust.open_followed(self.baseFilename, os.O_WRONLY | os.O_APPEND, special=True)
        if stat.S_ISREG(st.st_mode) and not regular:
            # Replaced by a regular file since the lstat: shared and rotated as any log.
            _fs.close(fd)
            return False
        try:
            _fs.set_blocking(fd, True)
        except BaseException:
            _fs.close(fd)
            raise
        self._fd = fd
        self._plain = True
        _LIVE.add(self)
        return True

    def _set_gen(self, gen: int) -> None:
        self._gen = gen
        self._bom_pending = bool(self._bom)  # a new descriptor: is the file empty?
        self._size = -1  # another file, or the same one truncated: measured again
        # What the fast path compares the control block's first bytes with;
        # after a failed fsync, nothing: every record takes the slow path and is refused.
        self._head = HEAD.pack(gen, 0) if self._failed is None else b""
        self._live_gen = gen if self._failed is None else -1

    def _follow_shared(self, head: bytes) -> bool:
        """Holding the lock shared, the control block is not what our descriptor was opened at.

        Another process rotated: reopen the path now (no rotation can rename it
        while the lock is held, even shared) and go on as a shared writer.
        False when the exclusive hold is needed: a torn record to repair, a
        failed handler, a truncated sidecar (the exclusive path reports it).
        """
        if len(head) != HEAD.size or self._failed is not None:
            return False
        gen, dirty = HEAD.unpack(head)
        if dirty:
            return False
        self._reopen_locked(gen)
        return not self._bom_pending  # a byte-order mark may be due: decided exclusively

    def _opened_locked(self) -> None:
        """A new descriptor of the log, under the lock: subclasses read their shared state."""

    def _reopen_locked(self, gen: int) -> bool:
        """(Re)open the path for appending, under the lock; whether the file was created."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _fs.close(fd)
        self._fd, _, created = self._open_log()
        self._set_gen(gen)
        self._opened_locked()
        if created and self.durable == "record":
            # A new file's name must be durable before a record in it is called durable (W2).
            self._sync(_fs.fsync_dir, self._dir, self._dir)
        return created

    def _drop_descriptors(self) -> None:
        self._free = -1  # the sidecar's slot lock goes with it
        fd, self._fd = self._fd, -1
        if fd >= 0:
            _fs.close(fd)
        side, self._side = self._side, None
        if side is not None:
            side.close()

    def _forget_inherited(self) -> None:
        """In a forked child: close the parent's descriptors, reopen lazily on the next record.

        The child must never lock through the parent's open file description:
        flock would treat parent and child as one owner (concurrent-log-handler
        issue #8). Closing the child's copies releases nothing the parent holds.
        """
        with contextlib.suppress(OSError):  # a child's copy always closes
            self._drop_descriptors()
        self._gen = -1
        self._plain = False
        self._size = self._sole = self._sole_seen = self._free = -1
        # Another thread of the parent may have been mid-record.
        self._writing = self._exclusive_held = False
        # The parent finishes its own rotations; the child must not compress them twice.
        for job in self._finish:
            with contextlib.suppress(OSError):
                if isinstance(job, _gzip.Claim):
                    job.release()  # the parent's claim: its flock stays with the parent
                else:
                    _fs.close(job.fd)
        self._finish = []
        self._deferred = []
        self._finish_mutex = threading.Lock()

