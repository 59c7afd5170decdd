"""What racefree's handlers write is what the standard formatter makes, byte for byte.

The handlers reuse the time text of the last second (``racefree.logging.formatting``):
each test writes the same records through racefree's handler and through the
standard ``FileHandler`` with the same formatter, and compares the two files.
Each case is one the cache must step aside for: it fails if the cache ignores it.
"""

from __future__ import annotations

import codecs
import copy
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from racefree import _fs
from racefree.logging import RotatingFileHandler
from racefree.logging.formatting import numeric_format

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: Two records in one second (0.25 s and 0.75 s into it), then one in the next.
CREATED = (1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5)


def _records() -> list[logging.LogRecord]:
    out = []
    for i, created in enumerate(CREATED):
        record = logging.makeLogRecord({"msg": "record %d of %s", "args": (i, "three"),
                                        "name": "app", "levelname": "INFO"})
        record.created = created
        record.msecs = (created - int(created)) * 1000
        out.append(record)
    return out


def _both(
    tmp_path: Path, formatter: logging.Formatter, records: list[logging.LogRecord],
    between: Callable[[int], None] = lambda i: None,
) -> tuple[bytes, bytes]:
    """(racefree's file, the stdlib FileHandler's file) after the same records."""
    tmp_path = tmp_path / str(len(list(tmp_path.iterdir())))  # new files at each call
    tmp_path.mkdir()
    ours = RotatingFileHandler(tmp_path / "ours.log")
    theirs = logging.FileHandler(tmp_path / "theirs.log")
    try:
        for handler in (ours, theirs):
            handler.setFormatter(formatter)
        for i, record in enumerate(records):
            between(i)
            ours.handle(copy.copy(record))
            theirs.handle(copy.copy(record))
    finally:
        ours.close()
        theirs.close()
    return (tmp_path / "ours.log").read_bytes(), (tmp_path / "theirs.log").read_bytes()


def test_default_formatter_with_milliseconds(tmp_path: Path) -> None:
    ours, theirs = _both(tmp_path, logging.Formatter(FORMAT), _records())
    assert ours == theirs
    assert ours.count(b",250 INFO app record 0 of three\n") == 1  # the milliseconds differ
    assert ours.count(b",750 INFO app record 1 of three\n") == 1


def test_datefmt_and_no_milliseconds(tmp_path: Path) -> None:
    ours, theirs = _both(tmp_path, logging.Formatter(FORMAT, datefmt="%H:%M:%S %Y"), _records())
    assert ours == theirs
    formatter = logging.Formatter(FORMAT)
    formatter.default_msec_format = None  # type: ignore[assignment]
    ours, theirs = _both(tmp_path, formatter, _records())
    assert ours == theirs


