"""How a read-only store handle follows other processes' writes without writing anything.

A read-only handle (``Store(dir, readonly=True)``) opens every file for reading
only, so a user who may only read the directory can use it. It never writes the
shared header and never takes the exclusive flock on ``store.shm``: writers use
that exclusive try to ask "am I the only one here?", and one that lost it to a
reader would trust a header nobody rebuilt (stale after a power loss). Flock
and record locks both work on descriptors opened for reading. Two states:

- *attached*: another handle holds the header's liveness lock (``header.is_live``:
  a question that takes nothing), so the header is current. The reader takes
  the shared flock (no writer rebuilds the header under it, and a writer that
  opens now trusts the header, which is right: it is current) and the liveness
  lock, and from then on follows the header like any reader (``Handle.refresh``).
- *detached*: nobody trusts the header now; only a writer may rebuild it. The
  reader indexes the segments itself (``index.scan``: no tail repaired, no orphan
  removed), and at each call compares the header's words with the ones it saw
  before that scan. When they change (a writer opened, rebuilt the header, wrote),
  it attaches if the header is live now, else scans again (a writer came and
  went). While they do not change, no process wrote to the store.

An attached reader that finds a compactor died between its MANIFEST and its
publish (which only a writer may finish) detaches until a writer has.

A user who may only read a store that only its owner (or group) may write
cannot open the header at all: its mode, like the lock files', gives access
only to those who may write the store, because ``flock`` needs no more than
read access and a reader holding it exclusively would stop every writer. Such
a handle stays detached and follows the files instead of the header: at each
call it compares the MANIFEST's identity (a segment roll or a compaction
replaces it) and reads the 4 bytes after the last frame it indexed (zeros
until a writer appends there: every frame starts with a non-zero magic), and
scans again when either changed, so it still sees every write acknowledged
before the call began (one ``lstat`` and one ``pread`` per call).
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any, Protocol

from racefree import _fs
from racefree._errors import FormatError, UnsafePathError
from racefree.store.files import MANIFEST, SHM_MAGIC, W_END, W_GEN, W_INPROG, W_MAGIC
from racefree.store.header import Header, is_live, mark_live, open_header_readonly, unmark_live
from racefree.store.index import Core, State, load, scan
from racefree.store.locks import StoreLocks
from racefree.store.segment import M40, ZERO4

__all__ = ["attach", "detach", "open_readonly", "refresh_detached"]


class Handle(Core, Protocol):
    """What a read-only handle is made of (``store.handle.Handle``, ``readonly=True``).

    A protocol, so that this module does not import the handle that imports it.
    """

    fast: Any
    hdr: Header | None
    attached: bool
    seen: tuple[int, ...] | None
    header_closed: bool
    locks: StoreLocks

    def _close_header(self) -> None: ...


def open_readonly(h: Handle) -> None:
    """Open a read-only handle: attached if the header is live, else detached."""
    try:
        _fs.stat(os.path.join(h.dir, MANIFEST), follow_symlinks=False)
    except FileNotFoundError:
        raise FormatError(h.dir, "not a racefree store (no MANIFEST)") from None
    h.locks.open_files(create=False)
    h.header_closed = False
    h.hdr = _open_header(h)
    try:
        if h.hdr is not None:
            h.words, h.fast = h.hdr.words, h.hdr.fast
            if attach(h):
                return
        detach(h)
    except BaseException:
        h._close_header()
        raise


def _open_header(h: Handle) -> Header | None:
    """The header, read-only; None if there is none yet, or if its mode keeps this user out."""
    try:
        return open_header_readonly(h.dir)
    except PermissionError as exc:
        if isinstance(exc, UnsafePathError) or exc.errno != errno.EACCES:
            raise
        h.header_closed = True  # followed through the files instead (module docstring)
        return None


def _look(h: Handle) -> tuple[int, ...] | None:
    if h.header_closed:
        m = _fs.stat(os.path.join(h.dir, MANIFEST), follow_symlinks=False)
        return (m.st_dev, m.st_ino)
    w = h.words
    return None if h.hdr is None else (w[W_MAGIC], w[W_END], w[W_GEN], w[W_INPROG])


def _appended(h: Handle) -> bool:
    """Without the header: whether anything was written after the last frame indexed."""
    st = h.state
    fd = st.fds.get(st.end >> 40)
    if fd is None:
        return True
    # Empty at the end of a full segment: the next write rolls, replacing the MANIFEST.
    return _fs.pread(fd, len(ZERO4), st.end & M40) not in (ZERO4, b"")


def attach(h: Handle) -> bool:
    """Follow the header if another handle trusts it now; True if attached.

    The liveness lock is only ever held by handles that rebuilt the header or
    opened while it was live, so a held one is current. The shared flock, taken
    next, waits out a first opener's rebuild and stops any later one.
    """
    hdr = h.hdr
    if hdr is None or not is_live(hdr.fd):
        return False
    _fs.flock(hdr.fd, fcntl.LOCK_SH)
    try:
        if h.words[W_MAGIC] != SHM_MAGIC:
            _fs.flock(hdr.fd, fcntl.LOCK_UN)
            return False
        mark_live(hdr.fd)
        h.attached = True
        h.state = load(h)  # detaches again if a dead compactor's switch is pending
    except BaseException:
        _unattach(h)
        raise
    return h.attached


def _unattach(h: Handle) -> None:
    hdr = h.hdr
    if h.attached and hdr is not None and hdr.fd >= 0:
        unmark_live(hdr.fd)
        _fs.flock(hdr.fd, fcntl.LOCK_UN)
    h.attached = False


def detach(h: Handle) -> State:
    """Index the segments without trusting the header (changing nothing)."""
    _unattach(h)
    h.seen = _look(h)  # before the scan: a change during it is seen at the next call
    st = scan(h)
    h.state = st
    return st


def refresh_detached(h: Handle) -> State:
    """A detached handle's state, caught up (``h.mu`` held)."""
    if h.header_closed:
        if _look(h) == h.seen and not _appended(h):
            return h.state
        return detach(h)
    if h.hdr is None:
        h.hdr = _open_header(h)
        if h.hdr is None:
            if h.header_closed:
                return detach(h)
            return h.state  # still no header: no writer has opened the store since
        h.words, h.fast = h.hdr.words, h.hdr.fast
    if _look(h) == h.seen:
        return h.state
    if attach(h):
        return h.state
    return detach(h)
