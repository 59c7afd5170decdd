"""The only writer of a log tracks its size itself; a second writer makes it measure again.

A handler that no other open sidecar shares the log with counts the bytes it
appends instead of asking the kernel (``lseek``) at every record. What must
hold: the rotation is decided on the file's real size whatever the others
write, the first record after another writer opened the log included.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from racefree import _fs
from racefree.logging import RotatingFileHandler
from racefree.logging import handler as handler_module


def _rec(msg: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": msg})


def _count(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of seam function ``name`` from now on (in one cell)."""
    real: Callable[..., Any] = getattr(_fs, name)
    calls = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(_fs, name, counted)
    return calls


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
        records = handler_module.RECHECK + 100
        lseeks = _count(monkeypatch, "lseek")
        for _ in range(records):
            a.emit(_rec("x"))
        # Measured at every record until the periodic question found it alone.
        assert lseeks == [handler_module.RECHECK]
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
