"""racefree's handlers as a drop-in for the standard library's: one test per migration case.

Each case is something a user moving from ``logging.handlers`` relies on: a
subclass's ``namer``/``rotator`` methods, pruning with a namer, ``mode="w"``,
``os.devnull``, the ``FileHandler`` API (``stream``, ``setStream``, ``_open``,
``rolloverAt``), replacing the stdlib classes globally, and ``shouldRollover``.
"""

from __future__ import annotations

import gzip
import io
import logging
import logging.config
import logging.handlers
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from racefree.logging import RotatingFileHandler, TimedRotatingFileHandler


def _rec(msg: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": msg})


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_namer_and_rotator_defined_as_subclass_methods_are_used(tmp_path: Path) -> None:
    """A subclass that gzips in its rotator method (and names backups .gz in its namer)
    gets compressed backups: the methods are not hidden by instance attributes."""

    class Gzipping(RotatingFileHandler):
        def namer(self, name: str) -> str:
            return name + ".gz"

        def rotator(self, source: str, dest: str) -> None:
            with open(source, "rb") as src, gzip.open(dest, "wb") as dst:
                dst.write(src.read())
            os.remove(source)

    h = Gzipping(tmp_path / "app.log", maxBytes=10, backupCount=2)
    try:
        for msg in ("aaaaaaaa", "bbbbbbbb", "cccccccc"):
            h.emit(_rec(msg))
    finally:
        h.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".app.log.lock", "app.log", "app.log.1.gz", "app.log.2.gz"]
    assert gzip.decompress((tmp_path / "app.log.2.gz").read_bytes()) == b"aaaaaaaa\n"
    assert gzip.decompress((tmp_path / "app.log.1.gz").read_bytes()) == b"bbbbbbbb\n"
    assert (tmp_path / "app.log").read_bytes() == b"cccccccc\n"


