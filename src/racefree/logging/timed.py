"""Time-based rotation that many processes share: :class:`TimedRotatingFileHandler`."""

from __future__ import annotations

import datetime
import logging as _stdlib_logging
import logging.handlers as _stdlib_handlers
import os
import re
import stat
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, cast

from racefree import _fs, _trust
from racefree.logging.handler import Durable, SharedFileHandler

__all__ = ["TimedRotatingFileHandler"]

# when -> (seconds per unit, strftime suffix, pattern of the suffix); the stdlib's table.
_WHEN: dict[str, tuple[int, str, str]] = {
    "S": (1, "%Y-%m-%d_%H-%M-%S", r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}"),
    "M": (60, "%Y-%m-%d_%H-%M", r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}"),
    "H": (3600, "%Y-%m-%d_%H", r"\d{4}-\d{2}-\d{2}_\d{2}"),
    "D": (86400, "%Y-%m-%d", r"\d{4}-\d{2}-\d{2}"),
    "MIDNIGHT": (86400, "%Y-%m-%d", r"\d{4}-\d{2}-\d{2}"),
    "W": (7 * 86400, "%Y-%m-%d", r"\d{4}-\d{2}-\d{2}"),
}

# The interpreter's own rollover computation, taken when this module is first
# imported: code that replaces ``logging.handlers.TimedRotatingFileHandler``
# with this class must not make it call itself through the module.
_STDLIB_COMPUTE = cast(
    "Callable[[Any, int], int]", _stdlib_handlers.TimedRotatingFileHandler.computeRollover
)