@pytest.fixture
def zone() -> Iterator[Callable[[str], None]]:
    """Switch the time zone (TZ and time.tzset), restored afterwards."""
    if not hasattr(time, "tzset"):
        pytest.skip("no time.tzset on this system")
    before = os.environ.get("TZ")

    def switch(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield switch
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_a_time_zone_change_within_one_second(tmp_path: Path, zone: Callable[[str], None]) -> None:
    """Records 0 and 1 share a second: the zone set between them shows in record 1."""
    zone("UTC0")
    ours, theirs = _both(tmp_path, logging.Formatter("%(asctime)s %(message)s"), _records(),
                         between=lambda i: zone("JST-9") if i == 1 else None)
    assert ours == theirs
    assert ours.splitlines()[0].startswith(b"2023-11-14 22:13:20,250")
    assert ours.splitlines()[1].startswith(b"2023-11-15 07:13:20,750")


def test_converters(tmp_path: Path, zone: Callable[[str], None]) -> None:
    zone("JST-9")
    gm = logging.Formatter(FORMAT)
    gm.converter = time.gmtime  # type: ignore[method-assign]
    assert _both(tmp_path, gm, _records())[0].startswith(b"2023-11-14 22:13:20,250")
    ours, theirs = _both(tmp_path, gm, _records())
    assert ours == theirs
    calls = []

    def shifted(t: float | None) -> time.struct_time:  # not a pure function of the second
        calls.append(t)
        return time.gmtime((t or 0) + 3600 * len(calls))

    own = logging.Formatter(FORMAT)
    own.converter = shifted  # type: ignore[method-assign,assignment]
    ours = _both(tmp_path, own, _records())[0]
    # Each record's converter was called (twice each: once per handler), none reused.
    assert len(calls) == 6
    assert [line[11:13] for line in ours.splitlines()] == [b"23", b"01", b"03"]


def test_formatters_that_format_time_their_own_way(tmp_path: Path) -> None:
    class Stamped(logging.Formatter):
        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
            return f"T{record.created:.2f}"

    ours, theirs = _both(tmp_path, Stamped(FORMAT), _records())
    assert ours == theirs
    assert ours.startswith(b"T1700000000.25 INFO")

    patched = logging.Formatter(FORMAT)
    patched.formatTime = lambda record, datefmt=None: f"P{record.created:.2f}"  # type: ignore[method-assign]
    ours, theirs = _both(tmp_path, patched, _records())
    assert ours == theirs
    assert ours.startswith(b"P1700000000.25 INFO")


def test_a_method_set_after_the_first_record(tmp_path: Path) -> None:
    formatter = logging.Formatter(FORMAT)
    records = _records()

    def between(i: int) -> None:
        if i == 1:
            formatter.formatTime = lambda r, d=None: "LATE"  # type: ignore[method-assign]

    ours, theirs = _both(tmp_path, formatter, records, between)
    assert ours == theirs
    assert [line.split()[0] for line in ours.splitlines()][1:] == [b"LATE", b"LATE"]


def test_exceptions_and_stacks(tmp_path: Path) -> None:
    records = _records()
    try:
        raise ValueError("boom")
    except ValueError:
        records[1].exc_info = sys.exc_info()
    records[2].stack_info = "Stack (most recent call last):\n  here"
    ours, theirs = _both(tmp_path, logging.Formatter(FORMAT), records)
    assert ours == theirs
    assert b"ValueError: boom\n" in ours and ours.endswith(b"  here\n")


def test_a_created_time_made_by_other_means(tmp_path: Path) -> None:
    records = _records()
    records[0].created = int(CREATED[0])  # an int, as a record factory might set
    records[1].created = 0.25
    records[2].created = -0.5  # before 1970: time.localtime floors it to -1, int() to 0
    records[2].msecs = 500.0
    ours, theirs = _both(tmp_path, logging.Formatter(FORMAT), records)
    assert ours == theirs


@pytest.mark.parametrize("backups", [1, 2])
def test_rotation_never_renames_over_a_backup(tmp_path: Path, backups: int) -> None:
    """A rename over an existing file makes ext4 write the renamed file out first, with
    every writer held off: in a shift the oldest backup is removed, then the others move
    into free names (as the stdlib does). The backups still hold exactly the last records."""
    onto: list[tuple[str, bool]] = []

    class Watch(_fs.FileSystem):
        def replace(self, src: str, dst: str) -> None:
            onto.append((os.path.basename(dst), os.path.lexists(dst)))
            super().replace(src, dst)

    handler = RotatingFileHandler(tmp_path / "app.log", maxBytes=20, backupCount=backups)
    with _fs.use(Watch()):
        for i in range(6):  # records of 11 bytes, maxBytes 20: each after the first rotates
            handler.handle(logging.makeLogRecord({"msg": f"record-{i:03d}"}))
    handler.close()
    if backups == 1:
        # Without a shift, the last step stays one rename over the backup (atomic: a
        # rotator or rename that fails leaves the backup as it was).
        assert onto == [("app.log.1", False)] + [("app.log.1", True)] * 4
    else:
        assert onto == [("app.log.1", False)] + [("app.log.2", False), ("app.log.1", False)] * 4
    names = ["app.log", *(f"app.log.{i}" for i in range(1, backups + 1))]
    assert sorted(os.listdir(tmp_path)) == [".app.log.lock", *names]
    assert [(tmp_path / name).read_bytes() for name in names] == [
        f"record-{5 - i:03d}\n".encode() for i in range(backups + 1)
    ]


def test_numeric_formats_only_are_reused() -> None:
    """Names follow the locale, %Z/%z/%s the time zone: those are never reused."""
    assert numeric_format("%Y-%m-%d %H:%M:%S") and numeric_format("%F %T %%a %j")
    for fmt in ("%a", "%A %d", "%b", "%B", "%c", "%p", "%x", "%X", "%r", "%Z", "%z", "%s",
                "%Ey", "%Od", "%h", "%+", "100%"):
        assert not numeric_format(fmt), fmt


LOCALE_CHILD = """
import locale, logging, sys
sys.path.insert(0, sys.argv[2])
from test_record_text import _both, _records
from pathlib import Path
formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%a %d %b %Y %H:%M:%S")
def between(i):
    if i == 1:
        locale.setlocale(locale.LC_TIME, "de_DE.UTF-8")
ours, theirs = _both(Path(sys.argv[1]), formatter, _records()[:2], between)
assert ours == theirs, (ours, theirs)
assert b"Di 14 Nov 2023" in ours, ours
"""


def test_a_locale_change_within_one_second(tmp_path: Path) -> None:
    """``%a`` changes language with LC_TIME between two records of one second."""
    built = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8",
                            str(tmp_path / "de_DE.UTF-8")], capture_output=True, check=False)
    if not (tmp_path / "de_DE.UTF-8").exists():
        pytest.skip(f"cannot build a de_DE locale here: {built.stderr[-200:]!r}")
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, LOCPATH=str(tmp_path), TZ="UTC0",
               PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", LOCALE_CHILD, str(out),
                           str(Path(__file__).parent)], env=env, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_patches_made_on_the_class_or_the_module(tmp_path: Path) -> None:
    """``logging.Formatter.formatTime`` / ``format`` and ``time.strftime`` replaced between
    two records of one second: the second record shows the replacement, as the stdlib's."""
    originals = (logging.Formatter.formatTime, logging.Formatter.format, time.strftime)
    steps: list[Callable[[], None]] = [
        lambda: setattr(logging.Formatter, "formatTime", lambda self, r, d=None: "CLS"),
        lambda: setattr(logging.Formatter, "format",
                        lambda self, r: "FMT " + r.getMessage()),
        lambda: setattr(time, "strftime", lambda fmt, ct=None: "STRF"),
    ]
    try:
        for step, mark in zip(steps, (b"CLS", b"FMT", b"STRF"), strict=True):
            def between(i: int, step: Callable[[], None] = step) -> None:
                if i == 1:
                    step()

            ours, theirs = _both(tmp_path, logging.Formatter(FORMAT), _records(), between)
            logging.Formatter.formatTime, logging.Formatter.format, time.strftime = originals  # type: ignore[method-assign]
            assert ours == theirs
            assert [line.startswith(mark) for line in ours.splitlines()] == [False, True, True]
    finally:
        logging.Formatter.formatTime, logging.Formatter.format, time.strftime = originals  # type: ignore[method-assign]


