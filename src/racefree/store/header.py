"""The shared header ``store.shm``: how one process reads and writes its words.

Every process that has a store open reads the header's published end on each
call, so that it sees other processes' writes (see ``store.handle``). The words
are read one of two ways, chosen when the header is opened:

- **mapped**: a shared ``mmap``, one memory load per word and no system call.
  Only when the caller owns the file and neither its group nor others may write
  it (``owned.header_mappable``): a mapped file that someone truncates kills
  every process that touches it with SIGBUS, and here only the caller's own
  user (or root) could truncate it - who could kill the process anyway.
- **read with pread**: otherwise (a store its group may write, or another
  user's store opened read-only). Each word is one ``pread`` (``pwrite`` to
  store it); a header cut short is :class:`racefree.CorruptFileError` at the
  next call, never a signal. A ``pread`` may see half of a concurrent
  ``pwrite`` (no atomicity is promised for them), so a word is read until two
  reads agree.

The header also carries a *liveness* lock: every handle that trusts the header
(one that rebuilt it, or opened while another held it) holds an
open-file-description read lock on its first byte, which a read-only opener can
*query* without taking anything (``ofd_getlk``). A read-only process cannot
rebuild a stale header (after a power loss, say), and must not take the
exclusive flock that writers use to ask "am I the only one?" (a writer would
then mistake it for a live holder), so this question is how it learns whether
the header is live. Where the system has no such locks, read-only handles never
trust the header and follow the files themselves (correct, slower).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import sys
from typing import Any

from racefree import _fs
from racefree._errors import CorruptFileError
from racefree.store.files import SHM, SHM_SIZE
from racefree.store.owned import header_mappable, open_lock

__all__ = [
    "Header",
    "PreadWords",
    "is_live",
    "mark_live",
    "open_header",
    "open_header_readonly",
    "unmark_live",
]

_ORDER = sys.byteorder  # the byte order of a mapped ``cast("Q")`` view: both ways agree


class PreadWords:
    """The header's u64 words through ``pread``/``pwrite``: ``w[i]``, ``w[i] = v``.

    With ``stable`` (the default) a read is repeated until two reads agree;
    without, one ``pread`` (for "did anything change?" checks: a torn value
    there only sends the caller to the slow path, which reads it stably, or
    reads the word as it was before a write that is still in progress).
    """

    __slots__ = ("fd", "path", "stable")

    def __init__(self, fd: int, path: str, *, stable: bool = True) -> None:
        self.fd = fd
        self.path = path
        self.stable = stable

    def _read(self, i: int) -> int:
        data = _fs.pread(self.fd, 8, i * 8)
        if len(data) != 8:
            raise CorruptFileError(
                self.path, "the shared header was cut short while in use (truncated by"
                " someone); reopen the store to rebuild it", offset=i * 8,
            )
        return int.from_bytes(data, _ORDER)

    def __getitem__(self, i: int) -> int:
        # Two reads that agree: a pread racing a pwrite of the same word may
        # return part of each, and one such value could claim a position no
        # writer ever published.
        value = self._read(i)
        if not self.stable:
            return value
        while True:
            again = self._read(i)
            if again == value:
                return value
            value = again

    def __setitem__(self, i: int, value: int) -> None:
        _fs.pwrite_all(self.fd, value.to_bytes(8, _ORDER), i * 8)


class Header:
    """An open header: its descriptor, and its words (mapped or read with pread).

    ``words`` reads each word whole; ``fast`` is the same words for the hot
    path's "has anything changed?" (mapped: the same view; with pread: one read).
    """

    __slots__ = ("fast", "fd", "mm", "words")

    def __init__(self, fd: int, mm: mmap.mmap | None, words: Any, fast: Any) -> None:
        self.fd = fd
        self.mm = mm
        self.words = words
        self.fast = fast

    @property
    def mapped(self) -> bool:
        return self.mm is not None

    def unlock(self) -> None:
        """Drop every lock this handle's open file holds: its flock and its record locks.

        Before :meth:`close`, by the process that opened the header (never one that
        inherited it: the locks belong to the open file, shared with the parent).
        The mapping keeps a duplicate of the descriptor for as long as a view of it
        lives, and with it the open file's locks: a traceback that keeps a frame
        holding the words (a failed open's) would keep the store "open" to every
        other process (``check --repair`` refused it), and a live mark held.
        """
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            _fs.flock(self.fd, fcntl.LOCK_UN)
        if _fs.HAS_OFD_LOCKS:
            with contextlib.suppress(OSError):
                _fs.ofd_setlk(self.fd, fcntl.F_UNLCK, 0, 0)  # length 0: to the end

    def close(self) -> None:
        # The view is dropped, not released: a thread that loaded it just before
        # (a get's fast path, a sync) keeps reading a valid mapping, which is
        # unmapped once the last such reference is gone.
        if self.mm is not None:
            with contextlib.suppress(BufferError, ValueError):
                self.mm.close()
            self.mm = None
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with contextlib.suppress(OSError):
                _fs.close(fd)


def open_header(directory: str) -> Header:
    """Open the shared header for a writer, creating it if missing.

    Never through a link, a FIFO or a device (``owned.open_file``). A new (or
    short) file is grown to ``SHM_SIZE``; creating and growing are idempotent,
    and the contents are only trusted once a first opener rebuilt them under
    the write lock.
    """
    fd, st, _ = open_lock(directory, SHM, os.O_RDWR, create=True)
    try:
        if st.st_size < SHM_SIZE:
            _fs.ftruncate(fd, SHM_SIZE)
            st = _fs.fstat(fd)
        return _words(directory, fd, st, writable=True)
    except BaseException:
        with contextlib.suppress(OSError):
            _fs.close(fd)
        raise


def open_header_readonly(directory: str) -> Header | None:
    """Open the shared header for reading only; None if there is no complete one yet.

    (None: no writer has finished opening the store since it was made, so there
    is nothing to follow.) ``PermissionError`` for a user its mode keeps out
    (one who may not write the store: ``owned.open_lock``).
    """
    try:
        fd, st, _ = open_lock(directory, SHM, os.O_RDONLY, create=False)
    except FileNotFoundError:
        return None
    try:
        if st.st_size < SHM_SIZE:
            _fs.close(fd)
            return None
        return _words(directory, fd, st, writable=False)
    except BaseException:
        with contextlib.suppress(OSError):
            _fs.close(fd)
        raise


def _words(directory: str, fd: int, st: os.stat_result, *, writable: bool) -> Header:
    if header_mappable(st):
        mm = _fs.mmap(fd, SHM_SIZE, writable=writable)
        view = memoryview(mm).cast("Q")
        return Header(fd, mm, view, view)
    path = os.path.join(directory, SHM)
    return Header(fd, None, PreadWords(fd, path), PreadWords(fd, path, stable=False))


def mark_live(fd: int) -> None:
    """Hold the liveness lock through ``fd`` (until it is dropped or the descriptor closed)."""
    if _fs.HAS_OFD_LOCKS:
        _fs.ofd_setlk(fd, fcntl.F_RDLCK)


def unmark_live(fd: int) -> None:
    """Drop this open file's liveness lock (a read-only handle that stops trusting the header)."""
    if _fs.HAS_OFD_LOCKS:
        _fs.ofd_setlk(fd, fcntl.F_UNLCK)


def is_live(fd: int) -> bool:
    """Whether another open handle trusts the header now (holds the liveness lock).

    Asks without taking anything, so no writer is misled. False where the
    system has no open-file-description locks.
    """
    if not _fs.HAS_OFD_LOCKS:
        return False
    return _fs.ofd_getlk(fd, fcntl.F_WRLCK) != fcntl.F_UNLCK
