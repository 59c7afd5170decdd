"""Writers append without the lock; every exclusive step fences them out first.

What must hold (see ``racefree.logging.sole``): a record a writer is in the
middle of ends before anyone renames, truncates or compresses the file; a
writer's next record after an exclusive hold takes the lock again; a writer
that died in a record blocks nobody; where no barrier can be run, the exclusive
holder waits for the writers to leave the mode instead of going ahead; an
interrupted fence leaves the lock free.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers.logrecording import count_seam_calls, rec

from racefree import LockTimeout, _fs
from racefree.logging import RotatingFileHandler
from racefree.logging import barrier as barrier_module
from racefree.logging import sidecar as sidecar_module
from racefree.logging import sole as sole_module
from racefree.logging.sidecar import FILE_SIZE, SLOT0, SLOT_STRIDE, SLOTS

WAIT = 60.0  # generous bounds on a busy machine; outcomes are exact, never timed
SRC = Path(__file__).resolve().parents[2] / "src"


_rec = rec
_count = count_seam_calls


def _pause_write_of(monkeypatch: pytest.MonkeyPatch, marker: bytes
                    ) -> tuple[threading.Event, threading.Event]:
    """(inside, release): the write(2) of a record holding ``marker`` waits for ``release``."""
    inside, release = threading.Event(), threading.Event()
    real = _fs.write

    def write(fd: int, data: bytes | memoryview) -> int:
        if marker in bytes(data):
            inside.set()
            assert release.wait(WAIT)
        return real(fd, data)

    monkeypatch.setattr(_fs, "write", write)
    return inside, release


def _in_record(path: Path) -> list[int]:
    """The slots whose word says "in a record" in the log's sidecar."""
    block = (path.parent / f".{path.name}.lock").read_bytes()
    assert len(block) == FILE_SIZE
    return [i for i in range(SLOTS)
            if block[SLOT0 + i * SLOT_STRIDE:SLOT0 + i * SLOT_STRIDE + 8] != bytes(8)]


def test_the_only_writer_takes_no_lock_per_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its first record (which measures the file), a lone handler's record is one write."""
    h = RotatingFileHandler(tmp_path / "app.log", maxBytes=10**6, backupCount=1)
    try:
        h.emit(_rec("r000"))
        flocks, writes, lseeks = (_count(monkeypatch, n) for n in ("flock", "write", "lseek"))
        for i in range(1, 50):
            h.emit(_rec(f"r{i:03d}"))
        assert (flocks, writes, lseeks) == ([0], [49], [0])
        assert _in_record(tmp_path / "app.log") == []
    finally:
        h.close()
    assert (tmp_path / "app.log").read_bytes() == b"".join(
        f"r{i:03d}\n".encode() for i in range(50))


def test_without_membarrier_the_only_writer_keeps_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No barrier to fence it out (a sandbox without membarrier): two flocks per record."""
    monkeypatch.setattr(barrier_module, "register", lambda: False)
    h = RotatingFileHandler(tmp_path / "app.log", maxBytes=10**6, backupCount=1)
    try:
        h.emit(_rec("first"))
        flocks = _count(monkeypatch, "flock")
        for _ in range(10):
            h.emit(_rec("x"))
        assert flocks == [20]
    finally:
        h.close()


def test_a_rotation_waits_for_the_record_the_sole_writer_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S is inside its write(2) when T opens the log and rotates it with compression: T waits,
    so S's record is in the backup T compressed (without the fence it went to an unlinked file)."""
    path = tmp_path / "app.log"
    s = RotatingFileHandler(path, maxBytes=10**6, backupCount=3, compress=True)
    waited = threading.Event()
    progress = threading.Event()  # T waits for S, or T finished
    real_pread = _fs.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        data = real_pread(fd, length, offset)
        if length == FILE_SIZE and data[SLOT0:].strip(b"\0"):
            # An exclusive holder read the slots and found a record in progress.
            waited.set()
            progress.set()
        return data

    errors: list[BaseException] = []

    def rotator() -> None:
        try:
            t = RotatingFileHandler(path, maxBytes=10**6, backupCount=3, compress=True)
            t.doRollover()
            t.close()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            progress.set()

    try:
        s.emit(_rec("first"))
        s.emit(_rec("second"))  # without the lock from here on
        inside, release = _pause_write_of(monkeypatch, b"third")
        monkeypatch.setattr(_fs, "pread", pread)
        writer = threading.Thread(target=s.emit, args=(_rec("third"),))
        writer.start()
        assert inside.wait(WAIT)
        rot = threading.Thread(target=rotator)
        rot.start()
        assert progress.wait(WAIT)
        release.set()
        writer.join(WAIT)
        rot.join(WAIT)
        assert not writer.is_alive() and not rot.is_alive()
    finally:
        s.close()
    assert errors == []
    assert waited.is_set()
    assert gzip.decompress((tmp_path / "app.log.1.gz").read_bytes()) == b"first\nsecond\nthird\n"
    assert path.read_bytes() == b""