def test_a_message_that_sets_exc_info(tmp_path: Path) -> None:
    """The stdlib looks at exc_info after getMessage: so must the copy of its format."""
    class Sets(logging.LogRecord):
        def getMessage(self) -> str:
            try:
                raise KeyError("from getMessage")
            except KeyError:
                self.exc_info = sys.exc_info()
            return super().getMessage()

    record = Sets("app", logging.INFO, __file__, 1, "hello", None, None)
    ours, theirs = _both(tmp_path, logging.Formatter(FORMAT), [record])
    assert ours == theirs
    assert b"KeyError: 'from getMessage'\n" in ours


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32", "UTF_16"])
def test_a_byte_order_mark_starts_each_file_once(tmp_path: Path, encoding: str) -> None:
    """The stdlib's text file writes the mark once, at offset 0: racefree too, in each file
    it starts (the first, and each after a rotation), whichever handler writes first."""
    ours, theirs = _both(tmp_path, logging.Formatter("%(message)s"), _records())
    assert ours == theirs  # utf-8 (no mark) as a reference
    mark = {"utf-8-sig": codecs.BOM_UTF8, "utf-16": codecs.BOM_UTF16,
            "utf-32": codecs.BOM_UTF32, "UTF_16": codecs.BOM_UTF16}[encoding]
    limit = len(mark) + 2 * len("r0\n".encode(encoding)[len(mark):]) + 1  # 2 records a file
    a = RotatingFileHandler(tmp_path / "m.log", encoding=encoding, maxBytes=limit, backupCount=3)
    b = RotatingFileHandler(tmp_path / "m.log", encoding=encoding, maxBytes=limit, backupCount=3)
    std = logging.FileHandler(tmp_path / "std.log", encoding=encoding)
    try:
        for i in range(6):
            (a if i % 2 else b).handle(logging.makeLogRecord({"msg": f"r{i}"}))
            std.handle(logging.makeLogRecord({"msg": f"r{i}"}))
    finally:
        a.close()
        b.close()
        std.close()
    expected = (tmp_path / "std.log").read_bytes()
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.log"))
    texts = [(tmp_path / name).read_bytes() for name in reversed(files)]
    assert expected.startswith(mark) and expected.count(mark) == 1
    assert files == ["m.log", "m.log.1", "m.log.2"]
    assert all(text.startswith(mark) and text.count(mark) == 1 for text in texts)
    assert b"".join(text[len(mark):] for text in texts) == expected[len(mark):]


