"""The file-system seam: every file-system call racefree makes goes through here.

Like SQLite's VFS, this one layer lets the tests stand between racefree and
the kernel: fail the Nth call with ``ENOSPC`` or ``EIO``, record every call of
an operation, and replay the crash states a power loss could leave. No other
module of racefree calls ``os.open``, ``os.write``, ``os.fsync``,
``os.replace``, ``open()`` and friends directly; they call the functions of
this module by attribute (``_fs.write(fd, data)``), never import them by name,
so that :func:`use` can swap the implementation at run time.

The default implementation is the ``os`` function itself, bound directly, so
the seam costs nothing on a hot path. :func:`use` rebinds the module's
functions to the methods of another :class:`FileSystem` for the duration of a
``with`` block (tests only; it is not thread-safe against concurrent ``use``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap as _mmap
import os
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "OPS",
    "FileSystem",
    "current",
    "use",
]

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Open-file-description record locks (Linux 3.15+): unlike flock they can be
# queried without being taken (F_OFD_GETLK); unlike classic fcntl locks no
# close() of another descriptor drops them.
_F_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
_F_OFD_GETLK: int | None = getattr(fcntl, "F_OFD_GETLK", None)
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = struct.Struct("@hhqqi4x")


def _fdatasync(fd: int) -> None:
    os.fsync(fd)


class FileSystem:
    """The real file system. Subclass it and override methods to fake one.

    Each method is one system call (or, for :meth:`fsync_dir`, the three calls
    that make "fsync a directory" one step a crash model can reason about).
    """

    # -- descriptors -------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        return os.open(path, flags | _O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read(self, fd: int, n: int) -> bytes:
        return os.read(fd, n)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return os.pread(fd, n, offset)

    def preadinto(self, fd: int, buf: bytearray | memoryview, offset: int) -> int:
        """One ``preadv`` into ``buf`` (reused by the caller); the number of bytes read."""
        if hasattr(os, "preadv"):
            return os.preadv(fd, [buf], offset)
        data = os.pread(fd, len(buf), offset)  # pragma: no cover - every supported system
        buf[: len(data)] = data  # pragma: no cover
        return len(data)  # pragma: no cover

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """One ``write(2)``: it may write fewer bytes than given (see :func:`write_all`)."""
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def lseek(self, fd: int, pos: int, how: int) -> int:
        return os.lseek(fd, pos, how)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """Flush a file's data and the metadata needed to read it back.

        On macOS, ``fsync`` does not reach the platter; ``F_FULLFSYNC`` does.
        """
        if sys.platform == "darwin":  # pragma: no cover - not run in CI
            fcntl.fcntl(fd, getattr(fcntl, "F_FULLFSYNC", 51))
        elif hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover
            os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve disk space; ``posix_fallocate`` where it exists."""
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, offset, length)
        else:  # pragma: no cover - macOS
            size = os.fstat(fd).st_size
            if offset + length > size:
                os.ftruncate(fd, offset + length)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def set_blocking(self, fd: int, blocking: bool) -> None:
        """Set or clear ``O_NONBLOCK`` on an open descriptor (``fcntl(F_SETFL)``)."""
        os.set_blocking(fd, blocking)

    def fchmod(self, fd: int, mode: int) -> None:
        os.fchmod(fd, mode)

    def fchown(self, fd: int, uid: int, gid: int) -> None:
        os.fchown(fd, uid, gid)

    def flock(self, fd: int, op: int) -> None:
        fcntl.flock(fd, op)

    def ofd_setlk(self, fd: int, kind: int, start: int = 0, length: int = 1) -> None:
        """Take (``F_RDLCK`` / ``F_WRLCK``) or drop (``F_UNLCK``) a record lock, never waiting.

        An open-file-description lock: held until dropped or until the last
        descriptor of that open file is closed. ``BlockingIOError`` if another
        holder's lock conflicts; ``OSError(ENOTSUP)`` where the system has none.
        """
        if _F_OFD_SETLK is None:  # pragma: no cover - Linux has them
            raise OSError(errno.ENOTSUP, "no open-file-description locks on this system")
        fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))

    def ofd_getlk(self, fd: int, kind: int, start: int = 0, length: int = 1) -> int:
        """The type of a lock another open file holds that ``kind`` would conflict with.

        ``fcntl.F_UNLCK`` if there is none. Takes nothing: a pure question.
        """
        if _F_OFD_GETLK is None:  # pragma: no cover - Linux has them
            raise OSError(errno.ENOTSUP, "no open-file-description locks on this system")
        got = fcntl.fcntl(fd, _F_OFD_GETLK, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))
        found: int = _FLOCK.unpack(got)[0]
        return found

    def mmap(self, fd: int, length: int, *, writable: bool = False, offset: int = 0) -> _mmap.mmap:
        prot = _mmap.PROT_READ | (_mmap.PROT_WRITE if writable else 0)
        return _mmap.mmap(fd, length, flags=_mmap.MAP_SHARED, prot=prot, offset=offset)

    # -- names -------------------------------------------------------------
    def stat(self, path: str, *, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(path, follow_symlinks=follow_symlinks)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        os.mkdir(path, mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def utime(self, path: int | str, ns: tuple[int, int] | None = None) -> None:
        """Set a file's (or descriptor's) access and modification times; now if ``ns`` is None."""
        if ns is None:
            os.utime(path)
        else:
            os.utime(path, ns=ns)

    def umask(self) -> int:
        """The process's file-mode creation mask, read without changing it.

        Linux (4.7 and later) shows it in ``/proc/self/status``; elsewhere it is
        read with the ``umask`` call pair, which sets it for an instant (a file
        another thread creates in that instant gets mode ``0o077``'s narrowing).
        """
        try:
            fd = os.open("/proc/self/status", os.O_RDONLY | _O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                text = os.read(fd, 1 << 16)
            finally:
                os.close(fd)
            for line in text.splitlines():
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
        mask = os.umask(0o077)  # pragma: no cover - every Linux this runs on has the field
        os.umask(mask)  # pragma: no cover
        return mask  # pragma: no cover

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (creates, renames, unlinks) durable."""
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: The names of the seam's operations, in the order of the class above.
OPS: tuple[str, ...] = (
    "open", "close", "read", "pread", "preadinto", "write", "pwrite", "lseek", "fsync",
    "fdatasync",
    "ftruncate", "fallocate", "fstat", "set_blocking", "fchmod", "fchown", "flock", "ofd_setlk",
    "ofd_getlk",
    "mmap",
    "stat", "replace", "link", "unlink", "mkdir", "rmdir", "listdir", "realpath", "fsync_dir",
    "utime", "readlink", "umask",
)

_REAL = FileSystem()
_current: FileSystem = _REAL

# The module-level functions that racefree calls. Where the real method is a
# plain forward to an ``os`` function with the same signature, the ``os``
# function itself is bound, so the default seam adds no Python frame.
open: Callable[..., int] = _REAL.open
close: Callable[[int], None] = _REAL.close
read: Callable[[int, int], bytes] = _REAL.read
pread: Callable[[int, int, int], bytes] = _REAL.pread
preadinto: Callable[[int, bytearray | memoryview, int], int] = _REAL.preadinto
write: Callable[[int, bytes | memoryview], int] = _REAL.write
pwrite: Callable[[int, bytes | memoryview, int], int] = _REAL.pwrite
lseek: Callable[[int, int, int], int] = _REAL.lseek
fsync: Callable[[int], None] = _REAL.fsync
fdatasync: Callable[[int], None] = _REAL.fdatasync
ftruncate: Callable[[int, int], None] = _REAL.ftruncate
fallocate: Callable[[int, int, int], None] = _REAL.fallocate
fstat: Callable[[int], os.stat_result] = _REAL.fstat
set_blocking: Callable[[int, bool], None] = _REAL.set_blocking
fchmod: Callable[[int, int], None] = _REAL.fchmod
fchown: Callable[[int, int, int], None] = _REAL.fchown
flock: Callable[[int, int], None] = _REAL.flock
ofd_setlk: Callable[..., None] = _REAL.ofd_setlk
ofd_getlk: Callable[..., int] = _REAL.ofd_getlk
mmap: Callable[..., _mmap.mmap] = _REAL.mmap
stat: Callable[..., os.stat_result] = _REAL.stat
replace: Callable[[str, str], None] = _REAL.replace
link: Callable[[str, str], None] = _REAL.link
unlink: Callable[[str], None] = _REAL.unlink
mkdir: Callable[..., None] = _REAL.mkdir
rmdir: Callable[[str], None] = _REAL.rmdir
listdir: Callable[[str], list[str]] = _REAL.listdir
realpath: Callable[[str], str] = _REAL.realpath
fsync_dir: Callable[[str], None] = _REAL.fsync_dir
utime: Callable[..., None] = _REAL.utime
readlink: Callable[[str], str] = _REAL.readlink
umask: Callable[[], int] = _REAL.umask

_FAST: dict[str, Any] = {
    "close": os.close,
    "read": os.read,
    "pread": os.pread,
    "write": os.write,
    "pwrite": os.pwrite,
    "lseek": os.lseek,
    "fsync": os.fsync,
    "ftruncate": os.ftruncate,
    "fstat": os.fstat,
    "set_blocking": os.set_blocking,
    "fchmod": os.fchmod,
    "fchown": os.fchown,
    "flock": fcntl.flock,
    "replace": os.replace,
    "link": os.link,
    "unlink": os.unlink,
    "rmdir": os.rmdir,
    "listdir": os.listdir,
    "readlink": os.readlink,
}
if sys.platform.startswith("linux") and hasattr(os, "fdatasync"):
    _FAST["fdatasync"] = os.fdatasync


def _bind(fs: FileSystem) -> None:
    module = globals()
    for name in OPS:
        if fs is _REAL and name in _FAST:
            module[name] = _FAST[name]
        else:
            module[name] = getattr(fs, name)


_bind(_REAL)


def current() -> FileSystem:
    """The file system the seam forwards to now."""
    return _current


@contextlib.contextmanager
def use(fs: FileSystem) -> Iterator[FileSystem]:
    """Route every racefree file-system call to ``fs`` inside the block (tests only)."""
    global _current
    previous = _current
    _current = fs
    _bind(fs)
    try:
        yield fs
    finally:
        _current = previous
        _bind(previous)


# -- helpers built on the seam's calls (so faults injected there reach them) --

def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data``, looping over short writes (pitfall W6)."""
    view = memoryview(data)
    while view:
        n = write(fd, view)
        if n <= 0:  # pragma: no cover - write(2) never returns 0 for n > 0 on a file
            raise OSError(errno.EIO, "write returned 0")
        view = view[n:]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write every byte of ``data`` at ``offset``, looping over short writes."""
    view = memoryview(data)
    while view:
        n = pwrite(fd, view, offset)
        if n <= 0:  # pragma: no cover
            raise OSError(errno.EIO, "pwrite returned 0")
        view = view[n:]
        offset += n


def read_all(fd: int, chunk: int = 1 << 20) -> bytes:
    """Read from the current offset to the end of the file."""
    parts: list[bytes] = []
    while True:
        block = read(fd, chunk)
        if not block:
            return b"".join(parts)
        parts.append(block)


def exists(path: str) -> bool:
    """Whether ``path`` names something (a ``stat`` that follows links, as ``os.path.exists``)."""
    try:
        stat(path)
    except FileNotFoundError:
        return False
    return True


def read_file(path: str) -> bytes:
    """The whole contents of the file at ``path``."""
    fd = open(path, os.O_RDONLY)
    try:
        return read_all(fd)
    finally:
        close(fd)


O_DIRECTORY = _O_DIRECTORY
O_NOFOLLOW = _O_NOFOLLOW
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: Whether :func:`ofd_setlk` and :func:`ofd_getlk` work here.
HAS_OFD_LOCKS = _F_OFD_SETLK is not None and _F_OFD_GETLK is not None