def test_timed_rotation_with_a_namer_prunes_to_backup_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backupCount=1 with a namer that moves the time into the middle of the name: after
    three rollovers exactly one backup is left, the newest."""
    clock = FakeClock(1_800_000_000.0)  # 2027-01-15 08:00:00 UTC
    monkeypatch.setattr(time, "time", clock)
    h = TimedRotatingFileHandler(tmp_path / "t.log", when="M", backupCount=1, utc=True)
    h.namer = lambda name: name.replace(".log", "") + ".log"
    try:
        for minute in range(4):  # m0 .. m3: three rollovers
            h.emit(_rec(f"m{minute}"))
            clock.now += 60
    finally:
        h.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".t.log.lock", "t.2027-01-15_08-02.log", "t.log"]
    assert (tmp_path / "t.2027-01-15_08-02.log").read_bytes() == b"m2\n"


def test_mode_w_from_dict_config_truncates_when_never_rotating(tmp_path: Path) -> None:
    """mode "w" loads from dictConfig: with maxBytes 0 the file is truncated at open (as the
    stdlib does); with maxBytes > 0 the stdlib appends, and so does racefree."""
    (tmp_path / "w.log").write_bytes(b"old\n")
    (tmp_path / "r.log").write_bytes(b"old\n")
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {
            "w": {"class": "racefree.logging.RotatingFileHandler", "formatter": "plain",
                  "filename": str(tmp_path / "w.log"), "mode": "w"},
            "r": {"class": "racefree.logging.RotatingFileHandler", "formatter": "plain",
                  "filename": str(tmp_path / "r.log"), "mode": "w", "maxBytes": 1000,
                  "backupCount": 2},
        },
        "loggers": {"modew": {"handlers": ["w", "r"], "level": "INFO", "propagate": False}},
    }
    logging.config.dictConfig(config)
    log = logging.getLogger("modew")
    try:
        log.info("new")
    finally:
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
    assert (tmp_path / "w.log").read_bytes() == b"new\n"
    assert (tmp_path / "r.log").read_bytes() == b"old\nnew\n"


def _null_device(tmp_path: Path) -> str:
    """A character device to log to: a private null device where this process may make one
    (root), so that a handler that wrongly rotated it would rename only that; else
    os.devnull."""
    if os.geteuid() == 0:
        node = tmp_path / "dev" / "null"
        node.parent.mkdir()
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        return str(node)
    return os.devnull


def test_a_handler_on_devnull_makes_no_sidecar(tmp_path: Path) -> None:
    """A character device such as os.devnull is written as the stdlib writes it: no sidecar
    next to the device (which would need a writable /dev), never a rotation (the device
    keeps its name), shouldRollover False."""
    device = _null_device(tmp_path)
    sidecar = Path(os.path.dirname(device)) / f".{os.path.basename(device)}.lock"
    assert not sidecar.exists()
    for cls, args in ((RotatingFileHandler, {"maxBytes": 1, "backupCount": 1}),
                      (TimedRotatingFileHandler, {"when": "S", "backupCount": 1})):
        h = cls(device, **args)
        try:
            h.emit(_rec("to the void"))
            h.emit(_rec("and again"))
            assert h.shouldRollover(_rec("x")) is False
        finally:
            h.close()
    assert not sidecar.exists()
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert not os.path.exists(device + ".1")


def test_the_filehandler_api(tmp_path: Path) -> None:
    """isinstance BaseRotatingHandler and FileHandler; stream (None until opened with delay),
    stream.write/tell/fileno, _open(), setStream to another stream and back; rolloverAt is
    the next rollover from construction on, also with delay=True."""
    h = RotatingFileHandler(tmp_path / "app.log", delay=True)
    assert isinstance(h, logging.handlers.BaseRotatingHandler)
    assert isinstance(h, logging.FileHandler)
    assert h.stream is None and not (tmp_path / "app.log").exists()
    stream = h._open()
    assert h.stream is stream and (tmp_path / "app.log").exists()
    h.setFormatter(logging.Formatter("%(message)s"))
    stream.write("direct\n")
    h.handle(_rec("one"))
    assert stream.tell() == len(b"direct\none\n")
    assert os.fstat(stream.fileno()).st_ino == (tmp_path / "app.log").stat().st_ino
    other = io.StringIO()
    assert h.setStream(other) is stream
    h.handle(_rec("elsewhere"))
    assert h.setStream(stream) is other
    h.handle(_rec("two"))
    h.close()
    assert h.stream is None
    assert other.getvalue() == "elsewhere\n"
    assert (tmp_path / "app.log").read_bytes() == b"direct\none\ntwo\n"
    before = int(time.time())
    t = TimedRotatingFileHandler(tmp_path / "t.log", when="H", delay=True)
    try:
        assert before < t.rolloverAt <= before + 3600
    finally:
        t.close()


TIMED_SWAP = r"""
import logging, logging.handlers, sys
import racefree.logging as rl
logging.handlers.RotatingFileHandler = rl.RotatingFileHandler
logging.handlers.TimedRotatingFileHandler = rl.TimedRotatingFileHandler
h = logging.handlers.TimedRotatingFileHandler(sys.argv[1], when="S", backupCount=1)
logging.raiseExceptions = True
h.emit(logging.makeLogRecord({"msg": "timed"}))
h.rolloverAt = 1  # due now: the next record rotates, calling computeRollover
h.emit(logging.makeLogRecord({"msg": "after"}))
h.close()
print("ok")
"""


def test_replacing_the_stdlib_classes_globally(tmp_path: Path) -> None:
    """logging.handlers.{Rotating,TimedRotating}FileHandler replaced by racefree's (a common
    migration path): a timed rollover computes its next time without calling itself."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", TIMED_SWAP, str(tmp_path / "t.log")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert proc.stdout == "ok\n"
    assert (tmp_path / "t.log").read_bytes() == b"after\n"
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("t.log.")]
    assert [p.read_bytes() for p in backups] == [b"timed\n"]