def test_without_a_barrier_the_exclusive_holder_waits_for_the_writer_to_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T's system refuses membarrier: T waits until S lets go of its byte, at S's next record
    (which then waits for T like any writer), never while S is in a record."""
    path = tmp_path / "app.log"
    s = RotatingFileHandler(path, maxBytes=10**6, backupCount=3)
    tried = threading.Event()  # T tried a barrier: it holds the lock exclusively now
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def no_fence() -> bool:
        tried.set()
        return False

    waiting = threading.Event()  # T polls for the slots to be let go, or T went on
    real_getlk = _fs.ofd_getlk

    def getlk(fd: int, kind: int, start: int = 0, length: int = 1) -> int:
        if tried.is_set() and (start, length) == (SLOT0, FILE_SIZE - SLOT0):
            waiting.set()
        return real_getlk(fd, kind, start, length)

    real_fence = sidecar_module.Sidecar.fence

    def fence(side: sidecar_module.Sidecar) -> None:
        real_fence(side)
        seen.append(path.read_bytes())  # what is written once the fence let T go on
        waiting.set()

    def newcomer() -> None:
        try:
            t = RotatingFileHandler(path, maxBytes=10**6, backupCount=3)
            t.emit(_rec("from T"))
            t.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        s.emit(_rec("first"))
        s.emit(_rec("second"))
        inside, release = _pause_write_of(monkeypatch, b"third")
        monkeypatch.setattr(barrier_module, "fence", no_fence)
        monkeypatch.setattr(sidecar_module.Sidecar, "fence", fence)
        monkeypatch.setattr(_fs, "ofd_getlk", getlk)
        writer = threading.Thread(target=s.emit, args=(_rec("third"),))
        writer.start()
        assert inside.wait(WAIT)
        t = threading.Thread(target=newcomer)
        t.start()
        assert waiting.wait(WAIT)  # T waits for S's slot (or, wrongly, went on)
        release.set()
        writer.join(WAIT)
        assert not writer.is_alive()
        s.emit(_rec("fourth"))  # sees the fence word, lets go, waits for T's hold
        t.join(WAIT)
        assert not t.is_alive()
    finally:
        s.close()
    assert errors == []
    assert seen == [b"first\nsecond\nthird\n"]
    assert path.read_bytes() in (b"first\nsecond\nthird\nfourth\nfrom T\n",
                                 b"first\nsecond\nthird\nfrom T\nfourth\n")


def test_a_newcomer_sends_the_sole_writer_back_to_the_lock_until_it_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S's first record after T opened takes the lock (and measures the file T wrote to);
    then both append without it, measuring; once T closed (closing fences nobody), S keeps
    measuring until it asks again, within RECHECK records, and goes back to counting."""
    path = tmp_path / "app.log"
    s = RotatingFileHandler(path, maxBytes=10**9, backupCount=3)
    try:
        s.emit(_rec("a" * 9))
        s.emit(_rec("b" * 9))  # without the lock
        t = RotatingFileHandler(path, maxBytes=10**9, backupCount=3)
        t.emit(_rec("c" * 14))  # t appends without the lock too
        flocks, lseeks = _count(monkeypatch, "flock"), _count(monkeypatch, "lseek")
        s.emit(_rec("d" * 4))  # the fence word moved at t's open: back to the lock once
        assert flocks[0] >= 2 and lseeks[0] >= 1
        t.close()
        flocks[0] = lseeks[0] = 0
        for _ in range(sole_module.RECHECK + 1):
            s.emit(_rec(""))  # without the lock, measured until S asks again
        assert 0 < flocks[0] <= 4  # the one record that asked again, under the lock
        assert sole_module.RECHECK - 2 <= lseeks[0] <= sole_module.RECHECK + 1
        flocks[0] = lseeks[0] = 0
        for _ in range(5):
            s.emit(_rec(""))
        assert (flocks, lseeks) == ([0], [0])  # alone again: counting, without the lock
    finally:
        s.close()
    assert path.read_bytes() == b"a" * 9 + b"\n" + b"b" * 9 + b"\n" + b"c" * 14 + b"\n" + (
        b"dddd\n" + b"\n" * (sole_module.RECHECK + 6))


