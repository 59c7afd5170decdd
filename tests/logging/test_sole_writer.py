"""The only writer of a log tracks its size itself; a second writer makes it measure again.

A handler that no other open sidecar shares the log with counts the bytes it
appends instead of asking the kernel (``lseek``) at every record. What must
hold: the rotation is decided on the file's real size whatever the others
write, the first record after another writer opened the log included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from helpers.logrecording import count_seam_calls, rec

from racefree import _fs
from racefree.logging import RotatingFileHandler
from racefree.logging import sole as sole_module

_rec = rec
_count = count_seam_calls


def test_the_only_writer_does_not_measure_at_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = RotatingFileHandler(tmp_path / "app.log", maxBytes=1000, backupCount=2)
    try:
        writes, lseeks = _count(monkeypatch, "write"), _count(monkeypatch, "lseek")
        for i in range(50):  # 5 bytes each: 250 bytes, no rotation
            h.emit(_rec(f"r{i:03d}"))
        assert writes == [50]
        assert lseeks == [1]  # the first record's; then the handler counts
    finally:
        h.close()
    assert (tmp_path / "app.log").read_bytes() == b"".join(
        f"r{i:03d}\n".encode() for i in range(50)
    )


def test_a_second_writer_is_counted_from_its_first_record(tmp_path: Path) -> None:
    """a is alone, then b opens the log: a's next record sees b's bytes and rotates on them."""
    a = RotatingFileHandler(tmp_path / "app.log", maxBytes=30, backupCount=3)
    try:
        a.emit(_rec("a" * 9))  # 10 bytes, a alone: its size is tracked
        b = RotatingFileHandler(tmp_path / "app.log", maxBytes=30, backupCount=3)
        try:
            b.emit(_rec("b" * 14))  # 25 bytes
            a.emit(_rec("c" * 5))  # 25 + 6 >= 30: rotate first (a's own count says 16)
        finally:
            b.close()
    finally:
        a.close()
    assert (tmp_path / "app.log.1").read_bytes() == b"a" * 9 + b"\n" + b"b" * 14 + b"\n"
    assert (tmp_path / "app.log").read_bytes() == b"ccccc\n"


def test_a_writer_alone_again_after_the_other_left_goes_back_to_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = RotatingFileHandler(tmp_path / "app.log", maxBytes=10**9, backupCount=1)
    b = RotatingFileHandler(tmp_path / "app.log", maxBytes=10**9, backupCount=1)
    try:
        a.emit(_rec("x"))  # not alone: measured
        b.close()  # its sidecar closed: the kernel dropped its writer lock
        records = sole_module.RECHECK + 100
        lseeks = _count(monkeypatch, "lseek")
        for _ in range(records):
            a.emit(_rec("x"))
        # Measured at every record until the periodic question found it alone, and once
        # more after the answer (a writer that left before it may have appended since).
        assert lseeks == [sole_module.RECHECK + 1]
    finally:
        a.close()
    assert (tmp_path / "app.log").read_bytes() == b"x\n" * (records + 1)


def test_a_forked_child_is_a_second_writer(tmp_path: Path) -> None:
    """The parent is alone; a child forked from it writes: the parent counts the child's bytes."""
    a = RotatingFileHandler(tmp_path / "app.log", maxBytes=30, backupCount=3)
    try:
        a.emit(_rec("a" * 9))  # 10 bytes, tracked
        pid = os.fork()
        if pid == 0:  # the child: its own sidecar, counted as a writer, then one record
            try:
                a.emit(_rec("b" * 14))  # 25 bytes
                a.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        a.emit(_rec("c" * 5))  # 25 + 6 >= 30: rotate first
    finally:
        a.close()
    assert (tmp_path / "app.log.1").read_bytes() == b"a" * 9 + b"\n" + b"b" * 14 + b"\n"
    assert (tmp_path / "app.log").read_bytes() == b"ccccc\n"


# -- what the review found: every way a handler could count on a size that misses bytes --

MAX = 10_000


def _take_turns(a: RotatingFileHandler, b: RotatingFileHandler) -> None:
    """b writes, a writes 9,000 bytes, then b 9,500 more: b must measure on the way."""
    b.emit(_rec("b" * 99))
    for _ in range(90):
        a.emit(_rec("a" * 99))
    for _ in range(95):
        b.emit(_rec("b" * 99))