def test_should_rollover_gives_the_stdlib_answer(tmp_path: Path) -> None:
    """shouldRollover as the running interpreter's stdlib: for an empty file whose next
    record reaches maxBytes, True before 3.12.6 and False from it on (gh-116263); True with
    backupCount 0, and no formatting at all when maxBytes is 0."""
    empty = RotatingFileHandler(tmp_path / "a.log", maxBytes=1)
    no_backups = RotatingFileHandler(tmp_path / "b.log", maxBytes=10, backupCount=0)
    never = RotatingFileHandler(tmp_path / "c.log", maxBytes=0)
    try:
        assert empty.shouldRollover(_rec("x")) is (sys.version_info < (3, 12, 6))
        no_backups.emit(_rec("12345678"))
        assert no_backups.shouldRollover(_rec("x")) is True
        assert never.shouldRollover(None) is False  # type: ignore[arg-type]
        # emit still never makes an empty backup, nor rotates without backups
        empty.emit(_rec("x"))
        no_backups.emit(_rec("x"))
    finally:
        for h in (empty, no_backups, never):
            h.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".a.log.lock", ".b.log.lock", ".c.log.lock", "a.log", "b.log", "c.log"]
    assert (tmp_path / "b.log").read_bytes() == b"12345678\nx\n"


def test_a_subclass_should_rollover_and_do_rollover_are_called(tmp_path: Path) -> None:
    """A subclass that decides rotation in shouldRollover and wraps doRollover (as code
    written for the stdlib does) has both called by emit, once per rotation."""
    calls: list[str] = []

    class Custom(RotatingFileHandler):
        def shouldRollover(self, record: logging.LogRecord) -> bool:
            return str(record.msg).startswith("ROTATE")

        def doRollover(self) -> None:
            calls.append("before")
            super().doRollover()
            calls.append("after")

    h = Custom(tmp_path / "app.log", backupCount=3)
    try:
        for msg in ("a", "ROTATE b", "c", "ROTATE d"):
            h.emit(_rec(msg))
    finally:
        h.close()
    assert calls == ["before", "after", "before", "after"]
    assert (tmp_path / "app.log.2").read_bytes() == b"a\n"
    assert (tmp_path / "app.log.1").read_bytes() == b"ROTATE b\nc\n"
    assert (tmp_path / "app.log").read_bytes() == b"ROTATE d\n"


STDOUT_CHILD = """
import logging
from racefree.logging import RotatingFileHandler
handler = RotatingFileHandler("/dev/stdout")
handler.handle(logging.makeLogRecord({"msg": "through the pipe"}))
handler.close()
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="no /proc/self/fd here")
def test_dev_stdout_when_output_is_piped(tmp_path: Path) -> None:
    """A container's usual log target: /dev/stdout -> /proc/self/fd/1 -> pipe:[N], a link
    only the kernel can follow. Written as the stdlib writes it (no sidecar, no rotation)."""
    done = subprocess.run([sys.executable, "-c", STDOUT_CHILD], capture_output=True,
                          timeout=60, check=False, cwd=tmp_path)
    assert done.stderr == b""
    assert done.stdout == b"through the pipe\n"
    assert list(tmp_path.iterdir()) == []


STDOUT_FILE_CHILD = """
import logging, os, sys
from racefree.logging import RotatingFileHandler
path, max_bytes = sys.argv[1].replace("PID", str(os.getpid())), int(sys.argv[2])
handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=2)
for msg in ("first record", "second record"):
    handler.handle(logging.makeLogRecord({"msg": msg}))