KILLED_WRITER = r"""
import logging, sys
from racefree import _fs
from racefree.logging import RotatingFileHandler
h = RotatingFileHandler(sys.argv[1], maxBytes=10**6, backupCount=3)
for msg in ("one", "two"):
    h.emit(logging.makeLogRecord({"msg": msg}))
real = _fs.write
def write(fd, data):
    print("inside", flush=True)
    sys.stdin.readline()  # never answered: killed here, "in a record"
    return real(fd, data)
_fs.write = write
h.emit(logging.makeLogRecord({"msg": "three"}))
"""


def test_a_sole_writer_killed_in_a_record_blocks_nobody(tmp_path: Path) -> None:
    """SIGKILL inside the lock-free record leaves "in a record" set; its byte lock died with it,
    so the next exclusive holder goes ahead at once."""
    path = tmp_path / "app.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), *sys.path]))
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], WAIT)
        assert ready and child.stdout.readline() == b"inside\n"
        child.send_signal(signal.SIGKILL)
        assert child.wait(WAIT) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)
    assert len(_in_record(path)) == 1
    t = RotatingFileHandler(path, maxBytes=10**6, backupCount=3, lock_timeout=WAIT)
    try:
        t.emit(_rec("four"))
        t.doRollover()
    finally:
        t.close()
    assert (tmp_path / "app.log.1").read_bytes() == b"one\ntwo\nfour\n"


SOLE_LOGGER = r"""
import logging, sys
from racefree.logging import RotatingFileHandler
h = RotatingFileHandler(sys.argv[1], maxBytes=10**9, backupCount=100000, compress=True)
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    h.emit(logging.makeLogRecord({"msg": f"S {i:07d} " + "x" * (i % 97)}))
h.close()
"""


def _all_lines(directory: Path) -> list[bytes]:
    """Every line of app.log's backups, oldest first (plain or gzipped), then app.log."""
    numbered: list[tuple[int, Path]] = []
    for entry in directory.iterdir():
        m = re.fullmatch(r"app\.log\.(\d+)(\.gz)?", entry.name)
        if m:
            numbered.append((int(m.group(1)), entry))
    numbered.sort(reverse=True)
    lines: list[bytes] = []
    for _, entry in numbered:
        data = entry.read_bytes()
        lines += (gzip.decompress(data) if entry.name.endswith(".gz") else data).splitlines()
    lines += (directory / "app.log").read_bytes().splitlines()
    return lines