def _take_turns_and_close(
    a: RotatingFileHandler, b: RotatingFileHandler, directory: Path, setup: bool
) -> None:
    """``setup`` (what the test arranged) holds, the two take turns, then one backup."""
    try:
        assert setup  # the setup
        _take_turns(a, b)
    finally:
        a.close()
        b.close()
    _assert_rotated_once(directory, 186 * 100)


def _assert_rotated_once(directory: Path, total: int) -> None:
    """One backup, below MAX (one writer at a time), and every byte in the two files."""
    backups = [p.stat().st_size for p in sorted(directory.glob("app.log.*"))]
    assert len(backups) == 1 and backups[0] < MAX
    assert backups[0] + (directory / "app.log").stat().st_size == total


def test_a_writer_whose_sidecar_is_not_mapped_is_still_counted(tmp_path: Path) -> None:
    """a opens while the log is group-writable (its control block read with pread, not
    mapped); b opens after a chmod 644 (mapped): b must not believe it is alone."""
    path = tmp_path / "app.log"
    path.touch()
    path.chmod(0o664)
    a = RotatingFileHandler(path, maxBytes=MAX, backupCount=3)
    path.chmod(0o644)
    b = RotatingFileHandler(path, maxBytes=MAX, backupCount=3)
    _take_turns_and_close(a, b, tmp_path, a._side is not None and b._side is not None
                          and a._side.words is None and b._side.words is not None)


def test_a_writer_that_could_not_be_counted_stops_everyone_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that could not take the writer lock marks the log: nobody trusts a count."""
    path = tmp_path / "app.log"
    real = _fs.ofd_setlk

    def refused(fd: int, kind: int, *args: Any, **kwargs: Any) -> None:
        raise OSError(95, "not supported here")

    monkeypatch.setattr(_fs, "ofd_setlk", refused)
    a = RotatingFileHandler(path, maxBytes=MAX, backupCount=3)
    monkeypatch.setattr(_fs, "ofd_setlk", real)
    b = RotatingFileHandler(path, maxBytes=MAX, backupCount=3)
    _take_turns_and_close(a, b, tmp_path, a._side is not None and not a._side.counted)


def test_a_writer_that_leaves_while_the_other_asks_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b appends and closes just as a asks whether it is alone: a's next size must include it."""
    path = tmp_path / "app.log"
    a = RotatingFileHandler(path, maxBytes=MAX, backupCount=3)
    b = RotatingFileHandler(path, maxBytes=MAX, backupCount=3)
    try:
        a.emit(_rec("a" * 99))  # not alone: b is open
        RotatingFileHandler(path, maxBytes=MAX, backupCount=3).close()  # moves the word on
        real = _fs.ofd_getlk
        armed = [True]

        def asked(fd: int, *args: Any) -> int:
            assert a._side is not None
            if armed[0] and fd == a._side.fd:
                armed[0] = False
                b.emit(_rec("B" * 3999))  # 4,000 bytes, written under its shared hold
                b.close()
            result: int = real(fd, *args)
            return result

        monkeypatch.setattr(_fs, "ofd_getlk", asked)
        a.emit(_rec("a" * 99))  # the word moved: a asks (b writes and leaves meanwhile)
        assert not armed[0]  # the setup: b wrote while a asked
        monkeypatch.setattr(_fs, "ofd_getlk", real)
        for _ in range(100):
            a.emit(_rec("x" * 99))  # alone now: rotates on the real size
    finally:
        a.close()
    _assert_rotated_once(tmp_path, 102 * 100 + 4000)


def test_turning_rotation_off_and_on_again_measures_afresh(tmp_path: Path) -> None:
    """While nothing rotates, appends are not counted: switching rotation back on measures."""
    path = tmp_path / "app.log"
    h = RotatingFileHandler(path, maxBytes=MAX, backupCount=3)
    try:
        h.emit(_rec("x" * 99))
        h.emit(_rec("x" * 99))  # alone: counted
        h.backupCount = 0  # as the stdlib allows: no rotation
        for _ in range(90):
            h.emit(_rec("y" * 99))  # 9,000 bytes, not counted
        h.backupCount = 3
        for _ in range(10):
            h.emit(_rec("z" * 99))  # the file reaches MAX on the way: rotate first
    finally:
        h.close()
    _assert_rotated_once(tmp_path, 102 * 100)