def test_a_failed_rotation_keeps_the_record(tmp_path: Path) -> None:
    """A backup's name taken by a directory (as another user can do in a shared directory),
    or a rotator that raises: the rotation fails, is reported, and the record is written
    to the current file; the backups stay as they were."""
    errors: list[str] = []
    handler = RotatingFileHandler(tmp_path / "app.log", maxBytes=20, backupCount=2)
    handler.handleError = lambda record: errors.append(repr(sys.exc_info()[1]))  # type: ignore[method-assign]
    try:
        for i in range(3):
            handler.handle(logging.makeLogRecord({"msg": f"record-{i:03d}"}))
        (tmp_path / "app.log.2").unlink()
        (tmp_path / "app.log.2").mkdir()
        for i in range(3, 6):
            handler.handle(logging.makeLogRecord({"msg": f"record-{i:03d}"}))
    finally:
        handler.close()
    assert errors == ["IsADirectoryError(21, 'Is a directory')"] * 3
    assert (tmp_path / "app.log").read_bytes() == b"".join(
        f"record-{i:03d}\n".encode() for i in (2, 3, 4, 5))
    assert (tmp_path / "app.log.1").read_bytes() == b"record-001\n"

    errors.clear()
    one = RotatingFileHandler(tmp_path / "one.log", maxBytes=20, backupCount=1)
    one.handleError = lambda record: errors.append(repr(sys.exc_info()[1]))  # type: ignore[method-assign]
    try:
        for i in range(2):
            one.handle(logging.makeLogRecord({"msg": f"record-{i:03d}"}))

        def fails(source: str, dest: str) -> None:
            raise OSError(5, "rotator failed")

        one.rotator = fails
        one.handle(logging.makeLogRecord({"msg": "record-002"}))
    finally:
        one.close()
    assert errors == ["OSError(5, 'rotator failed')"]
    assert (tmp_path / "one.log").read_bytes() == b"record-001\nrecord-002\n"
    assert (tmp_path / "one.log.1").read_bytes() == b"record-000\n"


def test_a_time_zone_read_again_without_tzset(tmp_path: Path, zone: Callable[[str], None]) -> None:
    """TZ set without time.tzset(): the C library reads it again at time.mktime, and
    localtime follows from then on; records 0 and 1 share a second."""
    zone("UTC0")

    def between(i: int) -> None:
        if i == 1:
            os.environ["TZ"] = "JST-9"  # no tzset: time.tzname stays what it was
            time.mktime(time.localtime())

    ours, theirs = _both(tmp_path, logging.Formatter("%(asctime)s %(message)s"), _records(),
                         between)
    assert ours == theirs
    assert ours.splitlines()[1].startswith(b"2023-11-15 07:13:20,750")


def test_tzset_with_the_same_tz_value(tmp_path: Path, zone: Callable[[str], None]) -> None:
    """TZ set (not yet read) before record 0, time.tzset() between records 0 and 1 of one
    second: the value of TZ is the same at both records, the time zone is not."""
    zone("UTC0")

    def between(i: int) -> None:
        if i == 0:
            os.environ["TZ"] = "JST-9"
        elif i == 1:
            time.tzset()

    ours, theirs = _both(tmp_path, logging.Formatter("%(asctime)s %(message)s"), _records(),
                         between)
    assert ours == theirs
    assert [line[11:13] for line in ours.splitlines()] == [b"22", b"07", b"07"]