@pytest.mark.timeout(300)
def test_newcomers_rotating_and_compressing_under_a_lone_writer_lose_nothing(
    tmp_path: Path,
) -> None:
    """One process logs 20,000 records alone, without the lock; meanwhile another opens the
    log, rotates it with compression and closes it, again and again (each time S is fenced
    out, then alone again). Every record of S is found once, in order, whole."""
    path = tmp_path / "app.log"
    records = 20_000
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), *sys.path]))
    child = subprocess.Popen([sys.executable, "-c", SOLE_LOGGER, str(path), str(records)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    rotations = 0
    try:
        assert child.stdout is not None and child.stdin is not None
        ready, _, _ = select.select([child.stdout], [], [], WAIT)
        assert ready and child.stdout.readline() == b"ready\n"
        child.stdin.write(b"go\n")
        child.stdin.flush()
        while child.poll() is None and rotations < 2_000:
            t = RotatingFileHandler(path, maxBytes=10**9, backupCount=100000, compress=True)
            try:
                t.doRollover()
            finally:
                t.close()
            rotations += 1
        assert child.wait(WAIT * 4) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)
    assert rotations > 0
    expected = [f"S {i:07d} ".encode() + b"x" * (i % 97) for i in range(records)]
    assert _all_lines(tmp_path) == expected


class _Clock:
    """A monotonic clock for the sidecar's waits: each reading is 1 ms after the one before."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.001
        return self.now

    def sleep(self, seconds: float) -> None:
        pass


def test_a_slot_held_in_a_record_for_good_costs_one_full_wait_then_short_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another holder of a slot whose word stays 1 (a stopped writer, or anyone who may lock
    the sidecar of a log others write): the first exclusive step waits lock_timeout, the
    next ones at most STALLED_WAIT, as for a held lock (not lock_timeout each time)."""
    path = tmp_path / "app.log"
    h = RotatingFileHandler(path, maxBytes=10**6, backupCount=3, lock_timeout=5.0)
    other = os.open(tmp_path / ".app.log.lock", os.O_RDWR)
    try:
        h.emit(_rec("one"))
        _fs.ofd_setlk(other, fcntl.F_WRLCK, SLOT0 + 5 * SLOT_STRIDE, 1)
        os.pwrite(other, (1).to_bytes(8, "little"), SLOT0 + 5 * SLOT_STRIDE)
        clock = _Clock()
        monkeypatch.setattr(sidecar_module, "time", clock)
        waits = []
        for _ in range(3):
            start = clock.now
            with pytest.raises(LockTimeout):
                h.doRollover()
            waits.append(clock.now - start)
        assert 5.0 <= waits[0] < 5.1
        assert all(sidecar_module.STALLED_WAIT <= w < 0.1 for w in waits[1:]), waits
        os.pwrite(other, bytes(8), SLOT0 + 5 * SLOT_STRIDE)  # out of its record
        h.doRollover()
    finally:
        os.close(other)
        h.close()
    assert (tmp_path / "app.log.1").read_bytes() == b"one\n"


def _free_slot(sidecar: Path) -> int:
    """A slot no handler holds (its lock byte free), found from a descriptor of our own."""
    fd = os.open(sidecar, os.O_RDWR)
    try:
        for i in range(SLOTS):
            if _fs.ofd_getlk(fd, fcntl.F_WRLCK, SLOT0 + i * SLOT_STRIDE, 1) == fcntl.F_UNLCK:
                return i
    finally:
        os.close(fd)
    raise AssertionError("every slot held")


@pytest.mark.parametrize("stale", ["another slot", "the slot the writer takes"])
def test_a_dead_writers_in_record_word_never_holds_a_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale: str
) -> None:
    """A word left at 1 by a writer that died in a record, while a live writer holds a slot:
    at another slot (no lock held there: it means nothing), or at the very slot the live
    writer took afterwards (cleared when taken). The rotation goes on at once; with the
    fake clock a wait would end in LockTimeout."""
    path = tmp_path / "app.log"
    sidecar = tmp_path / ".app.log.lock"
    if stale == "the slot the writer takes":
        # Before the writer opens: every slot's word says "in a record", no lock held.
        RotatingFileHandler(path, maxBytes=10**6, backupCount=3).close()
        with open(sidecar, "r+b") as f:
            for i in range(SLOTS):
                f.seek(SLOT0 + i * SLOT_STRIDE)
                f.write((1).to_bytes(8, "little"))
    w = RotatingFileHandler(path, maxBytes=10**6, backupCount=3)  # takes a slot at open
    try:
        if stale == "another slot":
            at = SLOT0 + _free_slot(sidecar) * SLOT_STRIDE
            with open(sidecar, "r+b") as f:
                f.seek(at)
                f.write((1).to_bytes(8, "little"))
        monkeypatch.setattr(sidecar_module, "time", _Clock())
        # T's open and rotation fence w out while w has written nothing yet.
        t = RotatingFileHandler(path, maxBytes=10**6, backupCount=3, lock_timeout=5.0)
        try:
            t.emit(_rec("one"))
            t.doRollover()
        finally:
            t.close()
        w.emit(_rec("two"))
    finally:
        w.close()
    assert (tmp_path / "app.log.1").read_bytes() == b"one\n"
    assert path.read_bytes() == b"two\n"


