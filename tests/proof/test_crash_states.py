"""Crash-state enumeration: every state a power loss could leave, opened with the public API.

Each test records one or more operations at the file-system seam
(:class:`racefree.testing.Recorder`), builds every crash state of the recording
(:mod:`racefree.testing.states`: un-synced writes dropped, zero-filled, reordered or
torn, any subset of their pages reaching the disk; un-synced creates/renames/unlinks
lost or kept) and checks the operation's invariant in each: the old version or the
new one, never a mix; every operation acknowledged before the crash is present;
opening raises nothing. Each test prints how many distinct states it explored; the
counts are printed at the end of each module (``-s`` or the terminal summary), and
``test_crash_states_store.py`` requires the total to reach 10,000.

The store's operations are in ``test_crash_states_store.py``.

The "teeth" tests run the same harness against deliberately broken protocols
(no fsync before the rename, no directory fsync, no checksum in a log) and
require it to find violations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.crashrun import COUNTS, print_counts, run, versions_allowed

from racefree import _fs
from racefree.testing import CrashReport, CrashState, Recorder, explore


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the per-operation state counts once the module's tests have run."""
    yield
    print_counts(request, "crash states explored per operation (so far)", COUNTS)


# --------------------------------------------------------------------------- atomic_write
def _blob(i: int, size: int) -> bytes:
    """A distinctive payload: every 16-byte cell says which version and cell it is."""
    cells = (size + 15) // 16
    return b"".join(b"v%02d.cell%07d|" % (i, c) for c in range(cells))[:size]


@pytest.mark.parametrize("block", [512, 16])
def test_atomic_write_sequence(tmp_path: Path, block: int) -> None:
    """A file rewritten 6 times with atomic_write: each crash shows one whole acked-or-newer
    version.
    """
    from racefree import atomic_write

    base = tmp_path / "base"
    base.mkdir()
    sizes = [40, 1500, 5000, 700, 0, 3000]
    versions = [_blob(0, 900)] + [_blob(i + 1, n) for i, n in enumerate(sizes)]
    (base / "f").write_bytes(versions[0])
    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        for i, data in enumerate(versions[1:]):
            atomic_write(base / "f", data)
            rec.mark(str(i))

    def check(root: Path, state: CrashState) -> None:
        data = (root / "f").read_bytes()
        allowed = versions_allowed(versions, state.acked)
        assert data in allowed, f"{len(data)} B {data[:24]!r} not among acked-or-in-flight"

    run("atomic_write", rec, check, tmp_path, minimum=60 if block == 512 else 400, block=block)


def test_atomic_write_new_file(tmp_path: Path) -> None:
    """Creating a file: after a crash it is absent or whole; once acknowledged, present and whole.
    """
    from racefree import atomic_write

    base = tmp_path / "base"
    base.mkdir()
    data = _blob(1, 2600)
    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        atomic_write(base / "new.bin", data)
        rec.mark("0")

    def check(root: Path, state: CrashState) -> None:
        target = root / "new.bin"
        if state.acked or target.exists():
            assert target.read_bytes() == data

    run("atomic_write (new file)", rec, check, tmp_path, minimum=10, block=512)


def test_atomic_write_no_overwrite(tmp_path: Path) -> None:
    """overwrite=False (link, then unlink of the temp): absent or whole after any crash;
    whole once acknowledged; no name but the file and, at most, the recognisable temp.
    """
    from racefree import atomic_write

    base = tmp_path / "base"
    base.mkdir()
    data = _blob(2, 3100)
    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        atomic_write(base / "made.bin", data, overwrite=False)
        rec.mark("0")

    def check(root: Path, state: CrashState) -> None:
        target = root / "made.bin"
        if state.acked or target.exists():
            assert target.read_bytes() == data
        others = [n for n in os.listdir(root) if n != "made.bin"]
        assert all(n.endswith(".rftmp") for n in others), others

    run("atomic_write (overwrite=False)", rec, check, tmp_path, minimum=10, block=512)


def test_atomic_open_text(tmp_path: Path) -> None:
    """atomic_open("w") streaming several writes: old or new text, never a prefix."""
    from racefree import atomic_open

    base = tmp_path / "base"
    base.mkdir()
    old = "old line\n" * 200
    (base / "t.txt").write_text(old)
    lines = [f"new line {i:05d}\n" for i in range(600)]
    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        with atomic_open(base / "t.txt", "w") as f:
            for line in lines:
                f.write(line)
        rec.mark("0")
    new = "".join(lines)

    def check(root: Path, state: CrashState) -> None:
        text = (root / "t.txt").read_text()
        assert text == new if state.acked else text in (old, new), text[:30]

    run("atomic_open", rec, check, tmp_path, minimum=30, block=512)