def test_a_converter_changed_within_one_second(
    tmp_path: Path, zone: Callable[[str], None]
) -> None:
    zone("JST-9")
    formatter = logging.Formatter("%(asctime)s %(message)s")

    def between(i: int) -> None:
        if i == 1:
            formatter.converter = time.gmtime  # type: ignore[method-assign]

    ours, theirs = _both(tmp_path, formatter, _records(), between)
    assert ours == theirs
    assert [line[11:13] for line in ours.splitlines()] == [b"07", b"22", b"22"]


def test_tz_set_then_read_again_within_one_second(
    tmp_path: Path, zone: Callable[[str], None]
) -> None:
    """TZ set without tzset before record 0 (the C library still uses the old zone), then
    time.mktime (which reads TZ again) before record 1 of the same second: only the
    converter knows, so it is called for every record."""
    zone("UTC0")

    def between(i: int) -> None:
        if i == 0:
            os.environ["TZ"] = "JST-9"
        elif i == 1:
            time.mktime(time.localtime())

    ours, theirs = _both(tmp_path, logging.Formatter("%(asctime)s %(message)s"), _records(),
                         between)
    assert ours == theirs
    assert [line[11:13] for line in ours.splitlines()] == [b"22", b"07", b"07"]


def _hooked(tmp_path: Path, cls: type, hook: str) -> dict[str, str]:
    handler = cls(tmp_path / f"{cls.__module__}-{hook}.log", maxBytes=10_000, backupCount=5)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for msg in "ab":
        handler.handle(logging.makeLogRecord({"msg": msg}))  # the hook comes after a record
        if msg == "a":
            if hook == "shouldRollover":
                handler.shouldRollover = lambda r: r.msg == "c"
            elif hook == "filter":
                handler.filter = lambda r: r.msg != "b"
            else:
                handler.format = lambda r: "<" + r.getMessage() + ">"
    handler.handle(logging.makeLogRecord({"msg": "c"}))
    handler.close()
    base = f"{cls.__module__}-{hook}.log"
    return {p.name[len(base):] or "log": p.read_text() for p in sorted(tmp_path.iterdir())
            if p.name.startswith(base)}


def test_format_set_on_the_handler_then_emit(tmp_path: Path) -> None:
    """emit called directly (not through handle) sees a format set on the instance too."""
    handler = RotatingFileHandler(tmp_path / "app.log")
    handler.emit(logging.makeLogRecord({"msg": "a"}))
    handler.format = lambda r: "<" + r.getMessage() + ">"  # type: ignore[method-assign]
    handler.emit(logging.makeLogRecord({"msg": "b"}))
    handler.close()
    assert (tmp_path / "app.log").read_bytes() == b"a\n<b>\n"


@pytest.mark.parametrize("hook", ["shouldRollover", "filter", "format"])
def test_methods_set_on_the_handler(tmp_path: Path, hook: str) -> None:
    """As the stdlib's handler, racefree's calls a method set on the instance."""
    import logging.handlers

    ours = _hooked(tmp_path, RotatingFileHandler, hook)
    theirs = _hooked(tmp_path, logging.handlers.RotatingFileHandler, hook)
    assert ours == theirs
    assert ours == {"shouldRollover": {".1": "a\nb\n", "log": "c\n"},
                    "filter": {"log": "a\nc\n"},
                    "format": {"log": "a\n<b>\n<c>\n"}}[hook]


def test_a_filter_that_returns_a_record(tmp_path: Path) -> None:
    """3.12+ logs the record a filter returns; before, the original (the return is a truth)."""
    replaced = logging.makeLogRecord({"msg": "replaced"})

    class Replacing(RotatingFileHandler):
        def filter(self, record: logging.LogRecord) -> logging.LogRecord:  # type: ignore[override]
            return replaced

    handler = Replacing(tmp_path / "app.log")
    handler.handle(logging.makeLogRecord({"msg": "original"}))
    handler.close()
    expected = b"replaced\n" if sys.version_info >= (3, 12) else b"original\n"
    assert (tmp_path / "app.log").read_bytes() == expected


