"""Size-based rotation that many processes share: :class:`RotatingFileHandler`."""

from __future__ import annotations

import logging as _stdlib_logging
import math
import os
import sys
from collections.abc import Iterator

from racefree import _fs, _trust
from racefree.logging.handler import Durable, SharedFileHandler

__all__ = ["RotatingFileHandler"]

_UNSET = object()
#: The stdlib's ``shouldRollover`` says False for an empty file from 3.12.6 on (gh-116263).
EMPTY_NEVER_ROLLS = sys.version_info >= (3, 12, 6)


def _pick(name: str, camel: object, snake: object) -> int:
    """One value from the stdlib (camelCase) and the snake_case spelling of an argument."""
    if snake is _UNSET:
        value = 0 if camel is _UNSET else camel
    elif camel is _UNSET or camel == snake:
        value = snake
    else:
        raise TypeError(f"{name} given twice with different values: {camel!r} and {snake!r}")
    return _count(name, value)


def _count(name: str, value: object) -> int:
    """``value`` as the stdlib uses it: any real number, where one of 0 or less (or NaN)
    means no rollover. ``1e6`` and ``10 * 1024**2 / 2`` are common in configurations.

    A fractional ``maxBytes`` rounds up (``size >= 5.5`` is ``size >= 6`` for sizes);
    a fractional ``backupCount`` rounds down (the stdlib's ``range`` refuses it at the
    first rollover). Anything else is ``TypeError``, as the stdlib's comparison raises.
    """
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not value > 0 or math.isinf(value):  # NaN, 0, negative; infinity: never reached
        return 0
    if isinstance(value, int):
        return int(value)  # bool too, as the stdlib compares it
    return math.ceil(value) if name == "max_bytes" else int(value)


