"""A writer that waits to rotate a full file stops waiting once another process rotated it.

With many writers, each one that finds the file full asks for the exclusive
hold. Only one of them must rotate; the others, once the generation moved on,
go back to appending under the shared hold instead of taking the exclusive hold
one after another (or, while shared holders stay, waiting until ``lock_timeout``
and dropping their record).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import sys
import threading
from pathlib import Path

import pytest

from racefree.logging import RotatingFileHandler
from racefree.logging.sidecar import Sidecar


def _rec(msg: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": msg})


def test_a_rotation_by_another_process_ends_the_wait_to_rotate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "app.log"
    h = RotatingFileHandler(log, maxBytes=20, backupCount=3, lock_timeout=5.0)
    errors: list[BaseException] = []

    def handle_error(record: logging.LogRecord) -> None:
        errors.append(sys.exc_info()[1] or RuntimeError("no exception"))

    h.handleError = handle_error  # type: ignore[method-assign]
    side = os.open(tmp_path / ".app.log.lock", os.O_RDWR)
    try:
        h.emit(_rec("a" * 9))  # 10 bytes of 20
        # Another process appending: it holds the lock shared, so nobody gets it
        # exclusively until it lets go (it never does in this test).
        fcntl.flock(side, fcntl.LOCK_SH)
        waiting = threading.Event()
        polled = Sidecar.generation

        def generation(self: Sidecar) -> int:
            waiting.set()  # the handler polls: it waits for the exclusive hold
            return polled(self)

        monkeypatch.setattr(Sidecar, "generation", generation)

        def rotate_elsewhere() -> None:
            # What another process's rotation leaves: the file renamed, the
            # generation bumped (it held the lock exclusively meanwhile).
            assert waiting.wait(10.0)
            os.rename(log, tmp_path / "app.log.1")
            (gen,) = struct.unpack("<Q", os.pread(side, 8, 0))
            os.pwrite(side, struct.pack("<Q", gen + 1), 0)

        other = threading.Thread(target=rotate_elsewhere)
        other.start()
        try:
            h.emit(_rec("b" * 14))  # 10 + 15 >= 20: full, so it waits to rotate
        finally:
            other.join(10.0)
        assert not other.is_alive()
    finally:
        fcntl.flock(side, fcntl.LOCK_UN)
        os.close(side)
        h.close()
    assert errors == []
    # Written once, to the file that is current after the other's rotation,
    # without a second rotation of its own (no app.log.2).
    assert (tmp_path / "app.log.1").read_bytes() == b"a" * 9 + b"\n"
    assert log.read_bytes() == b"b" * 14 + b"\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".app.log.lock", "app.log", "app.log.1"]