def test_a_rotator_that_moves_the_file_then_fails(tmp_path: Path) -> None:
    """The file has left its name when the rotator raises: a new file is started, as after
    a rotation, the record goes there and the failure to handleError; nothing is lost."""
    errors: list[str] = []

    def moves_then_fails(source: str, dest: str) -> None:
        os.rename(source, dest)
        raise RuntimeError("compressing failed")

    handler = RotatingFileHandler(tmp_path / "app.log", maxBytes=20, backupCount=2)
    handler.handleError = lambda record: errors.append(repr(sys.exc_info()[1]))  # type: ignore[method-assign]
    handler.rotator = moves_then_fails
    try:
        for i in range(3):
            handler.handle(logging.makeLogRecord({"msg": f"record-{i:03d}"}))
    finally:
        handler.close()
    assert errors == ["RuntimeError('compressing failed')"] * 2
    assert [(tmp_path / n).read_bytes() for n in ("app.log", "app.log.1", "app.log.2")] == [
        b"record-002\n", b"record-001\n", b"record-000\n"]


def test_an_explicit_dorollover_whose_rotator_moves_then_fails(tmp_path: Path) -> None:
    """doRollover() raises the rotator's error (as the stdlib's), but the handler, and
    every other one, writes to a new file: never into the file that was moved away."""
    def moves_then_fails(source: str, dest: str) -> None:
        os.rename(source, dest)
        raise RuntimeError("compressing failed")

    first = RotatingFileHandler(tmp_path / "app.log", maxBytes=1000, backupCount=2)
    second = RotatingFileHandler(tmp_path / "app.log", maxBytes=1000, backupCount=2)
    try:
        first.handle(logging.makeLogRecord({"msg": "before"}))
        first.rotator = moves_then_fails
        with pytest.raises(RuntimeError, match="compressing failed"):
            first.doRollover()
        first.handle(logging.makeLogRecord({"msg": "after"}))
        second.handle(logging.makeLogRecord({"msg": "other handler"}))
    finally:
        first.close()
        second.close()
    assert (tmp_path / "app.log").read_bytes() == b"after\nother handler\n"
    assert (tmp_path / "app.log.1").read_bytes() == b"before\n"


def test_a_timed_rotator_that_moves_then_fails(tmp_path: Path) -> None:
    """The interval is over once the file has moved: the next records stay in the new
    file until the next rollover time, not one rotation per record."""
    from racefree.logging import TimedRotatingFileHandler

    errors: list[str] = []

    def moves_then_fails(source: str, dest: str) -> None:
        os.rename(source, dest)
        raise RuntimeError("compressing failed")

    handler = TimedRotatingFileHandler(tmp_path / "app.log", when="H", backupCount=2)
    handler.handleError = lambda record: errors.append(repr(sys.exc_info()[1]))  # type: ignore[method-assign]
    try:
        handler.handle(logging.makeLogRecord({"msg": "r0"}))
        handler.rotator = moves_then_fails
        past = time.time() - 1  # the hour is over (the rollover time every process shares)
        assert handler._side is not None
        handler._side.put_rollover(past)
        handler._at = past
        for i in range(1, 4):
            handler.handle(logging.makeLogRecord({"msg": f"r{i}"}))
    finally:
        handler.close()
    assert errors == ["RuntimeError('compressing failed')"]
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert len(names) == 2 and names[0] == "app.log"
    assert (tmp_path / "app.log").read_bytes() == b"r1\nr2\nr3\n"
    assert (tmp_path / names[1]).read_bytes() == b"r0\n"


def _run_both(tmp_path: Path, script: Callable[[Any, type], None]) -> tuple[dict[str, str], ...]:
    """Run ``script(handler, its class)`` against racefree's handler and the stdlib's."""
    import logging.handlers

    out = []
    for cls in (RotatingFileHandler, logging.handlers.RotatingFileHandler):
        where = tmp_path / cls.__module__
        where.mkdir()
        handler = cls(where / "app.log", maxBytes=20, backupCount=5)
        handler.setFormatter(logging.Formatter("%(message)s"))
        try:
            script(handler, cls)
        finally:
            handler.close()
        out.append({p.name: p.read_text() for p in sorted(where.iterdir())
                    if not p.name.startswith(".")})
    return tuple(out)


