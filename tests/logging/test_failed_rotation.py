"""A rotation that fails after the rename, and sidecar words a damaged disk left at their limit.

After ``app.log`` is renamed to ``app.log.1``, a rotation still publishes the new
generation in the sidecar and opens the new file. When one of those calls fails
(an ``EIO`` on the sidecar's ``pwrite``), the handler used to be left with no file
and a generation it still believed live: every later record failed with ``EBADF``
and was dropped, and ``app.log`` was never made again. A generation or writers word
of all ones (damage) overflowed into ``struct.error``, at every rotation or at open.
"""

from __future__ import annotations

import errno
import logging
import struct
import sys
from pathlib import Path

import pytest

from racefree.logging import RotatingFileHandler
from racefree.testing import faults


def _records(n: int, start: int = 0) -> list[logging.LogRecord]:
    return [logging.makeLogRecord({"msg": f"rec-{i:02d} " + "z" * 100})
            for i in range(start, start + n)]


def _kept(where: Path) -> list[int]:
    text = b"".join(p.read_bytes() for p in where.iterdir() if p.name.startswith("app.log"))
    return [i for i in range(60) if f"rec-{i:02d} ".encode() in text]


def test_a_failure_after_the_rename_loses_only_its_record(tmp_path: Path) -> None:
    """An EIO on the sidecar's pwrite in the rotation of record 18 (the one that reaches
    2,000 bytes): that record is reported and lost; every later one is written, to a new
    app.log, and later rotations go on (before: 18 of 60 kept, the rest EBADF)."""
    h = RotatingFileHandler(tmp_path / "app.log", maxBytes=2000, backupCount=3)
    errors: list[BaseException | None] = []
    h.handleError = lambda record: errors.append(sys.exc_info()[1])  # type: ignore[method-assign]
    try:
        for rec in _records(18):
            h.handle(rec)
        with faults("pwrite", errno.EIO) as injected:
            h.handle(_records(1, 18)[0])
        assert injected.fired == 1
        for rec in _records(41, 19):
            h.handle(rec)
    finally:
        h.close()
    assert [type(e).__name__ for e in errors] == ["InjectedFault"]
    assert _kept(tmp_path) == [i for i in range(60) if i != 18]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".app.log.lock", "app.log", "app.log.1", "app.log.2", "app.log.3"]


def test_a_second_handler_follows_the_rotation_finished_late(tmp_path: Path) -> None:
    """Another handler of the log (another process, in effect; one that never rotates, so
    that only the generation can tell it) writes to the new app.log once the failed
    rotation is finished, never on into the renamed backup."""
    first = RotatingFileHandler(tmp_path / "app.log", maxBytes=2000, backupCount=3)
    second = RotatingFileHandler(tmp_path / "app.log")
    first.handleError = lambda record: None  # type: ignore[method-assign]
    try:
        for rec in _records(17):
            first.handle(rec)
        with faults("pwrite", errno.EIO):
            first.handle(_records(1, 17)[0])  # rotates: app.log -> app.log.1, then fails
        first.handle(_records(1, 18)[0])  # finishes the rotation: the new app.log
        second.handle(_records(1, 19)[0])
    finally:
        first.close()
        second.close()
    assert (tmp_path / "app.log").read_bytes().count(b"rec-") == 2
    assert b"rec-19" in (tmp_path / "app.log").read_bytes()


@pytest.mark.parametrize("offset", [0, 16])
def test_a_sidecar_word_of_all_ones_wraps(tmp_path: Path, offset: int) -> None:
    """The generation word (0) or the writers word (16) damaged to all ones: the handler
    opens, rotates and writes every record (before: struct.error at each rotation, or
    at open)."""
    log = tmp_path / "app.log"
    first = RotatingFileHandler(log, maxBytes=2000, backupCount=3)
    first.handle(_records(1)[0])
    first.close()
    with open(tmp_path / ".app.log.lock", "r+b") as side:
        side.seek(offset)
        side.write(struct.pack("<Q", 2**64 - 1))
    errors: list[BaseException | None] = []
    h = RotatingFileHandler(log, maxBytes=2000, backupCount=3)
    h.handleError = lambda record: errors.append(sys.exc_info()[1])  # type: ignore[method-assign]
    try:
        for rec in _records(59, 1):
            h.handle(rec)
    finally:
        h.close()
    assert errors == []
    assert _kept(tmp_path) == list(range(60))


def test_a_new_file_opened_on_a_retry_keeps_the_logs_mode(tmp_path: Path) -> None:
    """The new file's open fails once (EMFILE) after the rename: the next record opens it,
    and it is 0600 like the log it replaces (before: the retry made it 0644, and every
    later backup with it), with the generation bumped once."""
    import os
    import stat as statmod

    log = tmp_path / "app.log"
    log.touch(mode=0o600)
    log.chmod(0o600)
    h = RotatingFileHandler(log, maxBytes=200, backupCount=3)
    h.handleError = lambda record: None  # type: ignore[method-assign]
    real = h._open_log
    armed = [True]

    def flaky() -> tuple[int, os.stat_result, bool]:
        if armed[0] and h._fd < 0 and not log.exists():
            armed[0] = False
            raise OSError(errno.EMFILE, "Too many open files (injected)")
        return real()

    h._open_log = flaky  # type: ignore[method-assign]
    try:
        for rec in _records(10):
            h.handle(rec)
    finally:
        h.close()
    assert not armed[0]
    modes = {p.name: statmod.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o600}, modes
