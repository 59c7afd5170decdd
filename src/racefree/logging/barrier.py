"""An asymmetric memory barrier between processes: Linux's ``membarrier(2)``.

A log's writers append without the lock (:mod:`racefree.logging.sole`): each
stores "in a record" in its slot of the control block, then loads the *fence*
word, and writes only if that word is unchanged. A process that takes the lock
exclusively stores a new fence word, then loads "in a record", and waits while
one is set. Each side stores, then loads what the other stores: without a full
memory barrier between the two, a processor may make the load before its own
store is visible to the other (a store buffer), and both would go ahead. Python
code cannot issue a barrier instruction, and the writer's record is the hot
path, so the barrier is asymmetric: the rare side (the exclusive holder) calls
``membarrier``, which runs a full barrier on every processor running a process
registered for it (a writer's process registers once), and on its own. Either the
writer's store is then visible to the exclusive holder's load, or the writer's
load comes after the barrier and sees the new fence word.

The writer's own stores and loads are calls into C (a ``memoryview`` of the
mapped block) that the compiler cannot reorder across; the processor may, which
is what the kernel's barrier covers. May import nothing of racefree.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

__all__ = ["fence", "register"]

#: membarrier's system-call number per machine (Linux's tables); elsewhere: none.
_NR: dict[str, int] = {
    "x86_64": 324, "aarch64": 283, "riscv64": 283, "ppc64le": 365, "ppc64": 365,
    "s390x": 356,
}
_CMD_GLOBAL = 1 << 0  # every running thread; slow (an RCU grace period) but needs no registration
_CMD_GLOBAL_EXPEDITED = 1 << 1  # processors running registered processes, at once
_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2

_syscall: Any = None  # libc's syscall(), loaded on first use
#: The process id that registered (0: none yet; -1: registration is impossible here).
_registered = 0


def _call(cmd: int) -> None:
    """``membarrier(cmd, 0, 0)``; OSError when the system has none or refuses it."""
    global _syscall
    nr = _NR.get(platform.machine()) if sys.platform.startswith("linux") else None
    if nr is None:
        raise OSError(38, "membarrier is not available on this system")  # ENOSYS
    if _syscall is None:
        import ctypes  # only where a log has a single writer (or a rotation fences one)

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
        fn.restype = ctypes.c_long
        fn.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_int)
        _syscall = (fn, ctypes)
    fn, ctypes = _syscall
    if fn(nr, cmd, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def register() -> bool:
    """Whether another process's :func:`fence` runs a barrier on this process's processors.

    Registers this process once (again in a forked child); False where the
    system has no ``membarrier`` or refuses it (a seccomp filter): then this
    process's log writers keep taking the lock for each record.
    """
    global _registered
    pid = os.getpid()
    if _registered == pid:
        return True
    if _registered == -1:
        return False
    try:
        _call(_CMD_REGISTER_GLOBAL_EXPEDITED)
    except (OSError, AttributeError, ImportError):
        _registered = -1
        return False
    _registered = pid
    return True


def fence() -> bool:
    """A full memory barrier on every processor running a registered process, and here.

    ``MEMBARRIER_CMD_GLOBAL_EXPEDITED``, else ``MEMBARRIER_CMD_GLOBAL`` (slower,
    needs no registration). False when no barrier could be made (no ``membarrier`` in this process's
    system or sandbox, where another process had one): the caller must then
    wait for the writer to leave its lock-free mode instead.
    """
    for cmd in (_CMD_GLOBAL_EXPEDITED, _CMD_GLOBAL):
        try:
            _call(cmd)
        except (OSError, AttributeError, ImportError):
            continue
        return True
    return False
