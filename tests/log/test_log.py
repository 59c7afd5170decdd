"""AppendLog: sequence numbers, framing on disk, torn tails, damage, compaction, processes."""

from __future__ import annotations

import errno
import json
import math
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers.testkit import reap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from racefree import AppendLog, CorruptFileError, DurabilityError, FormatError, _fs
from racefree.log import frame as _frame
from racefree.testing import CrashState, FaultFS, Recorder, explore

RECORDS: list[Any] = [{"a": 1}, "é", [1, 2.5, None], True, {"nested": {"k": ["v"]}}, 0]


def frame(body: bytes) -> bytes:
    return b"%d %08x %s\n" % (len(body), zlib.crc32(body), body)


def header(gen: int = 0, base: int = 0) -> bytes:
    return frame(b'{"racefree_log":1,"segment":%d,"base":%d}' % (gen, base))


def fill(path: Path, records: list[Any] = RECORDS, durable: bool = True) -> None:
    with AppendLog(path, durable=durable) as log:
        for record in records:
            log.append(record)


def run_children(code: str, args: list[list[str]], go: Path, timeout: float = 60.0) -> list[str]:
    """Run one interpreter per argument list, release them together by creating ``go``,
    and return their stdouts."""
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *a],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for a in args
    ]
    try:
        go.touch()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err
            outs.append(out)
        return outs
    finally:
        reap(procs)


# -- basics -----------------------------------------------------------------------------

def test_append_returns_sequence_numbers_and_file_is_json_lines(tmp_path: Path) -> None:
    """append returns 0, 1, 2...; the file is a header then one framed JSON line per record
    (durable=False records start with "~": they promise nothing about the disk)."""
    path = tmp_path / "x.log"
    log = AppendLog(path, durable=False)
    assert len(log) == 0
    assert list(log) == []
    assert not path.exists()  # nothing is created until the first append
    assert [log.append(r) for r in RECORDS] == list(range(len(RECORDS)))
    assert len(log) == len(RECORDS)
    assert list(log) == RECORDS
    expected = header() + b"".join(
        frame(b"~" + json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode())
        for r in RECORDS)
    assert path.read_bytes() == expected
    log.close()
    with pytest.raises(ValueError, match="closed"):
        len(log)


def test_other_handles_see_every_append(tmp_path: Path) -> None:
    """A second handle sees records appended through the first, and continues the numbering."""
    path = tmp_path / "x.log"
    with AppendLog(path) as one, AppendLog(path) as two:
        assert one.append("a") == 0
        assert len(two) == 1
        assert two.append("b") == 1
        assert one.append("c") == 2
        assert list(two) == ["a", "b", "c"]
        assert list(one.items()) == [(0, "a"), (1, "b"), (2, "c")]


@pytest.mark.parametrize("bad", [object(), {1, 2}, math.nan, math.inf, b"bytes"])
def test_non_json_record_raises_type_error_before_writing(tmp_path: Path, bad: Any) -> None:
    """A record that is not a JSON value raises TypeError and writes nothing."""
    path = tmp_path / "x.log"
    log = AppendLog(path)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        log.append(bad)
    assert not path.exists()
    log.append(1)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        log.extend([2, bad])
    assert path.read_bytes() == before
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(TypeError):
        log.append(cyclic)
    assert path.read_bytes() == before


def test_lone_surrogate_round_trips(tmp_path: Path) -> None:
    """A string that is not valid UTF-8 is kept as a \\u escape and reads back equal."""
    path = tmp_path / "x.log"
    with AppendLog(path) as log:
        log.append("a\ud800b")
        assert list(log) == ["a\ud800b"]


def test_extend_is_one_frame_and_returns_a_range(tmp_path: Path) -> None:
    """extend writes a batch as one line (all or nothing) and returns its sequence numbers."""
    path = tmp_path / "x.log"
    with AppendLog(path) as log:
        assert log.append("x") == 0
        assert log.extend([1, 2, 3]) == range(1, 4)
        assert log.extend([]) == range(4, 4)
        assert log.extend(["solo"]) == range(4, 5)
        assert list(log.items()) == [(0, "x"), (1, 1), (2, 2), (3, 3), (4, "solo")]
        assert list(log.read(2)) == [2, 3, "solo"]
        assert list(log.read(5)) == []
        assert list(log.read(99)) == []
    assert path.read_bytes() == header() + frame(b'"x"') + frame(b"*3 [1,2,3]") + frame(b'"solo"')


