"""Logs under ``racefree check``: telling a log from other files, checking and repairing it.

A file is a log (:class:`~racefree.AppendLog`'s segment) if its first line is a
log header, and also, so that a damaged log is reported as damaged rather than
skipped as "not a racefree file", if its first line still names itself a log
header, or is shaped like a frame (``<len> <crc32> ``), or a valid frame
follows it, or a log snapshot lies beside it (``X.snapshot``). A valid frame
(its length and CRC-32 agree) does not happen by chance in other files.

Repairs write only in a directory nobody but the caller or root can change
(``report.not_held``); elsewhere the report says why nothing was repaired.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from racefree import _fs, _trust
from racefree._errors import CorruptFileError, FormatError, UnsafePathError
from racefree.check.report import Found, not_held

if TYPE_CHECKING:
    from racefree.log.appendlog import AppendLog

__all__ = ["HEAD", "SALVAGE_HINT", "check_log", "looks_like_log", "truncate_torn_tail"]

#: How much of a file is read to tell what it is.
HEAD = 4096
SALVAGE_HINT = " (racefree check --repair salvages every intact record)"
_FRAME_SHAPE = re.compile(rb"\d{1,12} [0-9a-f]{8} ")
_SNAPSHOT_TAG = b'{"racefree_log_snapshot":'


def looks_like_log(path: str, head: bytes) -> bool:
    """Whether the file at ``path``, whose first bytes are ``head``, is a log (whole or damaged)."""
    from racefree.log.frame import find_next
    from racefree.log.scan import read_header

    try:
        return read_header(head) is not None
    except (ValueError, CorruptFileError, FormatError):
        pass
    line = head.split(b"\n", 1)[0]
    if b'{"racefree_log":' in line or _FRAME_SHAPE.match(line):
        return True  # a header that lost a bit of its frame, or of its JSON
    if find_next(head, 0) >= 0:
        return True  # a destroyed first line, and records after it
    return _snapshot_beside(path)


def _snapshot_beside(path: str) -> bool:
    try:
        fd, _st, _created = _trust.open_own(path + ".snapshot", os.O_RDONLY, create=False)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnsafePathError):
        return False
    try:
        return _fs.pread(fd, len(_SNAPSHOT_TAG) + 20, 0).find(_SNAPSHOT_TAG) >= 0
    finally:
        _fs.close(fd)


def check_log(path: str, repair: bool) -> Found:
    """Check the log at ``path`` (``AppendLog.check``); with ``repair``, cut or salvage it."""
    from racefree.log.appendlog import AppendLog

    log = AppendLog(path)
    try:
        try:
            report = log.check()
        except UnsafePathError as exc:
            # Its snapshot or lock is a link, a FIFO or another user's file: the log
            # cannot be used as it is, and nothing of racefree's touches it.
            return Found(path, "log", False, f"cannot be used: {exc}")
        except (CorruptFileError, FormatError) as exc:
            if repair:
                refused = not_held(os.path.dirname(path))
                if refused is not None:
                    return Found(path, "log", False, f"{exc}; not repaired: {refused}")
                return _salvage_log(path)
            return Found(path, "log", False, str(exc) + SALVAGE_HINT)
        detail = (f"{report.records} records (sequence {report.first}..{report.next - 1}), "
                  f"{report.size} bytes")
        if report.snapshot_upto is not None:
            detail += f", snapshot up to {report.snapshot_upto}"
        if not report.torn:
            return Found(path, "log", True, detail)
        torn = (f"{detail}; an incomplete last record of {report.torn} bytes (invisible; the "
                "next append or --repair removes it)")
        if not repair:
            return Found(path, "log", True, torn)
        refused = not_held(os.path.dirname(path))
        if refused is not None:
            return Found(path, "log", True, f"{torn}; not repaired: {refused}")
        try:
            cut = truncate_torn_tail(log, report.size - report.torn, report.size)
        except (CorruptFileError, FormatError) as exc:
            return Found(path, "log", False, str(exc))
        if not cut:
            return Found(path, "log", True, f"{detail}; the file changed before the repair (an "
                         "append repaired it, or it was replaced): nothing was cut")
        return Found(path, "log", True, f"{detail}; removed an incomplete last record of "
                     f"{report.torn} bytes", repaired=True)
    finally:
        log.close()


def _salvage_log(path: str) -> Found:
    from racefree.log.appendlog import AppendLog
    from racefree.log.salvage import apply

    plan, saved = apply(path)
    if plan.problem is not None or saved is None:
        why = plan.problem or "nothing could be salvaged"
        return Found(path, "log", False, f"not repaired, nothing changed: {why}")
    with AppendLog(path) as log:
        try:
            report = log.check()
        except (CorruptFileError, FormatError) as exc:
            return Found(path, "log", False, f"salvaged into a log that does not check: {exc}",
                         lost=plan.report())
    return Found(path, "log", True, f"salvaged: kept {plan.records} records (sequence "
                 f"{report.first}..{report.next - 1}); the damaged file was copied to {saved}",
                 repaired=True, lost=plan.report())


def truncate_torn_tail(log: AppendLog, keep: int, size: int) -> bool:
    """Cut the log back to ``keep`` bytes, under its writers' lock, if it is still ``size``.

    True if it cut; False if the file changed meanwhile (nothing was cut).

    Re-checked under the lock: an append that landed meanwhile means the tail
    was repaired by its writer, and nothing is cut. The check and the cut are
    made on one descriptor, opened once without following a link: the path is
    never opened again between them, so a file swapped in at the path (a link
    to another file, pitfall T2) is at most checked, never cut unless it is
    this very log with this very torn tail.
    """
    from racefree.log.locking import LogLock

    # ``{log}.lock`` is the lock every appender holds (docs/log.md): while we hold it
    # no append can land between the check and the cut.
    with LogLock(log.path):
        fd, st, _created = _trust.open_own(log.path, os.O_RDWR, create=False)
        try:
            if _torn_tail(log.path, fd) != (keep, size) or st.st_size != size:
                return False
            _fs.ftruncate(fd, keep)
            _fs.fsync(fd)
            return True
        finally:
            _fs.close(fd)


def _torn_tail(path: str, fd: int) -> tuple[int, int] | None:
    """``(end of the last valid frame, file size)`` of the log open at ``fd``; None if none.

    None when ``fd`` is not a log, or nothing is torn, or the damage is a hole
    before valid records (which is never cut). Damage is raised as
    :class:`CorruptFileError` (the caller holds the writers' lock).
    """
    from racefree.log.frame import Reader
    from racefree.log.scan import Segment, read_header, synced

    size = _fs.fstat(fd).st_size
    if read_header(_fs.pread(fd, HEAD, 0), path) is None:
        return None
    seg = Segment(path, fd, True)
    reader = Reader(path, fd, seg.start, confirmed=True, proves=synced)
    for _frames in reader:
        pass
    if reader.held or not reader.torn or reader.end + reader.torn != size:
        return None
    return reader.end, size