handler.close()
print(os.path.lexists("/dev/.stdout.lock"), flush=True)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="no /proc/self/fd here")
@pytest.mark.parametrize(("path", "max_bytes"), [
    ("/proc/self/fd/1", 10), ("/dev/stdout", 0), ("//dev/stdout", 0), ("/dev/fd/1", 10),
    ("/proc/thread-self/fd/1", 10), ("/proc/PID/fd/1", 10),
])
def test_a_process_stream_redirected_to_a_file(tmp_path: Path, path: str, max_bytes: int) -> None:
    """/dev/stdout or /proc/self/fd/1 leading to a file the shell opened: written in place,
    never rotated (the stdlib would rename the link itself), no sidecar beside the link.
    (The rotation is tried through /proc, where a rename cannot succeed: a regression here
    must not rename /dev/stdout on the machine that runs the tests.)"""
    sidecar = Path("/dev/.stdout.lock")
    existed = sidecar.exists()
    out = tmp_path / "out.txt"
    with open(out, "ab") as f:
        done = subprocess.run([sys.executable, "-c", STDOUT_FILE_CHILD, path, str(max_bytes)],
                              stdout=f, stderr=subprocess.PIPE, timeout=60, check=False,
                              cwd=tmp_path)
    if not existed and sidecar.exists():
        sidecar.unlink()  # made by a regression: not left behind
    assert done.stderr == b""
    assert out.read_bytes() == b"first record\nsecond record\n" + (
        b"True\n" if existed else b"False\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="no /proc/self/fd here")
def test_a_log_in_a_directory_named_through_a_descriptor(tmp_path: Path) -> None:
    """/proc/self/fd/N/app.log, N an open directory: a log file like any other (shared,
    rotated), not the process's stream, as with the stdlib."""
    logs = tmp_path / "logs"
    logs.mkdir()
    dirfd = os.open(logs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        handler = RotatingFileHandler(f"/proc/self/fd/{dirfd}/app.log", maxBytes=20,
                                      backupCount=2)
        for msg in ("first record", "second record", "third record"):
            handler.handle(logging.makeLogRecord({"msg": msg}))
        handler.close()
    finally:
        os.close(dirfd)
    assert sorted(p.name for p in logs.iterdir()) == [
        ".app.log.lock", "app.log", "app.log.1", "app.log.2"]
    assert (logs / "app.log").read_bytes() == b"third record\n"


@pytest.mark.parametrize(("given", "limit", "count"), [
    ({"maxBytes": 1e6, "backupCount": 3}, 1_000_000, 3),
    ({"maxBytes": 10 * 1024**2 / 2, "backupCount": 3}, 5_242_880, 3),
    ({"maxBytes": 10.5, "backupCount": 2.0}, 11, 2),
    ({"maxBytes": -1, "backupCount": 5}, 0, 5),
    ({"maxBytes": 100, "backupCount": -1}, 100, 0),
    ({"maxBytes": float("nan")}, 0, 0),
])
def test_size_and_count_as_the_stdlib_takes_them(
    tmp_path: Path, given: dict[str, Any], limit: int, count: int
) -> None:
    """Floats (``1e6``, ``10 * 1024**2 / 2``, common in configurations) and values of 0 or
    less (no rollover) are accepted as by the stdlib, which compares them; a string is a
    ``TypeError`` there and here."""
    stdlib = logging.handlers.RotatingFileHandler(tmp_path / "std.log", **given)
    stdlib.close()
    h = RotatingFileHandler(tmp_path / "a.log", **given)
    try:
        assert (h.maxBytes, h.backupCount) == (limit, count)
    finally:
        h.close()
    with pytest.raises(TypeError):
        RotatingFileHandler(tmp_path / "b.log", maxBytes="5")  # type: ignore[arg-type]


def test_a_float_size_rotates_where_the_stdlib_does(tmp_path: Path) -> None:
    """maxBytes=12.5 rotates where the stdlib's ``size + record >= 12.5`` does: at 13
    bytes, not at 12."""
    h = RotatingFileHandler(tmp_path / "a.log", maxBytes=12.5, backupCount=1)
    try:
        h.handle(_rec("aaaaa"))  # 6 bytes
        h.handle(_rec("bbbbbb"))  # 6 + 7 = 13 >= 12.5: rotates
        h.handle(_rec("cccc"))  # 7 + 5 = 12 < 12.5: stays
    finally:
        h.close()
    assert (tmp_path / "a.log.1").read_bytes() == b"aaaaa\n"
    assert (tmp_path / "a.log").read_bytes() == b"bbbbbb\ncccc\n"


@pytest.mark.parametrize("cls", [logging.handlers.TimedRotatingFileHandler,
                                 TimedRotatingFileHandler])
def test_a_restart_with_a_new_schedule_runs_on_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[logging.Handler]
) -> None:
    """Run 1 logs daily; the program restarts logging every second: three records 1.1 s
    apart make three backups, as with the stdlib (before, racefree kept run 1's rollover
    time, stored in the sidecar, a day away: no backup). Run with both classes."""
    clock = FakeClock(float(int(time.time())))
    monkeypatch.setattr(time, "time", clock)
    log = tmp_path / "a.log"
    h = cls(log, when="D")  # type: ignore[call-arg]
    h.handle(_rec("run 1"))
    h.close()
    h = cls(log, when="S")  # type: ignore[call-arg]
    try:
        for i in range(3):
            clock.now += 1.1
            h.handle(_rec(f"run 2, {i}"))
    finally:
        h.close()
    backups = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("a.log."))
    assert len(backups) == 3
    assert log.read_bytes() == b"run 2, 2\n"


