"""Fault injection at racefree's seam: :func:`faults`, :func:`count_calls`, :class:`FaultFS`.

``with faults("fsync", errno.EIO, nth=2):`` makes the second ``fsync`` racefree
makes inside the block fail with ``EIO``; ``times=None`` makes every later one
fail too (a disk that stays full). Errors are raised the way the kernel reports
them: before the call has any effect, except ``close``, which always releases
the descriptor (Linux closes it even when it reports an error), and the syncs,
which report the error after the kernel may have dropped the dirty pages (the
file keeps what the write put there: what matters is that the caller treats
the error as "not durable").

Only calls made through racefree are counted and failed; a program's own
``open()`` is not. ``short_writes=True`` makes every write write at most half
of what it is given (at least one byte): pitfall W6.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import Counter
from collections.abc import Iterator

from racefree import _fs

__all__ = ["CALLS", "ERRNOS", "FAULT_OPS", "FaultFS", "InjectedFault", "count_calls", "faults"]

#: The seam operations faults are injected into.
FAULT_OPS: tuple[str, ...] = (
    "open", "write", "pwrite", "fsync", "fdatasync", "ftruncate", "fallocate",
    "close", "replace", "link", "unlink", "mkdir", "fsync_dir",
)

#: The names :func:`faults` accepts, each with the seam operations it counts together.
CALLS: dict[str, tuple[str, ...]] = {
    **{op: (op,) for op in FAULT_OPS},
    "write": ("write", "pwrite"),  # any data write
    "rename": ("replace",),
    "truncate": ("ftruncate",),
}

#: The errors a failing disk reports: full, over quota, I/O error.
ERRNOS: tuple[int, ...] = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


class InjectedFault(OSError):
    """The error a :class:`FaultFS` raised: an ``OSError`` with the chosen errno."""


class FaultFS(_fs.FileSystem):
    """Fails calls ``nth`` .. ``nth + times - 1`` (1-based, counted from :meth:`arm`) of ``op``.

    ``op`` is one seam operation (:data:`FAULT_OPS`; None: fail nothing, only count),
    or a name of :data:`CALLS` that is not one (``"rename"``, ``"truncate"``); ``ops``
    names the seam operations counted together instead (as :func:`faults` does);
    ``times=None`` (or ``persist=True``) fails every call from the ``nth`` on.
    ``sync=False`` makes the syncs succeed without touching the disk (fast tests).
    ``counts`` holds the calls of each seam operation since :meth:`arm`.
    """

    def __init__(
        self,
        op: str | None = None,
        nth: int = 1,
        err: int = errno.EIO,
        *,
        times: int | None = 1,
        persist: bool = False,
        sync: bool = True,
        short_writes: bool = False,
        ops: tuple[str, ...] | None = None,
    ) -> None:
        if op is not None and op not in CALLS:
            raise ValueError(f"no fault injection for {op!r}; one of {sorted(CALLS)}")
        if ops is None:
            ops = () if op is None else (op,) if op in FAULT_OPS else CALLS[op]
        if nth < 1 or (times is not None and times < 1):
            raise ValueError(f"nth and times must be >= 1 (times None: from then on), "
                             f"not {nth} and {times}")
        self.op = op
        self.ops = ops
        self.nth = nth
        self.err = err
        self.times = None if persist else times
        self.sync = sync
        self.short_writes = short_writes
        self.armed = False
        self.counts: Counter[str] = Counter()
        self.seen = 0  # calls of ``op`` since arm()
        self.fired = 0
        self.log: list[str] = []

    def arm(self) -> None:
        """Start counting (and failing) from here; calls before are setup."""
        self.armed = True
        self.counts.clear()
        self.seen = 0

    def disarm(self) -> None:
        """Stop failing and counting: the disk is healthy again."""
        self.armed = False

    def count(self, call: str) -> int:
        """How many calls named ``call`` (a name of :data:`CALLS`) were made since :meth:`arm`."""
        return sum(self.counts[op] for op in CALLS[call])

    def _check(self, op: str, what: object = "") -> None:
        if not self.armed:
            return
        self.counts[op] += 1
        if op not in self.ops:
            return
        self.seen += 1
        n = self.seen
        if n >= self.nth and (self.times is None or n < self.nth + self.times):
            self.fired += 1
            self.log.append(f"{op}#{n} {what}")
            raise InjectedFault(self.err, f"{os.strerror(self.err)} (injected at {self.op} #{n})")

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


@contextlib.contextmanager
def _armed(fs: FaultFS) -> Iterator[FaultFS]:
    """``fs`` as the seam, counting and failing from now on, until the block ends."""
    with _fs.use(fs):
        fs.arm()
        try:
            yield fs
        finally:
            fs.disarm()


@contextlib.contextmanager
def faults(call: str, error: int, *, nth: int = 1, times: int | None = 1) -> Iterator[FaultFS]:
    """Inside the block, the ``nth`` call named ``call`` that racefree makes fails with
    ``OSError(error)`` (an :class:`InjectedFault`), and so do the ``times - 1`` after it
    (``times=None``: every one from the ``nth`` on).

    ``call`` is one of ``"write"`` (any data write), ``"pwrite"``, ``"fsync"``,
    ``"fdatasync"``, ``"fsync_dir"``, ``"rename"``, ``"open"``, ``"close"``, ``"unlink"``,
    ``"link"``, ``"mkdir"``, ``"truncate"``, ``"fallocate"``; ``error`` is an errno
    number (``errno.ENOSPC``, ``errno.EDQUOT``, ``errno.EIO``). Yields the
    :class:`FaultFS`: ``fired`` says how many calls failed, ``count(call)`` how many
    were made. Calls happen for real otherwise. Not thread-safe against another
    ``faults`` or recording in this process; threads inside the block are covered.
    """
    if not isinstance(error, int) or error <= 0:
        raise ValueError(f"error must be an errno number such as errno.ENOSPC, not {error!r}")
    if call not in CALLS:
        raise ValueError(f"no fault injection for {call!r}; one of {sorted(CALLS)}")
    with _armed(FaultFS(call, nth, error, times=times, ops=CALLS[call])) as fs:
        yield fs


@contextlib.contextmanager
def count_calls() -> Iterator[FaultFS]:
    """Count the calls racefree makes inside the block (``fs.count("fsync")``), failing none:
    how a test learns how many calls an operation makes, to fail each in turn."""
    with _armed(FaultFS(None)) as fs:
        yield fs
