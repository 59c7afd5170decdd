"""The errors racefree raises.

A leaf module: it imports nothing from racefree. Every error derives from
:class:`RacefreeError` and, where one fits, from the builtin a caller would
already catch (``TimeoutError``, ``ValueError``, ``OSError``). Every error keeps
the path it is about and survives pickling, so it can cross a process boundary
(``multiprocessing``, ``concurrent.futures``) unchanged.
"""

from __future__ import annotations

import errno
import os

# typing is not imported at run time: ``import racefree`` stays cheap (annotations are strings).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _fspath(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


class RacefreeError(Exception):
    """The root of every error racefree raises on purpose."""


class LockTimeout(RacefreeError, TimeoutError):
    """The lock was not acquired within the timeout. Nothing is held."""

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = None) -> None:
        self.path = _fspath(path)
        self.timeout = timeout
        after = "" if timeout is None else f" after {timeout}s"
        super().__init__(f"timed out{after} waiting for the lock on {self.path}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt without calling __init__ (as pickle rebuilds any object): a subclass
        # whose __init__ takes other arguments (filelock's ``Timeout(lock_file)``
        # subclasses) still crosses a process boundary, e.g. out of a pool's worker.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
             ) -> BaseException:
    """An exception of ``cls`` with ``args`` and attributes ``state``, no ``__init__`` run."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class WouldBlock(RacefreeError):
    """``acquire_nowait()`` found the lock held by another owner. Nothing is held."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _fspath(path)
        super().__init__(f"the lock on {self.path} is held by another owner")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path,))


class LockLost(RacefreeError):
    """The holder lost its lock (it was reclaimed as stale, or its connection died).

    Raised at release; what the holder wrote while it believed it held the lock
    may have raced another holder. Fencing tokens let storage reject such writes.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str = "") -> None:
        self.path = _fspath(path)
        self.reason = reason
        msg = f"the lock on {self.path} was lost"
        super().__init__(f"{msg}: {reason}" if reason else msg)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


class CorruptFileError(RacefreeError, ValueError):
    """A file's contents are damaged. Nothing was changed or thrown away.

    ``offset`` is the byte offset of the damage, ``line`` its 1-based line,
    where known.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        detail: str,
        *,
        offset: int | None = None,
        line: int | None = None,
    ) -> None:
        self.path = _fspath(path)
        self.detail = detail
        self.offset = offset
        self.line = line
        where = []
        if offset is not None:
            where.append(f"byte offset {offset}")
        if line is not None:
            where.append(f"line {line}")
        at = f" at {', '.join(where)}" if where else ""
        super().__init__(f"{self.path}{at}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_corrupt, (type(self), self.path, self.detail, self.offset, self.line))


def _rebuild_corrupt(
    cls: type[CorruptFileError], path: str, detail: str, offset: int | None, line: int | None
) -> CorruptFileError:
    return cls(path, detail, offset=offset, line=line)


class ConflictError(RacefreeError):
    """``expect_version`` did not match the stored version. Nothing was written."""

    def __init__(self, key: str, expected: int | None, actual: int | None) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"version conflict on {key!r}: expected {expected}, found {actual}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.expected, self.actual))


class DurabilityError(RacefreeError, OSError):
    """An fsync (of a file or of a directory) failed.

    Whether the last write reached the disk is unknown: it may or may not be
    committed. The fsync is never retried (a second fsync can report success
    after the kernel dropped the dirty pages: PostgreSQL's "fsyncgate"), and
    an object that hit this error refuses further writes.
    """

    def __init__(self, path: str | os.PathLike[str], errno_: int, detail: str = "") -> None:
        self.path = _fspath(path)
        self.detail = detail
        text = f"fsync failed on {self.path} ({os.strerror(errno_)})"
        super().__init__(errno_, f"{text}: {detail}" if detail else text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.errno, self.detail))

    def __str__(self) -> str:
        return str(self.args[1])


class FormatError(RacefreeError, ValueError):
    """A path holds something racefree cannot open: not its format, or a newer version.

    ``offset`` is the byte offset of what could not be read, where known.
    """

    def __init__(
        self, path: str | os.PathLike[str], detail: str, *, offset: int | None = None
    ) -> None:
        self.path = _fspath(path)
        self.detail = detail
        self.offset = offset
        at = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"{self.path}{at}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_format, (type(self), self.path, self.detail, self.offset))


def _rebuild_format(
    cls: type[FormatError], path: str, detail: str, offset: int | None
) -> FormatError:
    return cls(path, detail, offset=offset)


class LimitError(RacefreeError, ValueError):
    """A value passes one of a store's limits (see ``docs/store.md``). Nothing was written.

    ``what`` names the limit (``"id"``, ``"version"``, ``"depth"``, ``"document"``),
    ``limit`` is its value and ``actual`` what was given. Both backends raise it,
    with the same message, before anything is written.
    """

    def __init__(self, what: str, limit: int, actual: int, detail: str) -> None:
        self.what = what
        self.limit = limit
        self.actual = actual
        self.detail = detail
        super().__init__(detail)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.limit, self.actual, self.detail))


class UnsafePathError(RacefreeError, PermissionError):
    """racefree refused to follow, replace, adopt or trust what is at a path.

    Raised before anything is written: the entry is a symbolic link, a FIFO, a
    device or another user's file where racefree's rule (see
    ``docs/security.md``) does not let it use one. ``reason`` says which.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = _fspath(path)
        self.reason = reason
        super().__init__(errno.EACCES, f"{self.path}: {reason}")
        self.filename = self.path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ReadOnlyError(RacefreeError, PermissionError):
    """A write through a store opened with ``readonly=True``. Nothing was written."""

    def __init__(self, path: str | os.PathLike[str], detail: str = "") -> None:
        self.path = _fspath(path)
        self.detail = detail
        super().__init__(errno.EROFS, detail or "the store is open read-only")
        self.filename = self.path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.detail))

    def __str__(self) -> str:
        return f"{self.path}: {self.detail or 'the store is open read-only'}"


class InheritedLockError(RacefreeError, RuntimeError):
    """A process forked while its parent held a write lock tried to write under that lock.

    The lock belongs to the parent (it is released when the parent lets go, not
    when the child does); a write in the child would run unlocked alongside the
    parent's. Raised before anything is written. Once the child has left the
    locked call it forked in, it takes the lock of its own at its next write.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _fspath(path)
        super().__init__(
            f"{self.path}: this process was forked while its parent held the store's write"
            " lock; it cannot write until it has left the locked call it was forked in"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path,))


class ConnectionLost(RacefreeError, ConnectionError):
    """The connection to a database server failed during an operation (PostgreSQL backend).

    ``maybe_committed`` is False when the write was certainly not committed
    (the server rolls back an unfinished transaction when its session ends);
    True when the connection failed while the commit itself was in flight, so
    the write may or may not be there: read it back before writing it again.
    """

    def __init__(self, url: str, detail: str = "", *, maybe_committed: bool = False) -> None:
        self.url = url
        self.detail = detail
        self.maybe_committed = maybe_committed
        text = f"connection to {url} lost"
        if detail:
            text = f"{text}: {detail}"
        if maybe_committed:
            text = f"{text} (the write may or may not have been committed)"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_connection_lost, (type(self), self.url, self.detail, self.maybe_committed))


def _rebuild_connection_lost(
    cls: type[ConnectionLost], url: str, detail: str, maybe_committed: bool
) -> ConnectionLost:
    return cls(url, detail, maybe_committed=maybe_committed)