class TimedRotatingFileHandler(SharedFileHandler):
    """The standard ``TimedRotatingFileHandler``, safe when any number of processes share it.

    ``TimedRotatingFileHandler(filename, when="h", interval=1, backupCount=0,
    encoding=None, delay=False, utc=False, atTime=None, errors=None)`` as in
    :mod:`logging.handlers` (``backup_count=`` also accepted), with the
    stdlib's backup names (``app.log.2026-11-27_09`` for ``when="H"``) and
    rollover times (computed by the stdlib's own ``computeRollover``), plus
    ``durable`` and ``compress`` as for :class:`RotatingFileHandler`.

    The next rollover time lives in the shared control block, so the file is
    rotated once per interval by the first process that logs after it, whatever
    each process's start time; the others reopen. A backup name that already
    exists (the clock went back) is never overwritten: ``.1``, ``.2``, ... is
    appended instead (the stdlib deletes the older backup). Old backups beyond
    ``backupCount`` are deleted by the rotating process.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        when: str = "h",
        interval: int = 1,
        backupCount: int | None = None,
        encoding: str | None = None,
        delay: bool = False,
        utc: bool = False,
        atTime: datetime.time | None = None,
        errors: str | None = None,
        *,
        backup_count: int | None = None,
        at_time: datetime.time | None = None,
        durable: Durable = False,
        compress: bool = False,
        lock_timeout: float | None = 30.0,
    ) -> None:
        if backupCount is not None and backup_count is not None and backupCount != backup_count:
            raise TypeError("backup_count given twice with different values")
        if atTime is not None and at_time is not None and atTime != at_time:
            raise TypeError("at_time given twice with different values")
        count = backupCount if backupCount is not None else backup_count
        self.backupCount = 0 if count is None else int(count)
        self.when = when.upper()
        key = "W" if self.when.startswith("W") else self.when
        if key not in _WHEN:
            raise ValueError(f"Invalid rollover interval specified: {when}")
        if key == "W":
            if len(self.when) != 2 or not "0" <= self.when[1] <= "6":
                raise ValueError(f"Invalid day specified for weekly rollover: {when}")
            self.dayOfWeek = int(self.when[1])
        unit, self.suffix, pattern = _WHEN[key]
        if interval < 1:
            raise ValueError(f"interval must be >= 1, not {interval!r}")
        self.interval = unit * interval
        self.extMatch = re.compile(rf"^{pattern}(\.\w+)?$", re.ASCII)
        self._stamp = re.compile(rf"(?<!\d){pattern}(?!\d)", re.ASCII)
        self._suffix = re.compile(rf"{pattern}(\.\d+)?", re.ASCII)
        self.utc = utc
        self.atTime = atTime if atTime is not None else at_time
        # As the stdlib: from the log's last change if it exists, else from now.
        try:
            start = int(_fs.stat(os.path.abspath(os.fspath(filename))).st_mtime)
        except FileNotFoundError:
            start = int(time.time())
        self._local_at = float(self.computeRollover(start))
        # Normalised: 4 and 4.0, 1 and True are one schedule.
        schedule = repr((self.when.upper(), float(self.interval), bool(self.utc),
                         self.atTime)).encode()
        self._mark = zlib.crc32(schedule) + 1  # 0 is "unknown" (a sidecar made before)
        self._schedule_checked = False
        super().__init__(
            filename, "a", encoding, delay, errors,
            durable=durable, compress=compress, lock_timeout=lock_timeout,
        )

    def computeRollover(self, currentTime: int) -> int:
        """The next rollover after ``currentTime``: the interpreter's own computation."""
        return int(_STDLIB_COMPUTE(self, currentTime))

    @property
    def rolloverAt(self) -> int:
        """The next rollover time, shared by every process that uses the log."""
        return int(self._at if self._at is not None else self._local_at)

    @rolloverAt.setter
    def rolloverAt(self, value: float) -> None:
        self._local_at = float(value)
        if self._side is not None:
            self._at = float(value)
            # A plain time, no lock needed: whichever write lands last is the next rollover.
            self._side.put_rollover(float(value))

    def shouldRollover(self, record: _stdlib_logging.LogRecord) -> bool:
        """The standard library's answer: has the rollover time passed?

        False for a file that is not a regular one (``os.devnull``). ``emit``
        decides again holding the lock, from the time every process shares.
        """
        if self._plain:
            return False
        if self._fd < 0:
            try:
                if not stat.S_ISREG(_fs.stat(self.baseFilename).st_mode):
                    return False
            except FileNotFoundError:
                pass
        return int(time.time()) >= self.rolloverAt

    def _opened_locked(self) -> None:
        assert self._side is not None
        at = self._side.rollover()
        if at == 0.0:
            at = self._local_at  # first use of this sidecar: this handler's time is everyone's
            self._side.put_schedule(at, self._mark)
        elif not self._schedule_checked and self._side.schedule() != self._mark:
            # The first look of a handler whose schedule (when, interval, utc,
            # atTime) is not the one the stored time was computed for: a restart
            # with a new configuration runs on it at once, as the stdlib's handler
            # would (from the log's last change), instead of waiting out the old
            # schedule's next rollover (up to a week for "W0" made "midnight"). Only
            # at a handler's first look, and only ever earlier: processes that start
            # often with another schedule never push the rollover away for good.
            at = min(at, self._local_at)
            self._side.put_schedule(at, self._mark)
        self._schedule_checked = True
        self._at = at

    def _should_rotate_locked(
        self, size: int, length: int, record: _stdlib_logging.LogRecord | None
    ) -> bool:
        self._opened_locked()  # the shared time: another process may have moved it on
        assert self._at is not None
        at = self._at
        now = int(time.time())
        if now < at:
            return False
        if size == 0:
            # Nothing to keep: no empty backup, just move the deadline on.
            self._advance(now)
            return False
        return True

    def _advance(self, now: int) -> None:
        assert self._side is not None
        at = self.computeRollover(now)
        while at <= now:
            at += self.interval
        if (self.when == "MIDNIGHT" or self.when.startswith("W")) and not self.utc:
            dst_now = time.localtime(now)[-1]
            if dst_now != time.localtime(at)[-1]:
                at += -3600 if not dst_now else 3600
        self._side.put_rollover(float(at))
        self._at = float(at)

    def _backup_for(self, start: int, now: int) -> str:
        if self.utc:
            stamp = time.gmtime(start)
        else:
            stamp = time.localtime(start)
            if time.localtime(now)[-1] != stamp[-1]:
                stamp = time.localtime(start + (3600 if time.localtime(now)[-1] else -3600))
        return f"{self.baseFilename}.{time.strftime(self.suffix, stamp)}"

    def _rotate_locked(self) -> None:
        """Rename ``app.log`` to ``app.log.<start of its interval>``, reopen, prune backups."""
        assert self._at is not None
        now = int(time.time())
        at = int(self._at)
        present = set(_fs.listdir(self._dir))
        base = self._backup_for(at - self.interval if at else now, now)
        dest = self.rotation_filename(base)
        n = 0
        while any(os.path.basename(dest) + e in present for e in ("", ".gz")):
            n += 1  # never overwrite an older backup
            dest = self.rotation_filename(f"{base}.{n}")
        if self.compress:
            # Before app.log becomes a backup: it is ours to compress, not the sweep's.
            plain = [os.path.join(self._dir, e) for e in self._backups(present) if
                     not e.endswith(".gz")]
            self._sweep_locked(present, plain)
        try:
            self.rotate(self.baseFilename, dest)
        except FileNotFoundError:
            self._switch_locked(None)
        except Exception:
            if not self._still_current():  # moved, then failed: the interval is over too
                self._switch_locked(None)
                self._advance(now)
            raise
        else:
            self._switch_locked(dest)
        self._advance(now)
        if self.backupCount > 0:
            for path in self.getFilesToDelete():
                _fs.unlink(path)

    def _backups(self, listing: Iterable[str]) -> list[str]:
        """The names in ``listing`` that are backups of this log (plain or ``.gz``).

        Without a namer: ``app.log.<time>``, with ``.N`` when that name was
        taken and ``.gz`` when compressed. With a namer, a name is a backup if
        the namer makes it from a time found in it (as the stdlib does since
        3.13), so a namer that moves the time into the middle of the name
        still has its backups pruned.

        Only entries the trust rule trusts count (``racefree._trust``): in a
        shared directory such as ``/tmp``, a file another user made under a
        backup's name (``app.log.2099-12-31``) is not a backup, so it neither
        pushes this log's own backups out of ``backupCount`` nor is deleted.
        """
        found = self._backup_names(listing)
        if not found:
            return found
        dir_st = _fs.stat(self._dir, follow_symlinks=False)
        kept = []
        for entry in found:
            try:
                st = _fs.stat(os.path.join(self._dir, entry), follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing
            if _trust.trusted(st, dir_st):
                kept.append(entry)
        return kept

    def _backup_names(self, listing: Iterable[str]) -> list[str]:
        """The names in ``listing`` that are shaped like backups of this log."""
        base = self.baseFilename
        prefix = os.path.basename(base) + "."
        namer = self.namer
        found = []
        for entry in listing:
            stem = entry[:-3] if entry.endswith(".gz") else entry
            if not callable(namer):
                if stem.startswith(prefix) and self._suffix.fullmatch(stem[len(prefix):]):
                    found.append(entry)
                continue
            for m in self._stamp.finditer(stem):
                tried = [f"{base}.{m[0]}"]
                tried += [f"{base}.{m[0]}.{n}" for n in re.findall(r"\.(\d+)", stem[m.end():])]
                if any(os.path.basename(namer(name)) == stem for name in tried):
                    found.append(entry)
                    break
        return found

    def getFilesToDelete(self) -> list[str]:
        """The oldest backups beyond ``backupCount`` (plain or ``.gz``), by name order."""
        found = self._backups(_fs.listdir(self._dir))
        # A backup and its ".gz" twin (mid-compression) count once.
        stems = sorted({e[:-3] if e.endswith(".gz") else e for e in found})
        doomed = set(stems[: max(0, len(stems) - self.backupCount)])
        return [
            os.path.join(self._dir, e)
            for e in found
            if (e[:-3] if e.endswith(".gz") else e) in doomed
        ]
