"""What the filelock compat module's locks share: ``Timeout``, the proxies, the common state.

The public names are re-exported by :mod:`racefree.compat.filelock`, whose
docstring says what the module offers and where it differs from filelock.
"""

from __future__ import annotations

import os
import warnings
from types import TracebackType
from typing import Any, Generic, TypeVar

import racefree
from racefree._errors import LockTimeout
from racefree.compat._holds import (
    Holds,
    check_blocking,
    check_poll_interval,
    finished_task_owners,
    seconds,
    wait_for,
)
from racefree.lock.registry import current_owner

__all__ = ["AcquireReturnProxy", "Common", "Timeout"]

_T = TypeVar("_T")

_PUBLIC = "racefree.compat.filelock"


class Timeout(LockTimeout):
    """filelock's ``Timeout``: the lock was not acquired in time; nothing is held.

    Also a :class:`racefree.LockTimeout` and a ``TimeoutError``. ``lock_file``
    is the lock's path; it pickles.
    """

    __module__ = _PUBLIC

    def __init__(self, lock_file: str, timeout: float | None = None) -> None:
        super().__init__(lock_file, timeout)

    @property
    def lock_file(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return f"The file lock '{self.path}' could not be acquired."

    def __repr__(self) -> str:
        return f"Timeout({self.path!r})"


class AcquireReturnProxy(Generic[_T]):
    """What ``acquire()`` returns: ``with lock.acquire():`` releases on exit (no second acquire)."""

    __module__ = _PUBLIC

    def __init__(self, lock: _T) -> None:
        self.lock = lock

    def __enter__(self) -> _T:
        return self.lock

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()  # type: ignore[attr-defined]


class Common:
    """The state and the properties both the sync and the async locks have."""

    _lock: Any  # racefree.FileLock or racefree.LockFile

    def __init__(
        self, lock_file: str | os.PathLike[str], timeout: float, mode: int | None,
        thread_local: bool, blocking: bool, is_singleton: bool, poll_interval: float,
        lifetime: float | None,
    ) -> None:
        path = os.fspath(lock_file)
        if not isinstance(path, str):
            raise TypeError("lock_file must be a str or os.PathLike[str]")
        self._lock_file = path
        self._timeout = seconds("timeout", timeout)
        self._blocking = check_blocking(blocking)
        check_poll_interval(poll_interval)
        self._poll_interval = float(poll_interval)
        self._thread_local = bool(thread_local)
        self._is_singleton = bool(is_singleton)
        self._holds = Holds()
        self._lock = self._make(path, mode, lifetime)

    def _make(self, path: str, mode: int | None, lifetime: float | None) -> Any:
        if lifetime is not None:
            # As filelock does for its kernel locks: a kernel lock cannot be broken by age.
            warnings.warn(
                f"lifetime is ignored by {type(self).__name__}: a kernel lock dies with its"
                " holder, never by age", stacklevel=4,
            )
        return racefree.FileLock(path, mode=mode)

    @property
    def lock_file(self) -> str:
        """The path of the lock file, as given."""
        return self._lock_file

    @property
    def timeout(self) -> float:
        """The default timeout in seconds; negative waits forever."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = seconds("timeout", value)

    @property
    def blocking(self) -> bool:
        return self._blocking

    @blocking.setter
    def blocking(self, value: bool) -> None:
        self._blocking = check_blocking(value)

    @property
    def poll_interval(self) -> float:
        """Accepted for filelock's sake; racefree waits in the kernel, never polls."""
        return self._poll_interval

    @poll_interval.setter
    def poll_interval(self, value: float) -> None:
        check_poll_interval(value)
        self._poll_interval = float(value)

    @property
    def is_singleton(self) -> bool:
        return self._is_singleton

    def is_thread_local(self) -> bool:
        return self._thread_local

    @property
    def is_locked(self) -> bool:
        """Whether this object holds the lock: for the current thread or task, or (with
        ``thread_local=False``) for any of them."""
        if self._thread_local:
            return self._holds.count(current_owner()) > 0
        return self._holds.total() > 0

    @property
    def lock_counter(self) -> int:
        """Holds taken through this object and not released (the current owner's, or all)."""
        if self._thread_local:
            return self._holds.count(current_owner())
        return self._holds.total()

    def _timeouts(
        self, timeout: float | None, poll_interval: float | None, blocking: bool | None
    ) -> tuple[bool, float | None]:
        check_poll_interval(poll_interval)
        blocking = self._blocking if blocking is None else check_blocking(blocking)
        t = self._timeout if timeout is None else seconds("timeout", timeout)
        return blocking, (wait_for(t) if blocking else 0.0)

    def _taken(self) -> None:
        self._holds.add(current_owner())

    def _release(self, force: bool) -> None:
        owner = current_owner()
        n = self._holds.count(owner)
        if n == 0:
            done = finished_task_owners(self._holds)
            if done:
                raise RuntimeError(
                    f"release of {self._lock_file}: it is held by a finished task (before"
                    " Python 3.12, asyncio.wait_for() runs its argument in a task of its"
                    " own); pass timeout= to acquire() instead"
                )
            if not self._thread_local and self._holds.total():
                raise RuntimeError(
                    f"release of {self._lock_file}: another thread or task holds it; racefree"
                    " locks are released by the thread or task that acquired them"
                )
            return  # as filelock: releasing a lock this owner does not hold does nothing
        for _ in range(n if force else 1):
            self._lock.release()
            self._holds.drop(owner)
