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

from racefree import _fork, _fs
from racefree.lock.registry import Entry, open_lock_file
from racefree.lock.request import Request, worker_fds

__all__ = ["start_kernel_wait"]

# Reopening /proc/self/fd/N gives a new open file description of the very
# inode the entry locks, even if the name was replaced since (see _reopen()).
_PROC_FD = sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")

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
    fd = open_lock_file(entry.path)  # no mode: the identity below says it is the file bound
    st = _fs.fstat(fd)
    if (st.st_dev, st.st_ino) != entry.key:
        _fs.close(fd)
        raise OSError(errno.ESTALE, "the lock file was replaced while in use", entry.path)
    return fd


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
    worker_fds.add(fd)
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
        worker_fds.discard(fd)
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
    fds = list(worker_fds)
    worker_fds.clear()
    for fd in fds:
        # EBADF: the child's copy is gone already, so there is nothing to release.
        with contextlib.suppress(OSError):
            _fs.close(fd)


_fork.on_child(_after_fork_child)  # before any use in the child: see racefree._fork
