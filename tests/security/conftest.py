"""The hostile-co-tenant suite's switch: ``RACEFREE_TEST_RULE_OFF=1`` runs it without the rule.

With the variable set, an autouse fixture puts back what racefree did before the
trust rule (0.1.0): every link followed (``_trust.enforce = False``), racefree's
own files opened like any file (following links, blocking on a FIFO, no type or
owner check), a lock file of unknown content judged by age unless it is larger
than 4096 bytes, and ``check --repair`` cutting a log by opening its path again.
``test_teeth.py`` runs ``test_hostile.py`` that way and requires every one of its
tests to fail: the suite has teeth. Nothing in racefree reads the variable.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import Any

import pytest

from racefree import _fs, _trust

RULE_OFF = os.environ.get("RACEFREE_TEST_RULE_OFF") == "1"


def _naive_open_own(path: str | os.PathLike[str], flags: int, mode: int = 0o666, *,
                    create: bool = True, links: bool = False
                    ) -> tuple[int, os.stat_result, bool]:
    """0.1.0's open of a file racefree owns: through links, blocking, unchecked."""
    full = os.fspath(path)
    try:
        fd = _fs.open(full, flags)
        created = False
    except FileNotFoundError:
        if not create:
            raise
        fd = _fs.open(full, flags | os.O_CREAT, mode)
        created = True
    return fd, _fs.fstat(fd), created


def _naive_open_followed(path: str | os.PathLike[str], flags: int, *,
                         special: bool = False) -> tuple[int, os.stat_result]:
    fd = _fs.open(os.fspath(path), flags)
    st = _fs.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        _fs.close(fd)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    return fd, st


def _old_truncate_torn_tail(log: Any, keep: int, size: int) -> bool:
    """0.1.0's repair: re-check under the lock by path, then open the path again and cut."""
    from racefree.lock.filelock import FileLock

    with FileLock(log.path + ".lock"):
        report = log.check()
        if report.size != size or report.size - report.torn != keep or not report.torn:
            return False
        fd = _fs.open(log.path, os.O_WRONLY)
        try:
            _fs.ftruncate(fd, keep)
            _fs.fsync(fd)
        finally:
            _fs.close(fd)
    return True


@pytest.fixture(autouse=True)
def _rule_switch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if RULE_OFF:
        from racefree.check import logs
        from racefree.lockfile import lockfile
        from racefree.lockfile.owner import MAX_RECORD

        monkeypatch.setattr(_trust, "enforce", False)
        monkeypatch.setattr(_trust, "open_own", _naive_open_own)
        monkeypatch.setattr(_trust, "open_followed", _naive_open_followed)
        monkeypatch.setattr(lockfile, "_lost_record", lambda path, seen: seen.size <= MAX_RECORD)
        monkeypatch.setattr(logs, "truncate_torn_tail", _old_truncate_torn_tail)
    yield
