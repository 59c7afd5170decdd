"""Another local user against the log handlers' log file itself: FIFOs and links at its name.

racefree runs as root, the attacker as ``nobody`` (``helpers.hostile``), in a
directory like ``/tmp`` (sticky, world-writable). A log path that is not a
regular file (``os.devnull``, a FIFO) is written as the standard library writes
it, so the handler used to open it by path, following links and blocking: a
FIFO of the attacker's got root's records, or hung the handler's constructor;
a FIFO swapped for a link between the lstat and the open sent the records into
any file. Each test checks that the attack is in place first.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest
from helpers import hostile
from helpers.testkit import reap

from racefree import UnsafePathError, _fs
from racefree.logging import RotatingFileHandler, TimedRotatingFileHandler

SECRET = b"root:$6$not-for-logs:19000:0:99999:7:::\n"
HANDLERS = {
    "rotating": lambda path: RotatingFileHandler(path, maxBytes=1000, backupCount=2),
    "timed": lambda path: TimedRotatingFileHandler(path, when="S", backupCount=2),
}

FIFO_READER = r"""
import os, select, sys
path = sys.argv[1]
os.mkfifo(path, 0o666)
fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a reader: a writer's open would succeed
print("ready", flush=True)
sys.stdin.readline()
got = b""
while select.select([fd], [], [], 0)[0]:
    chunk = os.read(fd, 65536)
    if not chunk:
        break
    got += chunk
print(repr(got), flush=True)
"""


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_case20_a_fifo_planted_at_the_log_name_never_gets_a_record(kind: str) -> None:
    """nobody plants app.log as a FIFO it reads: the handler refuses it (UnsafePathError)
    and the attacker reads nothing (before: every record root logged)."""
    with hostile.shared_dir("tmp") as shared:
        log = shared / "app.log"
        proc = hostile.attacker_process(FIFO_READER, str(log))
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "ready"
            assert stat.S_ISFIFO(os.lstat(log).st_mode) and hostile.owner(log) == hostile.NOBODY
            err = hostile.bounded(lambda: _log_once(HANDLERS[kind](log)), log)
            proc.stdin.write("done\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "b''"
        finally:
            reap([proc])
    assert isinstance(err, UnsafePathError), repr(err)
    assert "refusing to use a FIFO owned by uid 65534" in str(err)


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_case20_a_fifo_without_a_reader_at_the_log_name_never_blocks(kind: str) -> None:
    """nobody plants app.log as a FIFO nobody reads: the constructor raises UnsafePathError
    at once (before: it blocked for ever in open(2)); a FIFO of root's own with no reader
    is OSError(ENXIO) at once, not a hang."""
    with hostile.shared_dir("tmp") as shared:
        log = shared / "app.log"
        hostile.attacker("import os, sys; os.mkfifo(sys.argv[1], 0o666)", str(log))
        assert stat.S_ISFIFO(os.lstat(log).st_mode) and hostile.owner(log) == hostile.NOBODY
        err = hostile.bounded(lambda: HANDLERS[kind](log).close(), log)
        assert isinstance(err, UnsafePathError), repr(err)
        mine = shared / "mine.log"
        os.mkfifo(mine)
        err = hostile.bounded(lambda: HANDLERS[kind](mine).close(), mine)
        assert isinstance(err, OSError) and not isinstance(err, UnsafePathError), repr(err)
        assert err.errno == 6  # ENXIO: no reader


def _log_once(handler: logging.Handler) -> None:
    try:
        handler.emit(logging.makeLogRecord({"msg": "root secret: db password hunter2"}))
    finally:
        handler.close()


class SwapsFifoForLink(_fs.FileSystem):
    """The attacker's swap at the exact call: the log name is nobody's FIFO when racefree
    looks at it (lstat), and nobody's link to the victim when it opens it."""

    def __init__(self, log: Path, victim: Path) -> None:
        self.log, self.victim, self.swaps = log, victim, 0

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        if path == str(self.log) and not self.swaps:
            self.swaps += 1
            os.unlink(self.log)
            os.symlink(self.victim, self.log)
            os.lchown(self.log, hostile.NOBODY, -1)
        return super().open(path, flags, mode)


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_case20_a_fifo_swapped_for_a_link_is_never_followed(tmp_path: Path, kind: str) -> None:
    """Case 20, deterministic: the FIFO seen by the lstat is a link to a root-only file
    at the open (through the seam): UnsafePathError, the victim byte for byte unchanged
    (before: the open followed the link and root's records were appended to it)."""
    victim = tmp_path / "shadow"
    victim.write_bytes(SECRET)
    victim.chmod(0o600)
    with hostile.shared_dir("tmp") as shared:
        log = shared / "app.log"
        os.mkfifo(log)
        os.lchown(log, hostile.NOBODY, -1)
        # Keep a reader open so that an open of the FIFO itself would not fail with ENXIO.
        keep = os.open(log, os.O_RDONLY | os.O_NONBLOCK)
        fs = SwapsFifoForLink(log, victim)
        try:
            with _fs.use(fs), pytest.raises(UnsafePathError):
                _log_once(HANDLERS[kind](log))
        finally:
            os.close(keep)
        assert fs.swaps == 1 and hostile.is_link(log)
    assert victim.read_bytes() == SECRET