def _log(handler: Any, *msgs: str) -> None:
    for msg in msgs:
        handler.handle(logging.makeLogRecord({"msg": msg}))


def test_hooks_patched_one_after_another(tmp_path: Path) -> None:
    """mock.patch.object on the instance, one hook after another (the instance's
    __dict__ keeps its size from one patch to the next)."""
    from unittest import mock

    def script(handler: Any, cls: type) -> None:
        with mock.patch.object(handler, "format", lambda r: "<" + r.getMessage() + ">"):
            _log(handler, "a")
        with mock.patch.object(handler, "shouldRollover", lambda r: r.msg == "c"):
            _log(handler, "b", "c")
        with mock.patch.object(handler, "filter", lambda r: r.msg != "d"):
            _log(handler, "d", "e")

    ours, theirs = _run_both(tmp_path, script)
    assert ours == theirs == {"app.log": "c\ne\n", "app.log.1": "<a>\nb\n"}


def test_a_method_patched_on_the_class_after_construction(tmp_path: Path) -> None:
    from unittest import mock

    def script(handler: Any, cls: type) -> None:
        _log(handler, "a")
        with mock.patch.object(cls, "shouldRollover", lambda self, r: r.msg in ("b", "c")):
            _log(handler, "b", "c")
        _log(handler, "d")

    ours, theirs = _run_both(tmp_path, script)
    assert ours == theirs == {"app.log": "c\nd\n", "app.log.1": "b\n", "app.log.2": "a\n"}


def test_a_should_rollover_that_says_no(tmp_path: Path) -> None:
    """A shouldRollover of the user's decides: False never rotates, past maxBytes too."""
    def script(handler: Any, cls: type) -> None:
        handler.shouldRollover = lambda record: False
        _log(handler, "first record", "second record", "third record")

    ours, theirs = _run_both(tmp_path, script)
    assert ours == theirs == {"app.log": "first record\nsecond record\nthird record\n"}