class RotatingFileHandler(SharedFileHandler):
    """The standard ``RotatingFileHandler``, safe when any number of processes share the file.

    ``RotatingFileHandler(filename, mode="a", maxBytes=0, backupCount=0,
    encoding=None, delay=False, errors=None)`` as in :mod:`logging.handlers`
    (also spelt ``max_bytes=`` and ``backup_count=``), plus keyword-only:

    - ``durable``: ``False`` (the default, like the standard handlers: records
      reach the OS page cache, not the disk), ``"rotate"`` (each rotated file
      and the renames are fsynced by the process that rotated, outside the
      lock), or ``"record"`` (an ``fdatasync`` after every record, before
      ``emit`` returns: audit logs).
    - ``compress``: gzip each backup to ``app.log.N.gz``, done once, by the
      process that rotated, without holding the write lock.

    - ``lock_timeout``: the longest a record waits for the sidecar's lock
      (seconds, default 30; None: no limit); see ``docs/logging.md``.

    Guarantees, for every process and thread that logs through one of these
    handlers: each record is written whole, never interleaved with another;
    none is lost at rotation; the file is rotated once per threshold, by one
    process, only when the *current* file plus the next record reaches
    ``maxBytes``; backups are named ``app.log.1`` (newest) to
    ``app.log.<backupCount>``. A backup is below ``maxBytes`` (or holds one
    record larger than it) when one process writes at a time; with writers
    appending at once, at most one record of each writer ends past
    ``maxBytes``. As documented for the stdlib, rollover never occurs when
    ``maxBytes`` or ``backupCount`` is 0. ``mode`` is ``"a"``, or ``"w"``
    (truncate at open) when ``maxBytes`` is 0, as in the stdlib; the default
    encoding is UTF-8 (not the locale's).
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        maxBytes: object = _UNSET,
        backupCount: object = _UNSET,
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        *,
        max_bytes: object = _UNSET,
        backup_count: object = _UNSET,
        durable: Durable = False,
        compress: bool = False,
        lock_timeout: float | None = 30.0,
    ) -> None:
        limit = _pick("max_bytes", maxBytes, max_bytes)  # checked before opening anything
        count = _pick("backup_count", backupCount, backup_count)
        self._max_bytes = limit
        self._backup_count = count
        self._set_floor()
        if limit > 0:
            mode = "a"  # as the stdlib: "w" truncates only a log that never rotates
        super().__init__(
            filename, mode, encoding, delay, errors,
            durable=durable, compress=compress, lock_timeout=lock_timeout,
        )

    def _set_floor(self) -> None:
        rotates = self._max_bytes > 0 and self._backup_count > 0
        self._limit = self._max_bytes if rotates else None
        # Appends are not counted while nothing rotates: measure again at the next record.
        self._size = -1

    # The stdlib's attribute names, settable after construction as there.
    @property
    def maxBytes(self) -> int:
        return self._max_bytes

    @maxBytes.setter
    def maxBytes(self, value: int) -> None:
        self._max_bytes = _pick("max_bytes", value, _UNSET)
        self._set_floor()

    @property
    def backupCount(self) -> int:
        return self._backup_count

    @backupCount.setter
    def backupCount(self, value: int) -> None:
        self._backup_count = _pick("backup_count", value, _UNSET)
        self._set_floor()

    max_bytes = maxBytes
    backup_count = backupCount

    def shouldRollover(self, record: _stdlib_logging.LogRecord) -> bool:
        """The standard library's answer: would ``record`` make the file reach ``maxBytes``?

        As there: False for a file that is not a regular one (``os.devnull``),
        the record is formatted only when ``maxBytes`` > 0, its length is
        counted in characters, and the answer may be True with ``backupCount``
        0. For an empty file it is the running interpreter's: False, before
        the record is formatted, from Python 3.12.6 on (gh-116263), True
        before. ``emit`` does not ask this (unless a subclass overrides it): it
        decides again, holding the lock, from the encoded length, and never
        rotates an empty file (no empty backup).
        """
        if self._fd < 0:
            self._open()
        if self._plain:
            return False
        if self.maxBytes > 0:
            pos = _fs.lseek(self._fd, 0, os.SEEK_END)
            if not pos and EMPTY_NEVER_ROLLS:
                return False
            msg = f"{self.format(record)}\n"
            if pos + len(msg) >= self.maxBytes:
                return True
        return False

    def _should_rotate_locked(
        self, size: int, length: int, record: _stdlib_logging.LogRecord | None
    ) -> bool:
        # ``size`` is the current file's (kept in the control block), read
        # under the exclusive lock: a process that was about to rotate but
        # waited for the lock sees the fresh file another process just opened,
        # and does not rotate again. With the stdlib each process rotates from
        # its own stream's size, so a second process renames the fresh file
        # into app.log.1 too: backups of a few KB with a 5 MB limit (issue 6).
        limit = self._limit
        return limit is not None and size > 0 and size + length >= limit

    def _backup_name(self, i: int) -> str:
        return self.rotation_filename(f"{self.baseFilename}.{i}")

    def _rotate_locked(self) -> None:
        """Shift ``app.log.i`` to ``app.log.i+1``, rename ``app.log`` to ``app.log.1``, reopen.

        Only entries the trust rule trusts are backups (``racefree._trust``): in a
        shared directory such as ``/tmp``, a file another user made at a backup's
        name is never shifted into this log's backups (its lines would pass for
        the log's own); its slot counts as free, and the next backup to reach it
        takes the name.
        """
        # One listdir instead of a stat per name; kept up to date as we rename.
        present = {
            os.path.join(self._dir, n) for n in _fs.listdir(self._dir)
        }
        # Each name is judged once (the directory's stat too): the whole
        # rotation holds every writer off, and it renames up to backupCount files.
        dirs: dict[str, os.stat_result] = {}
        known: dict[str, bool] = {}

        def has(path: str) -> bool:
            found = known.get(path)
            if found is None:
                found = known[path] = self._present(path, present, dirs)
            return found

        exts = ("", ".gz") if self.compress else ("",)
        # Shift only up to the first free slot: it absorbs the shift, so nothing
        # is overwritten below it (and a large backupCount costs nothing).
        free = self.backupCount
        for i in range(1, self.backupCount):
            name = self._backup_name(i)
            if not any(has(name + e) for e in exts):
                free = i
                break
        for i in range(free - 1, 0, -1):
            src = self._backup_name(i)
            moving = [e for e in exts if has(src + e)]
            if not moving:
                continue
            dst = self._backup_name(i + 1)
            for e in exts:  # a stale plain/.gz twin at the target must not survive
                if e not in moving and has(dst + e):
                    _fs.unlink(dst + e)
                    present.discard(dst + e)
                    known[dst + e] = False
            for e in moving:
                if has(dst + e):
                    # The oldest backup goes first, as with the stdlib: a rename
                    # over an existing file makes ext4 write out the renamed
                    # file's data at once (its auto_da_alloc), about 0.1 ms with
                    # every writer held off; into a free name it does not. A
                    # crash in between leaves a gap the next shift fills.
                    _fs.unlink(dst + e)
                _fs.replace(src + e, dst + e)
                present.discard(src + e)
                present.add(dst + e)
                known[src + e], known[dst + e] = False, True
        dest = self._backup_name(1)
        if self.compress:
            if self._present(dest + ".gz", present):
                _fs.unlink(dest + ".gz")
            # Before app.log becomes a backup: it is ours to compress, not the sweep's.
            plain = [p for p in self._rotated_candidates(dest) if self._present(p, present)]
            self._sweep_locked((os.path.basename(p) for p in present), plain)
        try:
            self.rotate(self.baseFilename, dest)
        except FileNotFoundError:
            # Removed by hand meanwhile: nothing to keep, start a new file.
            self._switch_locked(None)
            return
        self._switch_locked(dest)

    def _present(
        self, path: str, listed: set[str], dirs: dict[str, os.stat_result] | None = None
    ) -> bool:
        """Whether this log has a backup at ``path``: a trusted entry (see ``_rotate_locked``).

        ``dirs``: the stats of directories already looked at, reused (and added to).
        """
        directory = os.path.dirname(path)
        # A namer may put backups in another directory than the one listed.
        if directory == self._dir and path not in listed:
            return False
        try:
            st = _fs.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False  # removed since the listing
        dir_st = None if dirs is None else dirs.get(directory)
        if dir_st is None:
            dir_st = _fs.stat(directory, follow_symlinks=False)
            if dirs is not None:
                dirs[directory] = dir_st
        return _trust.trusted(st, dir_st)

    def _rotated_candidates(self, path: str) -> Iterator[str]:
        # Backups fill slots 1, 2, ... without gaps (a shift stops at the first
        # free slot), so the search ends at the first empty slot; slot 1 is
        # empty for a moment in the middle of a rotation (the sweep runs then).
        present = {os.path.join(self._dir, n) for n in _fs.listdir(self._dir)}
        for i in range(1, self.backupCount + 1):
            name = self._backup_name(i)
            if not (self._present(name, present) or self._present(name + ".gz", present)):
                if i == 1:
                    continue
                return
            yield name