SWAPPER = r"""
import os, select, sys
d, victim = sys.argv[1:]
os.mkfifo(d + "/.master", 0o666)
keep = os.open(d + "/.master", os.O_RDWR)  # reader and writer: opens of it never block
os.link(d + "/.master", d + "/app.log")  # the name is taken before root comes
print("ready", flush=True)
n = 0
while not (n % 64 == 0 and select.select([sys.stdin], [], [], 0)[0]):
    n += 1
    for tmp in (d + "/.t1", d + "/.t2"):
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    os.link(d + "/.master", d + "/.t1")
    os.rename(d + "/.t1", d + "/app.log")
    os.symlink(victim, d + "/.t2")
    os.rename(d + "/.t2", d + "/app.log")
    if n % 64 == 0:
        os.set_blocking(keep, False)
        try:
            os.read(keep, 1 << 20)
        except BlockingIOError:
            pass
print(n, flush=True)
"""


def test_case20_a_real_fifo_and_link_swapper_never_gets_a_record(tmp_path: Path) -> None:
    """Case 20, for real: nobody swaps app.log between its FIFO and a link to a root-only
    file as fast as it can while root opens a handler 300 times. Every open is refused
    (UnsafePathError: the FIFO and the link are nobody's) and the victim is unchanged.
    (The old code opened the FIFO and logged into it every time the lstat and the open both
    met it, and into the victim when the swap landed in between.)"""
    victim = tmp_path / "shadow"
    victim.write_bytes(SECRET)
    victim.chmod(0o600)
    rounds = 300
    refused = 0
    with hostile.shared_dir("tmp") as shared:
        log = shared / "app.log"
        proc = hostile.attacker_process(SWAPPER, str(shared), str(victim))
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "ready"
            for _ in range(rounds):
                try:
                    _log_once(RotatingFileHandler(log))
                except UnsafePathError:
                    refused += 1
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read() if proc.stderr else "")
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            swaps = int(proc.stdout.readline())
        finally:
            reap([proc])
    assert swaps > 0
    assert refused == rounds
    assert victim.read_bytes() == SECRET


def test_devnull_and_a_trusted_fifo_are_still_written(tmp_path: Path) -> None:
    """What the standard library allows keeps working: os.devnull, and a FIFO of the
    caller's own that a reader has open, get every record (written blocking, as stdlib)."""
    handler = RotatingFileHandler(os.devnull, maxBytes=10, backupCount=1)
    handler.emit(logging.makeLogRecord({"msg": "into the void"}))
    handler.close()
    fifo = tmp_path / "pipe.log"
    os.mkfifo(fifo)
    got: list[bytes] = []
    ready, opened = threading.Event(), threading.Event()

    def read() -> None:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        ready.set()
        opened.wait(10)  # a read before any writer opened would see end-of-file at once
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    ready.wait(10)
    handler = RotatingFileHandler(fifo, maxBytes=10, backupCount=1)
    opened.set()
    for i in range(3):
        handler.emit(logging.makeLogRecord({"msg": f"record {i}"}))
    handler.close()
    reader.join(10)
    assert got == [b"record 0\nrecord 1\nrecord 2\n"]
    assert sorted(os.listdir(tmp_path)) == ["pipe.log"]