def test_emit_replaced_on_the_instance_or_the_class(tmp_path: Path) -> None:
    """handle writes the common record without calling emit; an emit of the user's,
    set on the instance or patched on the class at any time, is still called for each
    record, as the stdlib's handle calls it."""
    from unittest import mock

    def script(handler: Any, cls: type) -> None:
        seen: list[str] = []
        real = handler.emit

        def emit(record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
            real(logging.makeLogRecord({"msg": record.getMessage().upper()}))

        _log(handler, "a")
        with mock.patch.object(handler, "emit", emit):
            _log(handler, "b")
        _log(handler, "c")
        with mock.patch.object(cls, "emit", lambda self, record: emit(record)):
            _log(handler, "d")
        _log(handler, "e")
        assert seen == ["b", "d"]

    ours, theirs = _run_both(tmp_path, script)
    assert ours == theirs == {"app.log": "a\nB\nc\nD\ne\n"}


def test_a_subclass_emit_is_called(tmp_path: Path) -> None:
    class Shouting(RotatingFileHandler):
        def emit(self, record: logging.LogRecord) -> None:
            record.msg = str(record.msg).upper()
            super().emit(record)

    handler = Shouting(tmp_path / "app.log")
    _log(handler, "a", "b")
    handler.close()
    assert (tmp_path / "app.log").read_bytes() == b"A\nB\n"


def test_handle_returns_what_the_stdlib_handle_returns(tmp_path: Path) -> None:
    """True before 3.12; from 3.12, the record (what Filterer.filter returns)."""
    import logging.handlers

    for cls in (RotatingFileHandler, logging.handlers.RotatingFileHandler):
        handler = cls(tmp_path / f"{cls.__module__}.log")
        record = logging.makeLogRecord({"msg": "a"})
        got = handler.handle(record)
        handler.addFilter(lambda r: False)
        dropped = handler.handle(logging.makeLogRecord({"msg": "b"}))
        handler.close()
        assert got is (record if sys.version_info >= (3, 12) else True)
        assert dropped is False


def test_a_duck_typed_formatter_with_slots(tmp_path: Path) -> None:
    """Any object with a format method is a formatter to the stdlib, __slots__ or not."""
    class Slotted:
        __slots__ = ()

        def format(self, record: logging.LogRecord) -> str:
            return "SLOTS " + record.getMessage()

    def script(handler: Any, cls: type) -> None:
        handler.setFormatter(Slotted())
        _log(handler, "a")

    ours, theirs = _run_both(tmp_path, script)
    assert ours == theirs == {"app.log": "SLOTS a\n"}


def test_a_recursion_error_while_formatting_goes_to_handle_error(tmp_path: Path) -> None:
    """BaseRotatingHandler.emit sends every Exception to handleError, RecursionError too."""
    def script(handler: Any, cls: type) -> None:
        errors: list[type] = []
        handler.handleError = lambda record: errors.append(type(sys.exc_info()[1]))

        def deep(record: logging.LogRecord) -> str:
            if record.msg == "deep":
                raise RecursionError("maximum recursion depth exceeded")
            return str(record.msg)

        handler.format = deep
        _log(handler, "a", "deep", "b")
        assert errors == [RecursionError]

    ours, theirs = _run_both(tmp_path, script)
    assert ours == theirs == {"app.log": "a\nb\n"}


def test_flush_of_the_users_is_called_after_each_record(tmp_path: Path) -> None:
    """StreamHandler.emit calls self.flush() after each record: a subclass that syncs
    there, or a flush set on the instance, is called as often with racefree's handler."""
    counts: dict[str, int] = {}

    def script(handler: Any, cls: type) -> None:
        key = cls.__module__
        counts[key] = 0

        def flush() -> None:
            counts[key] += 1

        _log(handler, "a")
        handler.flush = flush
        _log(handler, "b", "c")
        del handler.flush
        _log(handler, "d")

    ours, theirs = _run_both(tmp_path, script)
    assert ours == theirs == {"app.log": "a\nb\nc\nd\n"}
    assert sorted(counts.values()) == [2, 2]


def test_a_subclass_flush_and_a_set_stream(tmp_path: Path) -> None:
    import io
    import logging.handlers

    calls: list[str] = []
    out = []
    for base in (RotatingFileHandler, logging.handlers.RotatingFileHandler):
        class Flushing(base):  # type: ignore[valid-type,misc]
            def flush(self) -> None:
                calls.append(type(self).__mro__[1].__module__)
                super().flush()

        handler = Flushing(tmp_path / f"{base.__module__}.log")
        _log(handler, "a")
        buffer = io.StringIO()
        handler.setStream(buffer)
        _log(handler, "b")
        written = buffer.getvalue()
        handler.close()
        out.append(((tmp_path / f"{base.__module__}.log").read_text(), written))
    assert out[0] == out[1] == ("a\n", "b\n")
    # a, setStream, b, close: four calls each
    assert calls == [RotatingFileHandler.__module__] * 4 + ["logging.handlers"] * 4


def test_the_terminator_set_on_stream_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """A terminator set on logging.StreamHandler applies to every handler that does not set
    its own, racefree's included (it inherits it, as the stdlib's handlers do)."""
    monkeypatch.setattr(logging.StreamHandler, "terminator", "#")

    def script(handler: Any, cls: type) -> None:
        _log(handler, "a")
        handler.terminator = "|"
        _log(handler, "b")

    ours, theirs = _run_both(tmp_path, script)
    assert ours == theirs == {"app.log": "a#b|"}


def test_filterer_filter_replaced_before_racefree_is_imported(tmp_path: Path) -> None:
    """A process that patches logging.Filterer.filter before importing racefree: the
    patched filter decides for racefree's handler too, filters or not."""
    script = f"""
import logging, logging.handlers
logging.Filterer.filter = lambda self, record: record.msg != "drop"
from racefree.logging import RotatingFileHandler
for cls, name in ((RotatingFileHandler, "ours"), (logging.handlers.RotatingFileHandler, "theirs")):
    h = cls({str(tmp_path)!r} + "/" + name + ".log")
    for msg in ("keep", "drop"):
        h.handle(logging.makeLogRecord({{"msg": msg}}))
    h.close()
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert (tmp_path / "ours.log").read_text() == (tmp_path / "theirs.log").read_text() == "keep\n"