def test_a_write_that_fails_part_way_without_the_lock_is_ended_by_the_next_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record's write(2) stops part-way (a full disk) while the writer appends without the
    lock: the write-in-progress mark is set, so the next record is written exclusively,
    after a newline that ends the torn one (not on its line)."""
    path = tmp_path / "app.log"
    h = RotatingFileHandler(path, maxBytes=10**6, backupCount=3)
    errors: list[BaseException] = []
    monkeypatch.setattr(h, "handleError", lambda record: errors.append(sys.exc_info()[1]))
    try:
        h.emit(_rec("first"))
        h.emit(_rec("second"))  # without the lock from here on
        real_write, real_write_all = _fs.write, _fs.write_all

        def short(fd: int, data: bytes | memoryview) -> int:
            return real_write(fd, bytes(data)[:3])

        def full(fd: int, data: bytes | memoryview) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(_fs, "write", short)
        monkeypatch.setattr(_fs, "write_all", full)
        h.emit(_rec("third"))
        monkeypatch.setattr(_fs, "write", real_write)
        monkeypatch.setattr(_fs, "write_all", real_write_all)
        h.emit(_rec("fourth"))
    finally:
        h.close()
    assert [type(e) for e in errors] == [OSError]
    assert path.read_bytes() == b"first\nsecond\nthi\nfourth\n"


def test_an_interrupted_fence_leaves_the_lock_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt (KeyboardInterrupt from a signal handler) while an exclusive holder waits
    for a writer's record: the exclusive flock is let go with it, not kept until this
    process logs again (every other process's open and rotation would time out)."""
    path = tmp_path / "app.log"
    w = RotatingFileHandler(path, maxBytes=10**6, backupCount=3)
    b = RotatingFileHandler(path, maxBytes=10**6, backupCount=3)
    try:
        b.emit(_rec("one"))

        def interrupted() -> bool:
            raise KeyboardInterrupt

        monkeypatch.setattr(barrier_module, "fence", interrupted)
        with pytest.raises(KeyboardInterrupt):
            b.doRollover()  # w holds a slot: the fence runs, and is interrupted
        monkeypatch.undo()
        probe = os.open(tmp_path / ".app.log.lock", os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if kept
            fcntl.flock(probe, fcntl.LOCK_UN)
        finally:
            os.close(probe)
        w.emit(_rec("two"))
    finally:
        b.close()
        w.close()
    assert path.read_bytes() == b"one\ntwo\n"