# --------------------------------------------------------------------------- teeth
def _broken_atomic_write(path: Path, data: bytes, *, fsync: bool, dirsync: bool) -> None:
    """atomic_write with a step left out, the way peers get it wrong (W1, W2)."""
    tmp = f"{path}.tmp"
    fd = _fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _fs.write_all(fd, data)
        if fsync:
            _fs.fsync(fd)
    finally:
        _fs.close(fd)
    _fs.replace(tmp, str(path))
    if dirsync:
        _fs.fsync_dir(str(path.parent))


def _teeth(tmp_path: Path, *, fsync: bool, dirsync: bool) -> CrashReport:
    base = tmp_path / "base"
    base.mkdir()
    old, new = _blob(0, 1000), _blob(1, 3000)
    (base / "f").write_bytes(old)
    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        _broken_atomic_write(base / "f", new, fsync=fsync, dirsync=dirsync)
        rec.mark("0")

    def check(root: Path, state: CrashState) -> None:
        data = (root / "f").read_bytes()
        assert data == new if state.acked else data in (old, new), f"{len(data)} B {data[:16]!r}"

    return explore("teeth", rec, check, tmp_path / "states", max_violations=1000, block=512)


def test_teeth_the_correct_protocol_passes(tmp_path: Path) -> None:
    """The hand-written protocol with every step in place: 0 violations (the control)."""
    result = _teeth(tmp_path, fsync=True, dirsync=True)
    assert result.violations == []
    assert result.states >= 10


def test_teeth_no_fsync_before_rename_is_caught(tmp_path: Path) -> None:
    """W1: without fsync before the rename, a crash can leave an empty, NUL-filled or torn file."""
    result = _teeth(tmp_path, fsync=False, dirsync=True)
    print(result.summary())
    text = "\n".join(map(str, result.violations))
    assert "write@ino2:drop" in text  # the empty file
    assert "write@ino2:zero" in text  # the NUL-filled file
    assert "write@ino2:head/512" in text  # the torn file
    assert all("acked=[]" in str(v) or "acked=['0']" in str(v) for v in result.violations)


def test_teeth_no_directory_fsync_is_caught(tmp_path: Path) -> None:
    """W2: without the directory fsync, an acknowledged rename can be lost (old contents back)."""
    result = _teeth(tmp_path, fsync=True, dirsync=False)
    print(result.summary())
    assert result.violations, "the harness missed the lost rename"
    assert all("acked=['0']" in str(v) and "lost" in str(v) for v in result.violations)


def _naive_log_append(path: Path, record: dict[str, Any]) -> None:
    """A JSON-lines append with fsync but no framing: a torn line is taken as data or fails."""
    fd = _fs.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _fs.write_all(fd, json.dumps(record).encode() + b"\n")
        _fs.fsync(fd)
    finally:
        _fs.close(fd)


