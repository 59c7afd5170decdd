"""One blocking ``flock`` that a worker thread runs for an owner that may give up.

:meth:`Request.settle` (the owner's side) and :meth:`Request.run` (the worker's
side) decide under one mutex who owns the outcome, so that an owner that timed
out or was cancelled never holds the lock (pitfall L9): the worker hands a late
grant straight back. ``racefree.lock.worker`` runs requests; the registry keeps
the last one of each lock file, so that a later owner can adopt a wait still
blocked in the kernel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from fcntl import LOCK_UN

from racefree import _fs

__all__ = ["ABANDONED", "DONE", "FAILED", "GRANTED", "PENDING", "Request", "worker_fds"]

#: Descriptors of requests still waiting in the kernel (closed in a forked child).
worker_fds: set[int] = set()

# ABANDONED: the owner gave up while the worker still waits in the kernel;
# DONE: the worker has finished with it (handed the lock back, or failed).
PENDING, GRANTED, FAILED, ABANDONED, DONE = range(5)


class Request:
    """One blocking ``flock`` run by a worker thread for an owner that may give up."""

    __slots__ = ("error", "fd", "lock", "notify", "op", "state")

    def __init__(self, fd: int, op: int, notify: Callable[[], None]) -> None:
        self.lock = threading.Lock()
        self.fd = fd
        self.op = op
        self.state = PENDING
        self.error: BaseException | None = None
        self.notify = notify

    def settle(self) -> int | None:
        """The owner's side, once it stops waiting: the descriptor now locked, or None.

        None means the owner gave up in time: the worker will hand the lock back
        if the kernel grants it later. An error of the worker is raised here.
        """
        with self.lock:
            if self.state == PENDING:
                self.state = ABANDONED
                return None
            if self.state == GRANTED:
                return self.fd
        if self.error is None:  # pragma: no cover - FAILED always carries its error
            raise RuntimeError("lock worker failed without an error")
        raise self.error

    def give_back(self) -> None:
        """Release a lock the owner was granted but no longer wants (cancelled)."""
        try:
            _fs.flock(self.fd, LOCK_UN)
        finally:
            _fs.close(self.fd)

    def adopt(self, op: int, notify: Callable[[], None]) -> bool:
        """Take over this wait if its owner gave up and the worker still waits for ``op``.

        A retry loop with short timeouts then reuses one blocked worker instead
        of leaving one behind per attempt.
        """
        with self.lock:
            if self.state != ABANDONED or self.op != op:
                return False
            self.state = PENDING
            self.notify = notify
            return True

    def run(self) -> None:
        """The worker's side: block in flock, then hand the result over (or back)."""
        try:
            _fs.flock(self.fd, self.op)
            err: BaseException | None = None
        except BaseException as exc:  # handed to the owner by settle()
            err = exc
        with self.lock:
            worker_fds.discard(self.fd)
            if self.state == ABANDONED:
                # The owner timed out or was cancelled: hand the lock straight
                # back, so an owner that gave up never holds anything (L9).
                self.state = DONE
                try:
                    if err is None:
                        _fs.flock(self.fd, LOCK_UN)
                finally:
                    _fs.close(self.fd)
                return
            if err is None:
                self.state = GRANTED
            else:
                self.state = FAILED
                self.error = err
                _fs.close(self.fd)
        self.notify()
