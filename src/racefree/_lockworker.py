"""The worker threads that wait in ``flock`` for a FileLock owner that may give up.

An owner with a timeout, or an asyncio task, cannot block in ``flock`` itself:
a worker thread does, on a fresh open file description of the lock file's
inode, and :meth:`Request.settle` decides under a lock whether the owner or the
worker owns the outcome. An owner that gave up leaves the grant to the worker,
which hands it straight back (pitfall L9); a later owner may adopt a wait still
blocked in the kernel. Workers are pooled: an idle one is reused, and it exits
after ``_IDLE_SECONDS``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import sys
import threading
from collections.abc import Callable

from . import _fs
from ._lockregistry import LOCK_UN, Entry, open_lock_file

__all__ = ["Request", "start_kernel_wait"]

# Reopening /proc/self/fd/N gives a new open file description of the very
# inode the entry locks, even if the name was replaced since (see _reopen()).
_PROC_FD = sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")

# -- the kernel wait in a worker thread ----------------------------------------------

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
            _worker_fds.discard(self.fd)
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


def _reopen(entry: Entry) -> int:
    """A new open file description of the entry's inode.

    The worker must not lock ``entry.fd`` itself: if its owner gave up and it
    got the lock anyway, unlocking ``entry.fd`` could take the lock from the
    next owner of this process, who locked through the same description.
    """
    if _PROC_FD:
        try:
            return _fs.open(f"/proc/self/fd/{entry.fd}", os.O_RDONLY)
        except OSError:  # pragma: no cover - /proc not mounted: fall back to the name
            pass
    fd = open_lock_file(entry.path)
    st = _fs.fstat(fd)
    if (st.st_dev, st.st_ino) != entry.key:
        _fs.close(fd)
        raise OSError(errno.ESTALE, "the lock file was replaced while in use", entry.path)
    return fd


# Descriptors of workers still waiting in the kernel (closed in a forked child).
_worker_fds: set[int] = set()
# The pool: idle workers block on _jobs; _idle counts them (under _pool_lock).
_IDLE_SECONDS = 10.0
_pool_lock = threading.Lock()
_jobs: queue.SimpleQueue[Request] = queue.SimpleQueue()
_idle = 0


def start_kernel_wait(entry: Entry, op: int, notify: Callable[[], None]) -> Request:
    """Hand a blocking ``flock(op)`` to a worker; ``notify`` is called when it ends."""
    global _idle
    # Only the busy owner gets here, so at most one owner is attached at a time.
    previous = entry.request
    if previous is not None and previous.adopt(op, notify):
        return previous
    fd = _reopen(entry)
    req = entry.request = Request(fd, op, notify)
    _worker_fds.add(fd)
    try:
        with _pool_lock:
            if _idle:
                _idle -= 1
                _jobs.put(req)
                return req
        threading.Thread(
            target=_worker, args=(req,), name="racefree-lock-wait", daemon=True
        ).start()
    except BaseException:
        _worker_fds.discard(fd)
        _fs.close(fd)
        raise
    return req


def _worker(req: Request) -> None:
    global _idle
    while True:
        req.run()
        with _pool_lock:
            _idle += 1
        try:
            req = _jobs.get(timeout=_IDLE_SECONDS)
        except queue.Empty:
            with _pool_lock:
                # A job handed to "an idle worker" just now may be ours to run.
                try:
                    req = _jobs.get_nowait()
                except queue.Empty:
                    _idle -= 1
                    return


def _after_fork_child() -> None:
    """The child has none of the parent's workers; it closes their descriptors' copies."""
    global _pool_lock, _jobs, _idle
    _pool_lock = threading.Lock()
    _jobs = queue.SimpleQueue()
    _idle = 0
    fds = list(_worker_fds)
    _worker_fds.clear()
    for fd in fds:
        # EBADF: the child's copy is gone already, so there is nothing to release.
        with contextlib.suppress(OSError):
            _fs.close(fd)


os.register_at_fork(after_in_child=_after_fork_child)