def test_record_larger_than_a_read_chunk(tmp_path: Path) -> None:
    """A 5 MiB record (more than one 4 MiB read) is read back whole, by a fresh handle too."""
    path = tmp_path / "x.log"
    big = "x" * (5 << 20)
    with AppendLog(path, durable=False) as log:
        assert log.append("small") == 0
        assert log.append(big) == 1
        assert log.append("after") == 2
    with AppendLog(path) as log:
        assert len(log) == 3
        assert list(log) == ["small", big, "after"]


def test_read_from_far_start_uses_index(tmp_path: Path) -> None:
    """read(start) deep into a log of batches and single records yields exactly the tail."""
    path = tmp_path / "x.log"
    with AppendLog(path, durable=False) as log:
        for i in range(0, 5000, 5):
            if i % 2:
                log.extend(range(i, i + 5))
            else:
                for j in range(i, i + 5):
                    log.append(j)
        assert len(log) == 5000
        for start in (0, 1023, 1024, 2047, 3001, 4999):
            assert list(log.read(start)) == list(range(start, 5000))
        with AppendLog(path) as fresh:
            assert list(fresh.items(4997)) == [(4997, 4997), (4998, 4998), (4999, 4999)]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6,
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), JSON, st.booleans()),
        st.tuples(st.just("extend"), st.lists(JSON, max_size=4), st.booleans()),
        st.tuples(st.just("compact"), st.none(), st.booleans()),
        st.tuples(st.just("reopen"), st.none(), st.booleans()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_model(tmp_path_factory: pytest.TempPathFactory,
               steps: list[tuple[str, Any, bool]]) -> None:
    """Random appends, batches (durable or not), compactions and reopens against a list:
    the numbers returned, len, items, snapshot and replay always agree with the model."""
    path = tmp_path_factory.mktemp("model") / "x.log"
    model: list[Any] = []
    snapshot = None
    log = AppendLog(path)
    for op, arg, durable in steps:
        log.durable = durable
        if op == "append":
            assert log.append(arg) == len(model)
            model.append(arg)
        elif op == "extend":
            assert log.extend(arg) == range(len(model), len(model) + len(arg))
            model.extend(arg)
        elif op == "compact":
            assert log.compact(concat, []) == (len(model), model)
            snapshot = (len(model), list(model))
        else:
            log.close()
            log = AppendLog(path)
        assert len(log) == len(model)
    assert list(log.items()) == list(enumerate(model))[snapshot[0] if snapshot else 0 :]
    assert log.replay(concat, []) == model
    assert log.snapshot() == snapshot
    assert log.check().next == len(model)
    log.close()


# -- torn tails and damage ----------------------------------------------------------------

def test_truncate_at_every_offset_of_last_record(tmp_path: Path) -> None:
    """Cut the file at every byte of its last record: it opens, the record is absent,
    check() reports the torn bytes, and the next append removes them and takes its place."""
    path = tmp_path / "x.log"
    fill(path)
    full = path.read_bytes()
    last = frame(b"0")
    assert full.endswith(last)
    keep = len(full) - len(last)
    for cut in range(len(last)):
        path.write_bytes(full[: keep + cut])
        with AppendLog(path) as log:
            assert len(log) == len(RECORDS) - 1
            assert list(log) == RECORDS[:-1]
            report = log.check()
            assert (report.next, report.torn, report.size) == (len(RECORDS) - 1, cut, keep + cut)
            assert path.read_bytes() == full[: keep + cut]  # readers change nothing
            assert log.append(0) == len(RECORDS) - 1
        assert path.read_bytes() == full


def test_torn_batch_is_absent_as_a_whole(tmp_path: Path) -> None:
    """A batch cut anywhere is invisible as a whole: extend is all or nothing."""
    path = tmp_path / "x.log"
    with AppendLog(path) as log:
        log.append("before")
        log.extend(["a", "b", "c"])
    full = path.read_bytes()
    batch = frame(b'*3 ["a","b","c"]')
    for cut in range(1, len(batch)):
        path.write_bytes(full[: len(full) - cut])
        with AppendLog(path) as log:
            assert list(log) == ["before"]
            assert len(log) == 1


def test_nul_filled_tail_is_invisible_and_repaired(tmp_path: Path) -> None:
    """A power loss can leave the size grown but the data NUL: invisible, then cut off."""
    path = tmp_path / "x.log"
    fill(path)
    full = path.read_bytes()
    with path.open("ab") as f:
        f.write(b"\x00" * 700)
    with AppendLog(path) as log:
        assert list(log) == RECORDS
        assert log.check().torn == 700
        assert log.append("next") == len(RECORDS)
    assert path.read_bytes() == full + frame(b'"next"')


@pytest.mark.parametrize("durable", [True, False])
@pytest.mark.parametrize("index", [0, 2, 4])
def test_flipped_byte_in_the_middle_is_corruption(tmp_path: Path, index: int,
                                                  durable: bool) -> None:
    """A damaged record with records after it raises CorruptFileError with the file, offset
    and line, for readers and writers alike, and nothing is changed or thrown away; also
    when every record is a durable=False one (a flipped bit is no power loss's hole)."""
    path = tmp_path / "x.log"
    fill(path, durable=durable)
    data = bytearray(path.read_bytes())
    lines = bytes(data).splitlines(keepends=True)
    offset = sum(len(line) for line in lines[: index + 1])  # +1: the header line
    data[offset + len(lines[index + 1]) - 3] ^= 0x04
    path.write_bytes(bytes(data))
    log = AppendLog(path)
    for call in (len, list, lambda lg: lg.append(1), lambda lg: lg.check(),
                 lambda lg: lg.compact(lambda s, r: s, 0)):
        with pytest.raises(CorruptFileError) as info:
            call(log)
        assert (info.value.path, info.value.offset, info.value.line) == (str(path), offset,
                                                                         index + 2)
        assert f"byte offset {offset}" in str(info.value)
    assert path.read_bytes() == bytes(data)
    assert not (tmp_path / "x.log.snapshot").exists()


def test_unsynced_hole_is_read_around_but_never_cut(tmp_path: Path) -> None:
    """durable=False records promise nothing about the disk: after a power loss one of them
    may come back with NUL bytes and later ones intact. Readers show the records before the
    hole; check() and the next append raise CorruptFileError at the hole and cut nothing
    (the records after it are valid, and cutting them would hand out their numbers again)."""
    path = tmp_path / "x.log"
    fill(path, ["synced"])
    fill(path, ["u1", "u2", "u3"], durable=False)
    data = bytearray(path.read_bytes())
    hole = len(header()) + len(frame(b'"synced"'))
    data[hole + 13] = 0  # a NUL where the page of "u1" never reached the disk
    path.write_bytes(bytes(data))
    with AppendLog(path) as log:
        assert (list(log), len(log), list(log.read(0))) == (["synced"], 1, ["synced"])
        for call in (lambda: log.check(), lambda: log.append("next"),
                     lambda: log.compact(concat, [])):
            with pytest.raises(CorruptFileError, match="never synced") as info:
                call()
            assert (info.value.offset, info.value.line) == (hole, 3)
        assert len(log) == 1
    assert path.read_bytes() == bytes(data)
    assert not (tmp_path / "x.log.snapshot").exists()


@pytest.mark.parametrize("durable", [True, False])
@pytest.mark.parametrize("where", ["body", "checksum", "length"])
def test_flipped_bit_in_the_last_record_is_corruption(tmp_path: Path, durable: bool,
                                                      where: str) -> None:
    """A whole last record that fails its checksum is no torn write (a crash leaves a prefix,
    or NUL bytes): CorruptFileError for readers and writers, its number not handed out
    again, not a byte cut; wherever the bit is (body, checksum or length field)."""
    path = tmp_path / "x.log"
    fill(path, durable=durable)
    good = path.read_bytes()
    last = good.splitlines(keepends=True)[-1]
    assert last == frame(b"0" if durable else b"~0")
    at = len(good) - len(last) + {"body": len(last) - 2, "checksum": 2, "length": 0}[where]
    data = bytearray(good)
    data[at] ^= 0x02  # body "0" -> "2", checksum digit or length "1" -> "3" (or "2" -> "0")
    path.write_bytes(bytes(data))
    log = AppendLog(path, durable=durable)
    for call in (len, list, lambda lg: lg.append(1), lambda lg: lg.check()):
        with pytest.raises(CorruptFileError, match="the last record is damaged") as info:
            call(log)
        assert (info.value.offset, info.value.line) == (len(good) - len(last),
                                                        len(RECORDS) + 1)
    log.close()
    assert path.read_bytes() == bytes(data)


def test_whole_last_record_with_nul_bytes_is_a_torn_tail(tmp_path: Path) -> None:
    """A last durable=False record whose length and newline landed but a block in between
    did not (NUL bytes: a power loss) is a torn tail: invisible, then cut by the next append."""
    path = tmp_path / "x.log"
    fill(path, ["a"])
    fill(path, ["b" * 40], durable=False)
    good = path.read_bytes()
    keep = len(header()) + len(frame(b'"a"'))
    data = bytearray(good)
    data[keep + 20 : keep + 36] = b"\0" * 16
    path.write_bytes(bytes(data))
    with AppendLog(path) as log:
        assert (list(log), len(log)) == (["a"], 1)
        assert log.check().torn == len(good) - keep
        assert log.append("c") == 1
    assert path.read_bytes() == header() + frame(b'"a"') + frame(b'"c"')


def test_synced_record_after_damage_proves_corruption(tmp_path: Path) -> None:
    """A durable record after a damaged durable=False one proves the damage had been synced:
    CorruptFileError. A durable append after durable=False ones first syncs them (one extra
    fdatasync), which is what makes that proof sound."""
    path = tmp_path / "x.log"
    fill(path, ["u1", "u2"], durable=False)
    fs = FaultFS(None, sync=False)
    with _fs.use(fs), AppendLog(path) as log:
        fs.arm()
        log.append("d1")
        assert fs.counts["fdatasync"] == 2
        log.append("d2")
        assert fs.counts["fdatasync"] == 3
    data = bytearray(path.read_bytes())
    data[len(header()) + 12] ^= 0x01  # in "u1"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as info:
        list(AppendLog(path))
    assert info.value.offset == len(header())


def _valid_bodies(data: bytes) -> list[bytes]:
    """The body of every valid frame that starts a line of ``data``, damaged lines skipped."""
    bodies, pos = [], 0
    while pos < len(data):
        got = _frame.decode_at(data, pos)
        if got is not None:
            bodies.append(got[0])
            pos = got[1]
        elif (nl := data.find(b"\n", pos)) >= 0:
            pos = nl + 1
        else:
            break
    return bodies


@pytest.mark.parametrize("block", [64, 512])
def test_power_loss_in_unsynced_appends_then_append(tmp_path: Path, block: int) -> None:
    """Every state a power loss can leave of four durable=False appends (each write dropped,
    torn at a block, zero-filled, or landed out of order): readers never raise and show a
    prefix of the records; the next append either cuts a torn tail and lands right after
    them, or meets a hole before valid records and raises CorruptFileError changing nothing.
    A valid record is never cut."""
    base = tmp_path / "base"
    base.mkdir()
    path = base / "events.log"
    fill(path, ["synced"])
    unsynced = [{"u": i, "pad": "p" * (90 * i)} for i in range(4)]
    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        with AppendLog(path, durable=False) as log:
            for i, record in enumerate(unsynced):
                log.append(record)
                rec.mark(str(i))
    everything: list[Any] = ["synced", *unsynced]
    outcomes = {"appended": 0, "refused": 0}

    def check(root: Path, state: CrashState) -> None:
        p = root / "events.log"
        with AppendLog(p, durable=False) as log:
            got = list(log.read(0))
            assert got == everything[: len(got)] and len(log) == len(got) >= 1, got
            before = p.read_bytes()
            try:
                seq = log.append("next")
            except CorruptFileError as exc:
                assert "never synced" in str(exc) and p.read_bytes() == before, exc
                with pytest.raises(CorruptFileError, match="never synced"):
                    log.check()
                outcomes["refused"] += 1
                return
            assert seq == len(got) and list(log.read(0)) == [*got, "next"]
        assert _valid_bodies(p.read_bytes()) == [*_valid_bodies(before), b'~"next"']
        outcomes["appended"] += 1

    result = explore("log durable=False, then append", rec, check, tmp_path / "states",
                     block=block, max_violations=5)
    assert result.violations == [], "\n".join(map(str, result.violations))
    assert result.states >= (300 if block == 64 else 60), result.summary()
    assert outcomes["appended"] >= 10 and outcomes["refused"] >= 5, outcomes
    print(result.summary(), outcomes)


def test_power_loss_while_an_append_cuts_a_torn_tail(tmp_path: Path) -> None:
    """A crash left a torn record; the next append cuts it and writes a record of the same
    length at the same offset, and the power fails before its sync. The cut is synced first,
    so no state mixes the old torn bytes with the new record into a whole line that fails
    its checksum (which would be taken for corruption): every state reads, and checks clean."""
    base = tmp_path / "base"
    base.mkdir()
    path = base / "events.log"
    fill(path, ["a", "b"])
    new = {"i": 1, "pad": "n" * 200}
    old = frame(json.dumps({"i": 2, "pad": "o" * 200}, separators=(",", ":")).encode())
    assert len(old) == len(frame(json.dumps(new, separators=(",", ":")).encode()))
    with path.open("ab") as f:
        f.write(old[:150])  # the torn tail a killed appender left
    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        with AppendLog(path) as log:
            log.append(new)
            rec.mark("0")

    def check(root: Path, state: CrashState) -> None:
        with AppendLog(root / "events.log") as log:
            got = list(log.read(0))
            log.check()
        assert got == ["a", "b", new] if state.acked else got in (["a", "b"], ["a", "b", new])

    result = explore("log append after a torn tail", rec, check, tmp_path / "states",
                     block=16, max_violations=5)
    assert result.violations == [], "\n".join(map(str, result.violations))
    assert result.states >= 30, result.summary()


class TornOnce(_fs.FileSystem):
    """Returns a damaged copy of the bytes at ``offset`` for the first ``times`` reads that
    cover it: what a lock-free reader can see while a writer rewrites a torn tail."""

    def __init__(self, offset: int, times: int) -> None:
        self.offset, self.times = offset, times

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        data = super().pread(fd, n, offset)
        if self.times and offset <= self.offset < offset + len(data):
            self.times -= 1
            i = self.offset - offset
            return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        return data


def test_damage_seen_without_the_lock_is_checked_under_it(tmp_path: Path) -> None:
    """Damage that a lock-free read saw but the file does not hold (a writer was mid-way)
    is looked at again under the lock: no error, every record read."""
    path = tmp_path / "x.log"
    fill(path)
    spot = len(header()) + 12
    with _fs.use(TornOnce(spot, 1)), AppendLog(path) as log:
        assert list(log) == RECORDS
    with _fs.use(TornOnce(spot, 1)), AppendLog(path) as log:
        assert len(log) == len(RECORDS)
    with _fs.use(TornOnce(spot, 100)), AppendLog(path) as log, \
            pytest.raises(CorruptFileError):  # damaged for the lock too
        list(log)


def test_not_a_log_is_a_format_error(tmp_path: Path) -> None:
    """A file that does not start with a log header, or a newer format, is refused untouched."""
    path = tmp_path / "x.log"
    path.write_bytes(b'{"just": "json"}\n')
    with pytest.raises(FormatError, match="not a racefree log"):
        AppendLog(path).append(1)
    assert path.read_bytes() == b'{"just": "json"}\n'
    path.write_bytes(frame(b'{"racefree_log":2,"segment":0,"base":0}'))
    with pytest.raises(FormatError, match="newer"):
        len(AppendLog(path))


def test_empty_file_is_an_empty_log(tmp_path: Path) -> None:
    """An existing empty file is an empty log; the first append gives it a header."""
    path = tmp_path / "x.log"
    path.write_bytes(b"")
    with AppendLog(path) as log:
        assert (len(log), list(log)) == (0, [])
        assert log.append("a") == 0
    assert path.read_bytes() == header() + frame(b'"a"')


# -- failures -----------------------------------------------------------------------------

def test_failed_write_appends_nothing(tmp_path: Path) -> None:
    """ENOSPC during the write: the error reaches the caller, the file is as before, and the
    handle keeps working once there is space again."""
    path = tmp_path / "x.log"
    log = AppendLog(path)
    log.append("a")
    before = path.read_bytes()
    fs = FaultFS("pwrite", nth=2, err=errno.ENOSPC, short_writes=True)
    with _fs.use(fs):
        fs.arm()
        with pytest.raises(OSError) as info:
            log.append("b" * 100)
        assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert log.append("c") == 1
    assert list(log) == ["a", "c"]


def test_failed_fdatasync_is_never_retried(tmp_path: Path) -> None:
    """A failed fdatasync raises DurabilityError; the handle then refuses writes (W7),
    and a new handle works."""
    path = tmp_path / "x.log"
    log = AppendLog(path)
    log.append("a")
    fs = FaultFS("fdatasync", nth=1, err=errno.EIO)
    with _fs.use(fs):
        fs.arm()
        with pytest.raises(DurabilityError, match="may or may not"):
            log.append("b")
        assert fs.counts["fdatasync"] == 1
    with pytest.raises(DurabilityError, match="refuses"):
        log.append("c")
    with AppendLog(path) as other:
        assert other.append("d") == 2
        assert list(other) == ["a", "b", "d"]


# -- compaction ---------------------------------------------------------------------------

def concat(state: list[Any], record: Any) -> list[Any]:
    return [*state, record]


def test_compaction_semantics(tmp_path: Path) -> None:
    """compact folds the records into the snapshot; iteration then yields what came after;
    sequence numbers go on; replay gives the fold of everything; reopen sees the same."""
    path = tmp_path / "x.log"
    with AppendLog(path) as log:
        log.extend(["a", "b", "c"])
        assert log.snapshot() is None
        assert log.compact(concat, []) == (3, ["a", "b", "c"])
        assert (len(log), list(log), log.snapshot()) == (3, [], (3, ["a", "b", "c"]))
        assert log.append("d") == 3
        assert log.compact(concat, ["ignored: there is a snapshot"]) == (4, ["a", "b", "c", "d"])
        assert log.append("e") == 4
        assert log.replay(concat, []) == ["a", "b", "c", "d", "e"]
        with pytest.raises(ValueError, match="compacted"):
            list(log.read(0))
    assert path.read_bytes() == header(2, 4) + frame(b'"e"')
    assert (tmp_path / "x.log.snapshot").read_bytes() == frame(
        b'{"racefree_log_snapshot":1,"segment":2,"upto":4}') + frame(b'["a","b","c","d"]')
    with AppendLog(path) as log:
        assert (len(log), list(log.items())) == (5, [(4, "e")])
        report = log.check()
        assert (report.segment, report.first, report.snapshot_upto, report.records,
                report.next) == (2, 4, 4, 1, 5)


def test_compaction_failures_change_nothing(tmp_path: Path) -> None:
    """A fold that raises, or a state that is not JSON, leaves every file as it was."""
    path = tmp_path / "x.log"
    fill(path)
    before = path.read_bytes()

    def boom(state: Any, record: Any) -> Any:
        raise KeyError("fold failed")

    log = AppendLog(path)
    with pytest.raises(KeyError):
        log.compact(boom, None)
    with pytest.raises(TypeError, match="folded state"):
        log.compact(lambda s, r: object(), None)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["x.log", "x.log.lock"]


def test_compaction_crash_between_snapshot_and_switch(tmp_path: Path) -> None:
    """Fail the rename of the new segment (the crash state "snapshot written, segment not
    switched"): the log reads the same, appends continue, and compacting again is safe."""
    path = tmp_path / "x.log"
    fill(path, ["a", "b"])
    log = AppendLog(path)
    fs = FaultFS("replace", nth=2, err=errno.EIO, sync=False)
    with _fs.use(fs):
        fs.arm()
        with pytest.raises(OSError):
            log.compact(concat, [])
    assert log.snapshot() == (2, ["a", "b"])
    assert path.read_bytes().startswith(header(0, 0))  # the old segment is still active
    assert (list(log), len(log)) == ([], 2)
    assert log.append("c") == 2
    assert log.replay(concat, []) == ["a", "b", "c"]
    assert list(log.read(0)) == ["a", "b", "c"]  # the old segment still holds them
    assert log.compact(concat, []) == (3, ["a", "b", "c"])
    assert path.read_bytes() == header(2, 3)
    assert log.check().next == 3


def test_appends_during_the_fold_are_carried(tmp_path: Path) -> None:
    """S4: records appended (by another handle) while compact() folds are not lost: they
    land in the new segment after the snapshot, at the numbers their appends returned."""
    path = tmp_path / "x.log"
    fill(path, ["a", "b"])
    other = AppendLog(path)
    told: list[int] = []

    def fold(state: list[Any], record: Any) -> list[Any]:
        if not told:  # the fold runs without the lock: another writer gets in
            told.append(other.append("during"))
            told.extend(other.extend(["during2", "during3"]))
        return [*state, record]

    log = AppendLog(path)
    assert log.compact(fold, []) == (2, ["a", "b"])
    assert told == [2, 3, 4]
    assert list(log.items()) == [(2, "during"), (3, "during2"), (4, "during3")]
    assert other.append("after") == 5
    assert path.read_bytes() == (header(1, 2) + frame(b'"during"')
                                 + frame(b'*2 ["during2","during3"]') + frame(b'"after"'))


def test_compaction_racing_another_compaction(tmp_path: Path) -> None:
    """If another handle compacts while this one folds, this one folds again under the
    lock from the newer snapshot: both compactions count, nothing is folded twice."""
    path = tmp_path / "x.log"
    fill(path, ["a", "b"])
    other = AppendLog(path)
    calls: list[Any] = []

    def fold(state: list[Any], record: Any) -> list[Any]:
        if not calls:
            calls.append(record)
            other.append("c")
            assert other.compact(concat, []) == (3, ["a", "b", "c"])
            other.append("d")
        return [*state, record]

    log = AppendLog(path)
    assert log.compact(fold, []) == (4, ["a", "b", "c", "d"])
    assert (len(log), list(log), log.snapshot()) == (4, [], (4, ["a", "b", "c", "d"]))
    assert log.check().segment == 2


@pytest.mark.parametrize("op", ["open", "write", "fsync", "replace", "fsync_dir", "close"])
def test_compaction_fault_at_every_call(tmp_path: Path, op: str) -> None:
    """Fail each call of one operation during compact(), in turn: the error reaches the
    caller or the compaction completes, the log reads whole (every record, in order, at
    its number), check() passes, and both appending and compacting again work."""
    counter = FaultFS(None, sync=False)
    with _fs.use(counter):
        path = tmp_path / "count.log"
        fill(path, ["a", "b"])
        AppendLog(path).compact(concat, [])
        fill(path, ["c"])
        counter.arm()
        AppendLog(path).compact(concat, [])
    calls = counter.counts[op]
    assert calls >= 2
    for nth in range(1, calls + 1):
        path = tmp_path / f"{op}{nth}.log"
        fill(path, ["a", "b"])
        AppendLog(path).compact(concat, [])
        fill(path, ["c"])
        fs = FaultFS(op, nth=nth, err=errno.EIO, sync=False)
        with _fs.use(fs):
            fs.arm()
            try:
                AppendLog(path).compact(concat, [])
            except OSError as exc:
                assert exc.errno == errno.EIO
        with AppendLog(path) as log:
            assert log.replay(concat, []) == ["a", "b", "c"], (op, nth)
            assert log.check().next == 3
            assert log.append("d") == 3
            assert log.compact(concat, []) == (4, ["a", "b", "c", "d"])
            assert (list(log), len(log)) == ([], 4)


def test_iterator_survives_compaction(tmp_path: Path) -> None:
    """An iterator started before another handle compacts still yields every record."""
    path = tmp_path / "x.log"
    fill(path, list(range(100)))
    reader = AppendLog(path)
    it = reader.read()
    assert [next(it) for _ in range(10)] == list(range(10))
    with AppendLog(path) as other:
        other.compact(lambda s, r: s + 1, 0)
        other.append(100)
    assert list(it) == list(range(10, 100))
    assert (len(reader), list(reader), reader.snapshot()) == (101, [100], (100, 100))


def test_threads_share_a_handle(tmp_path: Path) -> None:
    """4 threads x 200 appends through one handle: 800 records, each thread's in order."""
    log = AppendLog(tmp_path / "x.log", durable=False)

    def work(t: int) -> None:
        for i in range(200):
            log.append([t, i])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    records = list(log)
    assert len(records) == len(log) == 800
    for t in range(4):
        assert [i for w, i in records if w == t] == list(range(200))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_uses_inherited_handle(tmp_path: Path) -> None:
    """A forked child appends through the handle its parent opened; both see every record."""
    log = AppendLog(tmp_path / "x.log")
    log.append("parent")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            code = 0 if log.append("child") == 1 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert log.append("parent again") == 2
    assert list(log) == ["parent", "child", "parent again"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.timeout(120)
def test_fork_child_closes_while_a_parent_thread_held_the_mutex(tmp_path: Path) -> None:
    """close() in a forked child does not wait for the handle's mutex that a parent thread
    held at the fork (that thread does not exist in the child): it closes and returns."""
    log = AppendLog(tmp_path / "x.log")
    log.append("parent")
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with log._mutex:
            held.set()
            done.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    read_end, write_end = os.pipe()
    pid = -1
    try:
        assert held.wait(60)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                log.close()
                os.write(write_end, b"closed")
            finally:
                os._exit(0)
        os.close(write_end)
        write_end = -1
        ready, _, _ = select.select([read_end], [], [], 30)
        assert ready == [read_end], "the child's close() hung on the parent's mutex"
        assert os.read(read_end, 16) == b"closed"
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        pid = -1
    finally:
        done.set()
        holder.join(60)
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert log.append("after") == 1  # the parent's handle is untouched
    log.close()


# -- processes ----------------------------------------------------------------------------

WRITER = """
    import os, sys, time
    from racefree import AppendLog
    path, who, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    log = AppendLog(path, durable=False)
    while not os.path.exists(go):
        time.sleep(0.001)
    seqs = []
    for i in range(n):
        if i % 10 == 9:
            seqs.extend(log.extend([{"w": who, "i": i, "b": 0}, {"w": who, "i": i, "b": 1}]))
        else:
            seqs.append(log.append({"w": who, "i": i}))
    print(" ".join(map(str, seqs)))
"""


def check_writers(records: list[tuple[int, Any]], writers: int, n: int,
                  seqs: list[str]) -> None:
    """Every writer's records are all there, in its order, each at the number it was told."""
    by_seq = dict(records)
    assert len(by_seq) == len(records) == writers * (n + n // 10)
    first = records[0][0]
    assert [s for s, _ in records] == list(range(first, first + len(records)))
    for who, out in enumerate(seqs):
        told = [int(s) for s in out.split()]
        mine = [by_seq[s] for s in told]
        expected: list[Any] = []
        for i in range(n):
            if i % 10 == 9:
                expected += [{"w": who, "i": i, "b": 0}, {"w": who, "i": i, "b": 1}]
            else:
                expected.append({"w": who, "i": i})
        assert mine == expected
        assert told == sorted(told)
        for s in range(len(told)):  # a batch's two records are adjacent
            if mine[s].get("b") == 0:
                assert told[s + 1] == told[s] + 1


@pytest.mark.slow
def test_processes_append_concurrently(tmp_path: Path) -> None:
    """4 processes x 1500 appends (every tenth a 2-record batch): exact total, each
    writer's order kept, every sequence number the one its append returned."""
    path, go = tmp_path / "x.log", tmp_path / "go"
    args = [[str(path), str(w), "1500", str(go)] for w in range(4)]
    outs = run_children(WRITER, args, go)
    with AppendLog(path) as log:
        records = list(log.items())
        check_writers(records, 4, 1500, outs)
        assert log.check().torn == 0


READER = """
    import os, sys
    from racefree import AppendLog
    path, done = sys.argv[1], sys.argv[2]
    expected = [(i, b) for i in range(400) for b in ((0, 1) if i % 10 == 9 else (0,))]
    log = AppendLog(path)
    views = 0
    while True:  # at least one replay, even if this process started after the writers ended
        got = {}
        for r in log.replay(lambda s, r: s + [r], []):
            got.setdefault(r["w"], []).append((r["i"], r.get("b", 0)))
        for w, pairs in got.items():
            assert w == -1 or pairs == expected[: len(pairs)], (w, pairs[-3:])
        views += 1
        if os.path.exists(done):
            break
    print(views)
"""


@pytest.mark.slow
def test_compaction_while_processes_append(tmp_path: Path) -> None:
    """3 processes append while this one compacts again and again and another process
    replays the log: nothing is lost, every record is in the snapshot or after it, in each
    writer's order, at its number, and every replay saw each writer's records without a gap."""
    path, go, done = tmp_path / "x.log", tmp_path / "go", tmp_path / "done"
    AppendLog(path).append({"w": -1, "i": 0})
    args = [[str(path), str(w), "400", str(go)] for w in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), *a],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in args]
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(READER), str(path),
                               str(done)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    procs.append(reader)
    try:
        log = AppendLog(path)
        go.touch()
        compactions = 0
        deadline = time.monotonic() + 60
        while any(p.poll() is None for p in procs[:3]) and time.monotonic() < deadline:
            log.compact(concat, [])
            compactions += 1
        done.touch()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            outs.append(out)
    finally:
        reap(procs)
    assert compactions >= 1
    assert int(outs.pop()) >= 1  # the reader's consistent replays
    snap = log.snapshot()
    assert snap is not None
    _, state = snap
    everything = list(enumerate(state)) + list(log.items())
    assert everything[0] == (0, {"w": -1, "i": 0})
    check_writers(everything[1:], 3, 400, outs)
    assert log.replay(concat, []) == [r for _, r in everything]