def test_handlers_of_one_schedule_share_its_rollover_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second handler with the same schedule, opened later, keeps the stored time (a
    rollover already moved on by the first): the schedule mark only replaces a time
    computed for another schedule."""
    clock = FakeClock(1_800_000_000.0)
    monkeypatch.setattr(time, "time", clock)
    log = tmp_path / "a.log"
    first = TimedRotatingFileHandler(log, when="H", utc=True)
    try:
        first.handle(_rec("one"))
        first.rolloverAt = 1_800_007_200  # moved on, stored in the sidecar for everyone
        second = TimedRotatingFileHandler(log, when="H", utc=True)
        try:
            second.handle(_rec("two"))
            assert second.rolloverAt == 1_800_007_200
        finally:
            second.close()
    finally:
        first.close()


def test_should_rollover_of_an_empty_file_from_python_3_12_6(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the interpreter's stdlib never rolls an empty file over (3.12.6 and later):
    False before the record is formatted (``shouldRollover(None)`` too); a file with
    bytes in it still gets True when the record reaches maxBytes."""
    from racefree.logging import rotating

    monkeypatch.setattr(rotating, "EMPTY_NEVER_ROLLS", True)
    h = RotatingFileHandler(tmp_path / "a.log", maxBytes=1)
    try:
        assert h.shouldRollover(_rec("x")) is False
        assert h.shouldRollover(None) is False  # type: ignore[arg-type]
        h.emit(_rec("x"))
        assert h.shouldRollover(_rec("y")) is True
    finally:
        h.close()


def test_another_schedule_never_pushes_the_shared_rollover_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored time is computed for when="S", interval=4. A handler of interval=4.0 is the
    same schedule (its mark matches: the time stays); one of another schedule (interval=5,
    starting later) may only bring the time earlier, never later (before: processes that
    started every second with another schedule kept pushing it away: no rotation at all)."""
    clock = FakeClock(float(int(time.time())))
    monkeypatch.setattr(time, "time", clock)
    log = tmp_path / "a.log"
    first = TimedRotatingFileHandler(log, when="S", interval=4, utc=True)
    try:
        first.handle(_rec("one"))
        at = first.rolloverAt
        for interval in (4.0, 5):
            clock.now += 1
            other = TimedRotatingFileHandler(log, when="S", interval=interval, utc=True)
            try:
                other.handle(_rec(f"interval {interval}"))
                assert other.rolloverAt == at
            finally:
                other.close()
    finally:
        first.close()
