"""The seam front end: :class:`Recorder` records every file-system call racefree makes.

Install it with ``racefree._fs.use(recorder)`` (or let :func:`racefree.testing.crash_states`
do it) before the object under test is opened, so that every descriptor it uses is
known. Each call is performed for real; for paths under the base directory the
recorder also updates its :class:`~racefree.testing.recording.Recording`.
Paths outside the base pass through untracked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from racefree import _fs
from racefree.testing.recording import ModelError, Recording

__all__ = ["NoSyncFS", "Recorder"]

_SEEK_CUR = os.SEEK_CUR


class Recorder(Recording, _fs.FileSystem):
    """A :class:`racefree._fs.FileSystem` that performs every call and records its meaning.

    ``base`` is the directory whose files are modelled; ``ignore`` names files left out
    of the model (racefree's own caches rebuilt on open: see :data:`RACEFREE_CACHES`).
    """

    def __init__(self, base: str | os.PathLike[str], *, ignore: tuple[str, ...] = ()) -> None:
        Recording.__init__(self, base, ignore=ignore)
        self._fds: dict[int, int | None] = {}  # fd -> inode (None: an untracked path)
        self._append: set[int] = set()

    # -- descriptors -----------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        with self.lock:
            parts = self.split(path)
            existed = None if parts is None else self.lookup(parts)
            fd = super().open(path, flags, mode)
            if parts is None:
                self._fds[fd] = None
                return fd
            ino = existed
            if ino is None:
                if not flags & os.O_CREAT:
                    raise ModelError(f"{path} exists on disk but not in the model")
                ino = self.note_create(path, "file", f"create {self.rel(path)}")
                assert ino is not None  # the path is under the base
            elif flags & os.O_TRUNC and self.live[ino].kind == "file":
                self.note_truncate(ino, 0, f"open-truncate {self.rel(path)}")
            self._fds[fd] = ino
            if flags & os.O_APPEND:
                self._append.add(fd)
            return fd

    def close(self, fd: int) -> None:
        with self.lock:
            super().close(fd)
            self._fds.pop(fd, None)
            self._append.discard(fd)

    def _tracked(self, fd: int) -> int | None:
        if fd not in self._fds:
            raise ModelError(f"descriptor {fd} was not opened under the recorder")
        return self._fds[fd]

    def write(self, fd: int, data: bytes | memoryview) -> int:
        with self.lock:
            ino = self._tracked(fd)
            if ino is None:
                return super().write(fd, data)
            # O_APPEND writes land at the end; others at the descriptor's offset.
            append = fd in self._append
            offset = len(self.live[ino].data) if append else os.lseek(fd, 0, _SEEK_CUR)
            n = super().write(fd, data)
            self.note_write(ino, offset, bytes(data[:n]), f"write ino {ino} @{offset} {n} B")
            return n

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        with self.lock:
            ino = self._tracked(fd)
            n = super().pwrite(fd, data, offset)
            if ino is not None:
                self.note_write(ino, offset, bytes(data[:n]), f"pwrite ino {ino} @{offset} {n} B")
            return n

    def _sync(self, fd: int, what: str, call: Callable[[int], None]) -> None:
        with self.lock:
            ino = self._tracked(fd)
            call(fd)
            if ino is not None:
                self.note_sync(ino, f"{what} ino {ino}")

    def fsync(self, fd: int) -> None:
        self._sync(fd, "fsync", super().fsync)

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, "fdatasync", super().fdatasync)

    def ftruncate(self, fd: int, length: int) -> None:
        with self.lock:
            ino = self._tracked(fd)
            super().ftruncate(fd, length)
            if ino is not None:
                self.note_truncate(ino, length, f"ftruncate ino {ino} to {length}")

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        with self.lock:
            ino = self._tracked(fd)
            super().fallocate(fd, offset, length)
            if ino is not None:
                self.note_allocate(ino, offset, length, f"fallocate ino {ino}")

    def mmap(self, fd: int, length: int, *, writable: bool = False, offset: int = 0) -> Any:
        with self.lock:
            if writable and self._tracked(fd) is not None:
                raise ModelError(
                    "writes through a writable mmap are not modelled (name the file in ignore)"
                )
            return super().mmap(fd, length, writable=writable, offset=offset)

    # -- names ---------------------------------------------------------------------------
    def replace(self, src: str, dst: str) -> None:
        with self.lock:
            super().replace(src, dst)
            self.note_rename(src, dst, f"rename {self.rel(src)} -> {self.rel(dst)}")

    def link(self, src: str, dst: str) -> None:
        with self.lock:
            super().link(src, dst)
            self.note_link(src, dst, f"link {self.rel(src)} -> {self.rel(dst)}")

    def unlink(self, path: str) -> None:
        with self.lock:
            super().unlink(path)
            self.note_remove(path, f"unlink {self.rel(path)}")

    def rmdir(self, path: str) -> None:
        with self.lock:
            super().rmdir(path)
            self.note_remove(path, f"rmdir {self.rel(path)}")

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        with self.lock:
            super().mkdir(path, mode)
            self.note_create(path, "dir", f"mkdir {self.rel(path)}")

    def fsync_dir(self, path: str) -> None:
        with self.lock:
            super().fsync_dir(path)
            parts = self.split(path)
            if parts is not None:
                ino = self.lookup(parts)
                if ino is None:
                    raise ModelError(f"fsync_dir of {path}, unknown to the model")
                self.note_sync(ino, f"fsync_dir {self.rel(path)}")


class NoSyncFS(_fs.FileSystem):
    """The real file system with fsync, fdatasync and fsync_dir made free.

    For opening thousands of replayed crash states quickly: their durability is
    not what is being tested.
    """

    def fsync(self, fd: int) -> None:
        pass

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass
