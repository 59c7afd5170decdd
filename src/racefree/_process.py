"""Who a process is and whether it still runs: pid, start time, boot id, pid namespace.

A pid alone does not name a process: pids are reused. The start time (Linux:
field 22 of ``/proc/<pid>/stat``) tells a recycled pid from the original, but
only on the same boot of the same kernel and in the same pid namespace, so
those are read here too. Used by lock-file owner records (``racefree.lockfile``)
and by :func:`racefree.sweep` (whose temp files name their writer's pid). Reads
go through the seam; nothing here writes.
"""

from __future__ import annotations

import os
import sys

from racefree import _fs

__all__ = [
    "EXITED_STATES", "boot_id", "own_start_time", "pid_alive", "pid_namespace", "proc_stat",
    "start_time",
]

_LINUX = sys.platform.startswith("linux")


def _read_proc(path: str) -> bytes | None:
    try:
        return _fs.read_file(path)
    except OSError:
        return None


_boot_id: tuple[str | None] | None = None


def boot_id() -> str | None:
    """This kernel's boot id (Linux), None where there is none."""
    global _boot_id
    if _boot_id is None:
        raw = _read_proc("/proc/sys/kernel/random/boot_id") if _LINUX else None
        _boot_id = (raw.decode("ascii", "replace").strip() or None if raw else None,)
    return _boot_id[0]


def pid_namespace() -> int | None:
    """The id of this process's pid namespace (Linux), None where unknown."""
    if not _LINUX:
        return None
    try:
        return _fs.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


#: Process states (field 3 of ``/proc/<pid>/stat``) of a process that has exited:
#: a zombie (``Z``, not yet reaped by its parent) or one being reaped (``X``).
EXITED_STATES = (b"Z", b"X")


def proc_stat(pid: int) -> tuple[bytes, int] | None:
    """The state and start time of process ``pid`` from ``/proc/<pid>/stat`` (Linux).

    None where it cannot be read (not Linux, no ``/proc``, or the process is gone).
    """
    if not _LINUX:
        return None  # macOS: sysctl(KERN_PROC) would need ctypes; judged by age instead
    raw = _read_proc(f"/proc/{pid}/stat")
    if raw is None:
        return None
    # The command name (field 2) may contain spaces and ')': split after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0], int(fields[19])  # fields 3 and 22 overall (here from field 3)
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux).

    None where it cannot be read (not Linux, no ``/proc``, or the process is
    gone: a caller that must tell those apart checks :func:`pid_alive` after).
    """
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (maybe owned by another user)."""
    if sys.platform == "win32":  # pragma: no cover - untested platform
        # os.kill(pid, 0) would send CTRL_C_EVENT there: claim nothing, and
        # since no start time is read either, such locks are judged by age.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours to signal
    return True


_own: tuple[int, int | None] | None = None


def own_start_time() -> int | None:
    global _own
    pid = os.getpid()
    if _own is None or _own[0] != pid:  # recomputed in a forked child
        _own = (pid, start_time(pid))
    return _own[1]
