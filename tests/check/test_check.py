"""``racefree check PATH``: what it finds, what it calls damage, and what ``--repair`` touches."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from racefree import AppendLog, JsonFile, Store
from racefree.check.checker import check_path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "racefree", "check", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def make_log(path: Path, n: int = 3) -> bytes:
    with AppendLog(path) as log:
        for i in range(n):
            log.append({"i": i})
    return path.read_bytes()


def test_a_directory_of_everything(tmp_path: Path) -> None:
    """A directory holding a JSON file, a log and a store: each is found, checked, reported ok."""
    JsonFile(tmp_path / "conf.json").write({"a": 1})
    make_log(tmp_path / "events.log")
    with Store(tmp_path / "docs") as s:
        s.put("x", {"n": 1})
    (tmp_path / "notes.txt").write_text("not racefree's")
    found = check_path(tmp_path)
    assert [(f.kind, Path(f.path).name, f.ok) for f in found] == [
        ("json", "conf.json", True), ("lock", "conf.json.lock", True), ("store", "docs", True),
        ("log", "events.log", True), ("lock", "events.log.lock", True),
        ("skipped", "notes.txt", True),
    ]
    proc = cli(str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "5 checked, 0 damaged, 1 skipped"


def test_damaged_json_is_reported_and_left_alone(tmp_path: Path) -> None:
    """A JSON file that does not parse: DAMAGED with its offset, exit 1, not a byte changed."""
    (tmp_path / "a.json").write_bytes(b'{"a": 1,}')
    proc = cli(str(tmp_path / "a.json"), "--repair")
    assert proc.returncode == 1
    assert proc.stdout.startswith("DAMAGED  json") and "byte offset 8" in proc.stdout
    assert (tmp_path / "a.json").read_bytes() == b'{"a": 1,}'


def test_torn_log_tail_is_not_damage_and_repair_cuts_only_it(tmp_path: Path) -> None:
    """A log with an incomplete last record: ok (noted); --repair removes exactly those bytes."""
    good = make_log(tmp_path / "l.log")
    with open(tmp_path / "l.log", "ab") as f:
        f.write(b"15 0000")  # a crash in the middle of an append
    proc = cli(str(tmp_path / "l.log"))
    assert proc.returncode == 0, proc.stdout
    assert "incomplete last record of 7 bytes" in proc.stdout
    assert (tmp_path / "l.log").read_bytes() == good + b"15 0000"  # checking changes nothing
    proc = cli(str(tmp_path / "l.log"), "--repair")
    assert proc.returncode == 0 and proc.stdout.startswith("repaired")
    assert (tmp_path / "l.log").read_bytes() == good
    with AppendLog(tmp_path / "l.log") as log:
        assert list(log) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_damaged_log_record_is_damage_and_check_touches_nothing(tmp_path: Path) -> None:
    """A flipped byte in a record with good records after it: DAMAGED, exit 1, file unchanged
    (``--repair`` salvages it: tests/check/test_salvage.py)."""
    good = make_log(tmp_path / "l.log", 4)
    bad = bytearray(good)
    bad[good.index(b'{"i":1}') + 5] ^= 0x01
    (tmp_path / "l.log").write_bytes(bytes(bad))
    proc = cli(str(tmp_path / "l.log"))
    assert proc.returncode == 1
    assert proc.stdout.startswith("DAMAGED  log")
    assert (tmp_path / "l.log").read_bytes() == bytes(bad)


def test_damaged_store_segment(tmp_path: Path) -> None:
    """A flipped byte inside a stored document: the store is DAMAGED, exit 1."""
    with Store(tmp_path / "s", _segment_size=8192) as s:
        s.put("a", {"text": "hello world"})
        s.put("b", {"text": "second"})
    seg = next((tmp_path / "s").glob("seg-*.rfs"))
    data = bytearray(seg.read_bytes())
    data[data.index(b"hello")] ^= 0x20
    seg.write_bytes(bytes(data))
    proc = cli(str(tmp_path / "s"))
    assert proc.returncode == 1, proc.stdout
    assert "DAMAGED  store" in proc.stdout


def test_missing_path_and_not_racefree(tmp_path: Path) -> None:
    """A missing path: one error line, exit 1. A file that is not racefree's: reported, exit 1."""
    proc = cli(str(tmp_path / "nope"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "x.bin").write_bytes(b"\x00\x01")
    proc = cli(str(tmp_path / "x.bin"))
    assert proc.returncode == 1 and "not a racefree file" in proc.stdout


@pytest.mark.parametrize("name", ["tmp.json.0a1b2c3d.rftmp"])
def test_leftover_temp_is_noted_not_damage(tmp_path: Path, name: str) -> None:
    """A temp file of a killed writer is a note (sweep removes it), not damage."""
    (tmp_path / f".{name}").write_bytes(b"{")
    found = check_path(tmp_path)
    assert [(f.kind, f.ok) for f in found] == [("temp", True)]


def test_store_without_manifest_is_damage(tmp_path: Path) -> None:
    """Segments but no MANIFEST (a store that lost it): DAMAGED, exit 1, nothing changed,
    found directly and inside a directory."""
    d = tmp_path / "top" / "s"
    d.parent.mkdir()
    with Store(d, durable=False) as s:
        s.put("a", {"n": 1})
    (d / "MANIFEST").unlink()
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    for target in (d, tmp_path / "top"):
        found = check_path(target)
        assert [(f.path, f.kind, f.ok) for f in found] == [(str(d), "store", False)]
        assert "segments but no MANIFEST" in found[0].detail
    proc = cli(str(tmp_path / "top"))
    assert proc.returncode == 1, proc.stdout
    assert "DAMAGED  store" in proc.stdout
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def _torn_store(d: Path) -> tuple[Path, int, int]:
    """A store whose last record lost its second half (a crash mid-write): returns its
    segment, the record's offset and the torn bytes left."""
    with Store(d, durable=False) as s:
        s.put("a", {"n": 1})
        s.put("b", {"text": "z" * 100})
    seg = next(d.glob("seg-*.rfs"))
    data = bytearray(seg.read_bytes())
    end = len(data.rstrip(b"\0"))
    start = data.index(b"RFR1", data.index(b"RFR1") + 1)  # the second frame's magic
    keep = (end - start) // 2
    data[start + keep:end] = bytes(end - start - keep)
    seg.write_bytes(bytes(data))
    return seg, start, keep


def test_check_is_read_only_and_repair_removes_a_torn_tail(tmp_path: Path) -> None:
    """check reports a torn last record without touching the segment; --repair zeroes it."""
    d = tmp_path / "s"
    seg, start, keep = _torn_store(d)
    before = seg.read_bytes()
    [found] = check_path(d)
    assert (found.kind, found.ok, found.repaired) == ("store", True, False)
    assert f"an incomplete last record of {keep} bytes" in found.detail
    assert "documents=1" in found.detail
    assert seg.read_bytes() == before
    [found] = check_path(d, repair=True)
    assert (found.kind, found.ok, found.repaired) == ("store", True, True)
    assert seg.read_bytes()[start:] == bytes(len(before) - start)


def test_check_does_not_change_a_damaged_last_record(tmp_path: Path) -> None:
    """A bit flip in the last (synced) record: DAMAGED, exit 1, and the segment unchanged."""
    d = tmp_path / "s"
    with Store(d) as s:
        for i in range(5):
            s.put(f"k{i}", {"i": i})
    seg = next(d.glob("seg-*.rfs"))
    data = bytearray(seg.read_bytes())
    data[len(data.rstrip(b"\0")) - 3] ^= 1
    seg.write_bytes(bytes(data))
    proc = cli(str(d))
    assert proc.returncode == 1, proc.stdout
    assert "DAMAGED  store" in proc.stdout and "does not look torn" in proc.stdout
    assert seg.read_bytes() == bytes(data)


def test_check_never_blocks_on_a_fifo_at_a_manifest(tmp_path: Path) -> None:
    """A FIFO at a store's MANIFEST name: ``check`` refuses it at once (it would have hung
    reading it), like the store itself; the FIFO is left alone."""
    import racefree

    store = tmp_path / "s"
    store.mkdir()
    os.mkfifo(store / "MANIFEST")
    with pytest.raises(racefree.UnsafePathError, match="FIFO"):
        check_path(store)
    assert stat.S_ISFIFO(os.lstat(store / "MANIFEST").st_mode)


def test_check_of_a_tree_reports_a_store_with_a_fifo_manifest_and_goes_on(
    tmp_path: Path,
) -> None:
    """Below PATH, a store whose MANIFEST is a FIFO is reported as unusable (not ok), never
    a hang, and the walk goes on to the other files (before: the refusal ended the run)."""
    store = tmp_path / "s"
    store.mkdir()
    os.mkfifo(store / "MANIFEST")
    (tmp_path / "ok.json").write_bytes(b"[1]")
    found = {Path(f.path).name: (f.kind, f.ok) for f in check_path(tmp_path)}
    assert found == {"s": ("store", False), "ok.json": ("json", True)}
    assert stat.S_ISFIFO(os.lstat(store / "MANIFEST").st_mode)


def test_a_damaged_lockfile_token_counter_is_reported_not_repaired(tmp_path: Path) -> None:
    """A held LockFile's ``.token`` counter damaged (LockFile then refuses the lock to every
    later caller): check of the directory reports it DAMAGED (before: not looked at);
    --repair leaves it as it is (the last token handed out cannot be known); a whole one
    is not listed beside its lock, and is when named. (A counter beside no lock file is
    not judged: ``x.token`` alone does not say it is racefree's.)"""
    from racefree import LockFile

    lock = tmp_path / "job.lock"
    token = tmp_path / "job.lock.token"
    with LockFile(lock):
        assert [(f.path, f.ok) for f in check_path(tmp_path)] == [(str(lock), True)]
        assert [(f.kind, f.ok) for f in check_path(token)] == [("lock", True)]
        token.write_bytes(b"garbage\n")
        for repair in (False, True):
            found = [f for f in check_path(tmp_path, repair=repair) if f.path == str(token)]
            assert [(f.kind, f.ok, f.repaired) for f in found] == [("lock", False, False)]
            assert "fencing-token counter is damaged" in found[0].detail
        assert token.read_bytes() == b"garbage\n"
        token.write_bytes(b"7\n")  # so that the release does not fail
