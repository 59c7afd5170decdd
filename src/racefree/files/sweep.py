"""``sweep``: removing the temp files that killed writers left behind (pitfall W5).

Every temp file racefree writes is named ``.{name}.{pid}.{random}.rftmp``
(``files.atomic``, and the lock files made with ``mode=``): the pid says whose
it is. A temp is removed only when that writer is provably dead, so sweeping is
safe beside running writers.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys

from racefree import _fs, _trust
from racefree._process import pid_alive, start_time

__all__ = ["sweep"]

# ``.{name}.{pid}.{8 hex}.rftmp``: the pid lets sweep() tell a dead writer's temp
# from a live one's.
_TEMP_RE = re.compile(r"\A\..*\.([0-9]{1,10})\.[0-9a-f]{8}\.rftmp\Z", re.DOTALL)
# How far apart a process's start time (from /proc, whole seconds at boot) and a
# file's mtime may be and still be taken for "the same moment" (see _writer_alive).
_CLOCK_SLACK = 2.0


def _boot_time() -> float | None:
    try:
        text = _fs.read_file("/proc/stat").decode("ascii", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None  # pragma: no cover - every Linux /proc/stat has btime


def _writer_alive(pid: int, mtime: float, boot: float | None) -> bool:
    # The pid and start-time probes are LockFile's (the same question: is that owner alive?).
    if pid > 0x7FFFFFFF or not pid_alive(pid):  # no such pid can exist, or none does now
        return False
    ticks = start_time(pid) if boot is not None else None
    if boot is None or ticks is None:
        return True  # the pid is in use and we cannot tell by whom: keep the temp
    # PID reuse: a process that started after the temp was last written cannot be
    # the one that wrote it, so the writer is dead. Within the clock slack, keep it.
    return mtime >= boot + ticks / os.sysconf("SC_CLK_TCK") - _CLOCK_SLACK


def sweep(directory: str | os.PathLike[str]) -> list[str]:
    """Remove the temp files in ``directory`` left by killed writers; return their paths.

    Only racefree temps (``.{name}.{pid}.{random}.rftmp``, regular files) are
    considered, and only those whose writer is dead: no process has that pid, or
    (Linux) the process that has it started after the temp was last written (pid
    reuse). Temps of live writers are never touched, so ``sweep`` is safe to run
    at any time, beside running writers. Not recursive; removals are not fsynced
    (a temp that reappears after a power loss is swept again).

    In a shared directory (sticky, writable by others, such as ``/tmp``) only the
    caller's and the directory owner's temps are considered: another user's file
    is never removed, whatever its name.

    Limits: pids are those of this host (do not sweep a directory that writers on
    another host or in another pid namespace use while they run); where process
    start times are unknown (macOS) a temp whose pid is in use is kept.
    """
    # Resolved under the trust rule: a planted link on the way is refused, not followed.
    where = _trust.resolve(os.fspath(directory))
    dirname, dir_st = where.path, where.st
    if dir_st is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), dirname)
    boot: float | None = None
    boot_read = False
    removed: list[str] = []
    for name in sorted(_fs.listdir(dirname)):
        match = _TEMP_RE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        path = os.path.join(dirname, name)
        try:
            st = _fs.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            continue  # its writer published it or removed it meanwhile
        if not stat.S_ISREG(st.st_mode) or pid == 0 or not _trust.trusted(st, dir_st):
            continue  # not a temp, or another user's file in a shared directory: not ours
        if not boot_read:
            boot, boot_read = (_boot_time() if sys.platform.startswith("linux") else None), True
        if _writer_alive(pid, st.st_mtime, boot):
            continue
        try:
            _fs.unlink(path)
        except FileNotFoundError:
            continue  # another sweep removed it first
        removed.append(path)
    return removed