def _naive_log_read(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_teeth_unframed_log_is_caught(tmp_path: Path) -> None:
    """S6: a log without length+checksum framing shows torn records (or fails to open)."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "log").write_bytes(b"")
    records = [{"i": i, "pad": "x" * 90} for i in range(4)]
    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        for i, r in enumerate(records):
            _naive_log_append(base / "log", r)
            rec.mark(str(i))

    def check(root: Path, state: CrashState) -> None:
        got = _naive_log_read(root / "log")
        n = len(state.acked)
        assert got in (records[:n], records[: n + 1])

    result = explore("teeth-log", rec, check, tmp_path / "states", block=64, max_violations=100)
    print(result.summary())
    assert any("JSONDecodeError" in str(v) for v in result.violations)


# --------------------------------------------------------------------------- JsonFile
@pytest.mark.parametrize("block", [512, 16])
def test_jsonfile_update(tmp_path: Path, block: int) -> None:
    """JsonFile.update x8 (a growing document): every crash state reads as an acked-or-newer value.
    """
    from racefree import JsonFile

    base = tmp_path / "base"
    base.mkdir()
    path = base / "doc.json"
    JsonFile(path).write({"n": 0, "items": []})
    versions: list[Any] = [{"n": 0, "items": []}]

    def bump(doc: dict[str, Any]) -> dict[str, Any]:
        n = doc["n"] + 1
        return {"n": n, "items": [*doc["items"], {"i": n, "pad": "p" * (150 * n)}]}

    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        jf = JsonFile(path)
        for i in range(8):
            versions.append(jf.update(bump))
            rec.mark(str(i))

    def check(root: Path, state: CrashState) -> None:
        value = JsonFile(root / "doc.json").read()  # never CorruptFileError
        assert value in versions_allowed(versions, state.acked), value["n"]

    run("JsonFile.update", rec, check, tmp_path, minimum=40 if block == 512 else 400, block=block)


# --------------------------------------------------------------------------- AppendLog
def _records(n: int) -> list[Any]:
    """Records of varied sizes (some span several 64-byte blocks)."""
    return [{"i": i, "pad": "r" * (7 * i * i % 300)} for i in range(n)]


def _record_log_writes(
    base: Path, items: list[Any], write: Callable[[Any, Any], object]
) -> Recorder:
    """Record ``write(log, item)`` for each item on ``base/events.log``, marking each ack."""
    from racefree import AppendLog

    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        with AppendLog(base / "events.log") as log:
            for i, item in enumerate(items):
                write(log, item)
                rec.mark(str(i))
    return rec


@pytest.mark.parametrize("block", [16, 128])
def test_log_append(tmp_path: Path, block: int) -> None:
    """AppendLog.append x80: a crash shows every acked record in order, maybe the one in flight."""
    from racefree import AppendLog

    base = tmp_path / "base"
    base.mkdir()
    path = base / "events.log"
    first = _records(2)
    with AppendLog(path) as log:
        for r in first:
            log.append(r)
    more = [{"i": 100 + i, "pad": "a" * (37 * i % 200)} for i in range(80)]
    rec = _record_log_writes(base, more, AppendLog.append)

    def check(root: Path, state: CrashState) -> None:
        with AppendLog(root / "events.log") as log:
            got = list(log.read(0))
            log.check()
        n = len(state.acked)
        assert got in (first + more[:n], first + more[: n + 1]), got[len(first) :]

    run("AppendLog.append", rec, check, tmp_path, minimum=500 if block == 16 else 150, block=block)


def test_log_extend(tmp_path: Path) -> None:
    """AppendLog.extend: a batch is all there or not there at all after any crash."""
    from racefree import AppendLog

    base = tmp_path / "base"
    base.mkdir()
    batches = [_records(5), [{"b": 2}] * 3, _records(9)[4:]]
    rec = _record_log_writes(base, batches, AppendLog.extend)

    def check(root: Path, state: CrashState) -> None:
        with AppendLog(root / "events.log") as log:
            got = list(log.read(0))
        n = len(state.acked)
        done = [r for b in batches[:n] for r in b]
        allowed = [done, done + (batches[n] if n < len(batches) else [])]
        assert got in allowed, got

    run("AppendLog.extend", rec, check, tmp_path, minimum=100, block=16)


def _fold(state: list[Any], record: Any) -> list[Any]:
    return [*state, record]


def test_log_compact(tmp_path: Path) -> None:
    """AppendLog.compact, then appends: the fold of the log is the same in every crash state.

    Compaction changes where records live (snapshot vs segment), never what the
    log means: replay() must give the fold of every acked record (plus maybe the
    one in flight), and sequence numbers never change.
    """
    from racefree import AppendLog

    base = tmp_path / "base"
    base.mkdir()
    path = base / "events.log"
    old = _records(12)
    with AppendLog(path) as log:
        for r in old:
            log.append(r)
    after = [{"i": 50 + i} for i in range(3)]
    rec = Recorder(base)
    with _fs.use(rec):
        rec.checkpoint()
        with AppendLog(path) as log:
            log.compact(_fold, [])
            rec.mark("compact")
            for i, r in enumerate(after):
                log.append(r)
                rec.mark(str(i))
            log.compact(_fold, [])
            rec.mark("compact again")

    every = old + after

    def check(root: Path, state: CrashState) -> None:
        with AppendLog(root / "events.log") as log:
            folded = log.replay(_fold, [])
            n = len(log)
            log.check()
        acked_appends = min(len(after), max(0, len(state.acked) - 1))
        low = len(old) + acked_appends
        assert n in (low, min(low + 1, len(every))) and folded == every[:n], (n, folded)

    run("AppendLog.compact", rec, check, tmp_path, minimum=200, block=16)
