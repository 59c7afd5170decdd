"""Owner records of lock files: who holds one, and whether that owner is provably dead.

A :class:`~racefree.LockFile` holds a one-line JSON *owner record*::

    {"boot_id": "5b6c...", "created": 1764236400.25, "host": "web-1", "pid": 4242,
     "pid_ns": 4026531836, "racefree": 1, "start_time": 1234567, "token": 17}

``start_time`` is the process start time (Linux: field 22 of ``/proc/<pid>/stat``,
clock ticks since boot), so a recycled pid is told from the original owner
(pitfall L6). It is only comparable on the same boot of the same kernel and in
the same pid namespace, so those are part of the record: ``host`` + ``boot_id``
+ ``pid_ns`` form the owner's *locality*. Only a record from our own locality
can be judged by its pid; any other record (another host, a rebooted machine, a
container with its own pid namespace, macOS where the start time is not read)
is judged by its age instead (see ``lockfile.disk``).

A file at a lock's path that holds no valid record is never trusted for a pid
judgement. It is judged by its age only if it is still racefree's own (a record
with impossible values, :func:`impossible`, or any content beside the lock's
token file); anything else is a file that is not a lock, and is never reclaimed
(``LockFile`` raises ``FormatError``).
"""

from __future__ import annotations

import enum
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from racefree._process import (
    EXITED_STATES,
    boot_id,
    own_start_time,
    pid_alive,
    pid_namespace,
    proc_stat,
    start_time,
)

__all__ = [
    "FORMAT", "OwnerRecord", "Verdict", "decode", "encode", "judge", "own_record", "pid_alive",
    "start_time",
]

#: The version of the owner record's layout (the ``racefree`` field).
FORMAT = 1
#: Records larger than this are not ours: they are judged as malformed.
MAX_RECORD = 4096
#: The largest pid a record may name (pid_t is a signed 32-bit int); larger is malformed.
MAX_PID = (1 << 31) - 1

class Verdict(enum.Enum):
    """What an owner record proves about its owner."""

    ALIVE = "alive"  # our locality, the pid runs and started when the record says
    DEAD = "dead"  # our locality, and the pid is gone or was reused (L6)
    UNKNOWN = "unknown"  # another locality, or a malformed record: judge by age


@dataclass(frozen=True)
class OwnerRecord:
    """A decoded owner record."""

    pid: int
    host: str
    boot_id: str | None
    pid_ns: int | None
    start_time: int | None
    token: int
    created: float


def own_record(token: int) -> dict[str, Any]:
    """The owner record of the calling process for a hold with fencing ``token``."""
    return {
        "boot_id": boot_id(),
        "created": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_ns": pid_namespace(),
        "racefree": FORMAT,
        "start_time": own_start_time(),
        "token": token,
    }


def encode(record: dict[str, Any]) -> bytes:
    """The bytes of an owner record: one line of JSON, keys sorted."""
    return (json.dumps(record, sort_keys=True, separators=(", ", ": ")) + "\n").encode()


def _nat(value: object) -> int | None:
    """``value`` if it is a non-negative int (not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def decode(data: bytes) -> OwnerRecord | None:
    """The owner record in ``data``, or None if it is not a valid one (malformed, L6).

    A malformed record is never trusted for a pid judgement; the caller treats
    it as "owner unknown" and judges the lock by its age (filelock #476 #534).
    """
    if len(data) > MAX_RECORD:
        return None
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: "[[[[..." nests deeper than the parser goes; a record is flat.
        return None
    if not isinstance(obj, dict) or obj.get("racefree") != FORMAT:
        return None
    pid, token = _nat(obj.get("pid")), _nat(obj.get("token"))
    if pid is not None and pid > MAX_PID:
        return None  # no process has it (pid_t is 32 bits): kill(pid, 0) would overflow
    host, boot = obj.get("host"), obj.get("boot_id")
    ns, start, created = obj.get("pid_ns"), obj.get("start_time"), obj.get("created")
    if not pid or token is None or not isinstance(host, str):
        return None
    if not (boot is None or isinstance(boot, str)):
        return None
    if (ns is not None and _nat(ns) is None) or (start is not None and _nat(start) is None):
        return None
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        return None
    try:
        when = float(created)  # OverflowError: an int past any float
    except OverflowError:
        return None
    if not math.isfinite(when):
        return None
    return OwnerRecord(pid, host, boot, ns, start, token, when)


def impossible(data: bytes) -> bool:
    """Whether ``data`` is an owner record in racefree's format whose values no process could have.

    Every field is there with its type, but a pid past any pid (``pid_t`` is 32
    bits) or a time past any float: a record racefree's format describes, from
    a writer that was wrong, not a data file. Such a record is judged by its
    age, like any record that proves nothing about its owner.
    """
    if len(data) > MAX_RECORD or decode(data) is not None:
        return False
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not isinstance(obj, dict) or obj.get("racefree") != FORMAT:
        return False
    pid, token, created = obj.get("pid"), obj.get("token"), obj.get("created")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or _nat(token) is None:
        return False
    if not isinstance(obj.get("host"), str):
        return False
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        return False
    far = not math.isfinite(created) if isinstance(created, float) else abs(created) > 1e308
    return pid > MAX_PID or far


def same_locality(rec: OwnerRecord) -> bool:
    """Whether ``rec``'s pid and start time mean the same process here as there."""
    return (
        rec.host == socket.gethostname()
        and rec.boot_id == boot_id()
        and rec.pid_ns == pid_namespace()
    )


def judge(rec: OwnerRecord | None) -> Verdict:
    """What ``rec`` proves about its owner, looked at now.

    DEAD only on proof: same locality and the pid is not running, or it is
    running but started at another time than the record says (a recycled pid,
    L6), or it is the owner itself but has exited and not been reaped yet (a
    zombie keeps its pid and start time until its parent waits for it, and can
    never refresh or release the lock). ALIVE only on proof too. Everything
    else is UNKNOWN.
    """
    if rec is None or not same_locality(rec):
        return Verdict.UNKNOWN
    if not pid_alive(rec.pid):
        return Verdict.DEAD
    if rec.start_time is None:
        return Verdict.UNKNOWN
    now = proc_stat(rec.pid)
    if now is None:
        # /proc/<pid>/stat vanished between kill(0) and the read: the process exited.
        return Verdict.DEAD if not pid_alive(rec.pid) else Verdict.UNKNOWN
    state, started = now
    if started != rec.start_time or state in EXITED_STATES:
        return Verdict.DEAD
    return Verdict.ALIVE
