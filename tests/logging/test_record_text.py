"""What racefree's handlers write is what the standard formatter makes, byte for byte.

The handlers reuse the time text of the last second (``racefree.logging.formatting``):
each test writes the same records through racefree's handler and through the
standard ``FileHandler`` with the same formatter, and compares the two files.
Each case is one the cache must step aside for: it fails if the cache ignores it.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from racefree import _fs
from racefree.logging import RotatingFileHandler

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
    every writer held off: the oldest backup is removed, then the others move into free
    names (as the stdlib does). The backups still hold exactly the last records."""
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
        assert onto == [("app.log.1", False)] * 5
    else:
        assert onto == [("app.log.1", False)] + [("app.log.2", False), ("app.log.1", False)] * 4
    names = ["app.log", *(f"app.log.{i}" for i in range(1, backups + 1))]
    assert sorted(os.listdir(tmp_path)) == [".app.log.lock", *names]
    assert [(tmp_path / name).read_bytes() for name in names] == [
        f"record-{5 - i:03d}\n".encode() for i in range(backups + 1)
    ]
