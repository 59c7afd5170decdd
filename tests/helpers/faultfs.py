"""A fault-injecting file system for racefree's seam (libfiu's idea, in-process).

``FaultFS(op="fsync", nth=2, err=errno.EIO)`` makes the second ``fsync`` after
:meth:`FaultFS.arm` fail with ``EIO``; ``persist=True`` makes every later call of
that operation fail too ("from then on", a disk that stays full). ``op=None``
injects nothing and only counts, so a test can learn how many calls of each
operation an operation makes and then fail each one in turn.

Errors are raised the way the kernel reports them: before the call has any
effect, except ``close``, which always releases the descriptor (Linux closes
it even when it reports an error), and ``fsync``/``fdatasync``, which report
the error after the kernel may have dropped the dirty pages (we cannot drop
them, so the file keeps whatever the write put there: what matters is that
the caller treats the error as "not durable").

``short_writes=True`` makes every ``write``/``pwrite`` write at most half of
what it is given (at least one byte), the case of pitfall W6.
"""

from __future__ import annotations

import errno
import os
from collections import Counter

from racefree import _fs

__all__ = ["ERRNOS", "FAULT_OPS", "FaultFS", "InjectedFault"]

#: The operations faults are injected into.
FAULT_OPS: tuple[str, ...] = (
    "open", "write", "pwrite", "fsync", "fdatasync", "ftruncate", "fallocate",
    "close", "replace", "link", "unlink", "mkdir", "fsync_dir",
)

ERRNOS: tuple[int, ...] = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


class InjectedFault(OSError):
    """The error a :class:`FaultFS` raised (an ``OSError`` with the chosen errno)."""


class FaultFS(_fs.FileSystem):
    """Fails the ``nth`` call (1-based, counted from :meth:`arm`) of ``op`` with ``err``."""

    def __init__(
        self,
        op: str | None = None,
        nth: int = 1,
        err: int = errno.EIO,
        *,
        persist: bool = False,
        sync: bool = True,
        short_writes: bool = False,
    ) -> None:
        if op is not None and op not in FAULT_OPS:
            raise ValueError(f"no fault injection for {op!r}")
        self.op = op
        self.nth = nth
        self.err = err
        self.persist = persist
        self.sync = sync  # False: fsyncs succeed without touching the disk (fast tests)
        self.short_writes = short_writes
        self.armed = False
        self.counts: Counter[str] = Counter()
        self.fired = 0
        self.log: list[str] = []

    def arm(self) -> None:
        """Start counting (and failing) from here; calls before are setup."""
        self.armed = True
        self.counts.clear()

    def disarm(self) -> None:
        """Stop failing and counting: the disk is healthy again."""
        self.armed = False

    def _check(self, op: str, what: object = "") -> None:
        if not self.armed:
            return
        self.counts[op] += 1
        if op != self.op:
            return
        n = self.counts[op]
        if n == self.nth or (self.persist and n > self.nth):
            self.fired += 1
            self.log.append(f"{op}#{n} {what}")
            raise InjectedFault(self.err, f"{os.strerror(self.err)} (injected at {op} #{n})")

    # -- the operations ---------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        self._check("open", path)
        return super().open(path, flags, mode)

    def close(self, fd: int) -> None:
        try:
            super().close(fd)
        finally:
            self._check("close", fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._check("write", fd)
        if self.short_writes and len(data) > 1:
            data = memoryview(data)[: max(1, len(data) // 2)]
        return super().write(fd, data)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._check("pwrite", fd)
        if self.short_writes and len(data) > 1:
            data = memoryview(data)[: max(1, len(data) // 2)]
        return super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        self._check("fsync", fd)
        if self.sync:
            super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._check("fdatasync", fd)
        if self.sync:
            super().fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._check("ftruncate", fd)
        super().ftruncate(fd, length)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        self._check("fallocate", fd)
        super().fallocate(fd, offset, length)

    def replace(self, src: str, dst: str) -> None:
        self._check("replace", f"{src} -> {dst}")
        super().replace(src, dst)

    def link(self, src: str, dst: str) -> None:
        self._check("link", f"{src} -> {dst}")
        super().link(src, dst)

    def unlink(self, path: str) -> None:
        self._check("unlink", path)
        super().unlink(path)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        self._check("mkdir", path)
        super().mkdir(path, mode)

    def fsync_dir(self, path: str) -> None:
        self._check("fsync_dir", path)
        if self.sync:
            super().fsync_dir(path)
