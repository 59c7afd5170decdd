"""``racefree check --repair`` salvages a damaged store or log: every intact record is kept.

One test per damage kind (a flipped byte in a middle record, a zeroed page, a segment
cut short, a lost MANIFEST; a damaged log record), each checking the exact documents
kept, their versions, the exact report, the copy of the damaged files and that the
result opens; and the cases that cannot be made whole, which change nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from racefree import AppendLog, Store
from racefree.check.checker import check_path
from racefree.store.segment import SEG_HEADER, iter_frames

DOCS = 30


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "racefree", "check", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def _store(d: Path) -> tuple[Path, list[tuple[int, int]]]:
    with Store(d) as s:
        for i in range(DOCS):
            s.put(f"doc-{i}", {"i": i, "pad": "p" * 300})
        s.put("doc-0", {"i": 0, "again": True})  # doc-0 at version 2
    seg = d / "seg-00000001.rfs"
    return seg, list(iter_frames(seg.read_bytes(), SEG_HEADER.size))


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _salvage(d: Path) -> tuple[list[str], Path]:
    """Run ``check --repair`` on ``d``; the report's lines and the damaged-files copy."""
    before = _files(d)
    proc = cli(str(d), "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"repaired store   {d}: salvaged: documents=")
    [saved] = [p for p in d.iterdir() if p.name.startswith("damaged-")]
    assert f"the damaged files were copied to {saved}" in lines[0]
    # Every file the repair replaced was copied first, byte for byte.
    copied = _files(saved)
    assert copied == {k: v for k, v in before.items() if k in copied}
    assert set(copied) == {k for k in before if k == "MANIFEST" or k.startswith("seg-")}
    assert lines[-1] == "1 checked, 0 damaged"
    return [line.strip() for line in lines[1:-1]], saved


def _kept(d: Path) -> dict[str, int | None]:
    with Store(d) as s:
        assert s.check().documents == len(s)
        items = {k: s.version(k) for k in s}
        for k, doc in s.items():
            assert doc["i"] == int(k.split("-")[1])
    [found] = check_path(d)
    assert found.ok and not found.repaired, found.detail
    return items


def _all_but(*lost: int) -> dict[str, int | None]:
    return {f"doc-{i}": (2 if i == 0 else 1) for i in range(DOCS) if i not in lost}


def test_flipped_byte_in_a_middle_record(tmp_path: Path) -> None:
    """A flipped byte in record 6 (doc-5, with synced records after it): only doc-5 lost."""
    d = tmp_path / "s"
    seg, frames = _store(d)
    off, n = frames[5]
    data = bytearray(seg.read_bytes())
    data[off + n - 20] ^= 0x04
    seg.write_bytes(bytes(data))
    proc = cli(str(d))
    assert proc.returncode == 1 and "DAMAGED  store" in proc.stdout
    assert "--repair salvages" in proc.stdout
    report, _ = _salvage(d)
    assert report == [
        f"lost record 6, seg-00000001.rfs bytes {off}-{off + n}: damaged: damaged record (it"
        " does not look torn: no piece of it reads as unwritten); it held put 'doc-5' version 1",
        "lost 'doc-5': put version 1 lost; nothing of it is kept",
    ]
    assert _kept(d) == _all_but(5)


def test_zeroed_page(tmp_path: Path) -> None:
    """A 4 KiB page of the segment reads as zeros: the records it touched are lost, with
    the first one's id (its header is before the page); every other record is kept."""
    d = tmp_path / "s"
    seg, frames = _store(d)
    data = bytearray(seg.read_bytes())
    data[4096:8192] = bytes(4096)
    seg.write_bytes(bytes(data))
    hit = [i for i, (off, n) in enumerate(frames) if off < 8192 and off + n > 4096]
    first_off = frames[hit[0]][0]
    after = frames[hit[-1] + 1][0]
    report, _ = _salvage(d)
    assert report == [
        f"lost records {hit[0] + 1}-{hit[0] + 2} or more (no record header is readable past"
        f" that), seg-00000001.rfs bytes {first_off}-{after}: damaged: part of it reads as"
        f" zeros, and valid records follow it; it held put 'doc-{hit[0]}' version 1",
        f"lost 'doc-{hit[0]}': put version 1 lost; nothing of it is kept",
    ]
    assert _kept(d) == _all_but(*hit)


def test_segment_cut_short(tmp_path: Path) -> None:
    """The segment file cut inside record 25: records 1-24 are kept, the rest reported."""
    d = tmp_path / "s"
    seg, frames = _store(d)
    off, n = frames[24]
    os.truncate(seg, off + n // 2)
    report, _ = _salvage(d)
    assert report == [
        f"lost record 25 or more (no record header is readable past that), seg-00000001.rfs"
        f" bytes {off}-{off + n // 2}: damaged: its length ({n - 12}) runs past the end of the"
        " segment: no write leaves that length; which ids it held cannot be read",
    ]
    assert _kept(d) == {f"doc-{i}": 1 for i in range(1, 24)} | {"doc-0": 1}


def test_lost_manifest(tmp_path: Path) -> None:
    """No MANIFEST: the store is rebuilt from its segment files, nothing is lost."""
    d = tmp_path / "s"
    _store(d)
    (d / "MANIFEST").unlink()
    [found] = check_path(d)
    assert not found.ok and "segments but no MANIFEST" in found.detail
    report, saved = _salvage(d)
    assert report == ["MANIFEST: missing; rebuilt from the segment files seg-00000001.rfs"]
    assert "MANIFEST" not in _files(saved)
    assert _kept(d) == _all_but()


def test_garbage_manifest_and_a_flipped_byte(tmp_path: Path) -> None:
    """A MANIFEST overwritten with garbage and a damaged record: both reported, one lost."""
    d = tmp_path / "s"
    seg, frames = _store(d)
    (d / "MANIFEST").write_bytes(b"garbage")
    off, n = frames[30]  # the last record: doc-0's second version
    data = bytearray(seg.read_bytes())
    data[off + n - 10] ^= 0x10  # inside its document
    seg.write_bytes(bytes(data))
    report, _ = _salvage(d)
    assert report[0].startswith("MANIFEST: damaged (")
    assert report[1].startswith(f"lost record 31, seg-00000001.rfs bytes {off}-{off + n}:")
    assert report[2:] == ["lost 'doc-0': put version 2 lost; version 1 is kept"]
    assert _kept(d) == _all_but() | {"doc-0": 1}


def test_store_open_elsewhere_is_not_touched(tmp_path: Path) -> None:
    """While another handle has the store open, salvage refuses and changes nothing."""
    d = tmp_path / "s"
    seg, frames = _store(d)
    with Store(d):
        off, n = frames[3]
        data = bytearray(seg.read_bytes())
        data[off + n - 5] ^= 0x01
        seg.write_bytes(bytes(data))
        before = _files(d)
        [found] = check_path(d, repair=True)
        assert not found.ok
        assert found.detail == ("not repaired, nothing changed: the store is open in another"
                                " process; close it first")
        assert _files(d) == before
        assert not [p for p in d.iterdir() if p.name.startswith("damaged-")]


def _log(path: Path) -> bytes:
    with AppendLog(path) as log:
        for i in range(6):
            log.append({"i": i})
    return path.read_bytes()


def test_log_flipped_byte_in_a_middle_record(tmp_path: Path) -> None:
    """Record 2 of 6 damaged: records 0, 1, 3, 4, 5 kept (renumbered 0-4), the log copied
    aside, the result checks; appends go on after it."""
    path = tmp_path / "l.log"
    good = _log(path)
    at = good.index(b'{"i":2}')
    start = good.rindex(b"\n", 0, at) + 1
    stop = good.index(b"\n", at) + 1
    bad = bytearray(good)
    bad[at + 5] ^= 0x01
    path.write_bytes(bytes(bad))
    proc = cli(str(path), "--repair")
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"repaired log     {path}: salvaged: kept 5 records (sequence 0..4)")
    assert [line.strip() for line in lines[1:-1]] == [
        f"lost record 2, bytes {start}-{stop} (line 4): damaged: a damaged record with valid"
        " records after it",
        "renumbered: the records after 2 now have numbers 1 lower",
    ]
    [saved] = [p for p in tmp_path.iterdir() if p.name.startswith("damaged-")]
    assert (saved / "l.log").read_bytes() == bytes(bad)
    assert path.read_bytes() == good[:start] + good[stop:]
    with AppendLog(path) as log:
        assert list(log) == [{"i": i} for i in (0, 1, 3, 4, 5)]
        assert log.append({"i": 6}) == 5


@pytest.mark.parametrize("where", ["snapshot", "header without its snapshot"])
def test_log_that_cannot_be_made_whole_is_not_touched(tmp_path: Path, where: str) -> None:
    """A damaged snapshot (the folded records are gone), or a damaged header that still
    says the log was compacted when its snapshot is missing (the records before it are
    gone): exit 1, the reason, and nothing changed. (A damaged header whose values are
    known is rebuilt: tests/check/test_damaged_header.py.)"""
    path = tmp_path / "l.log"
    _log(path)
    with AppendLog(path) as log:
        log.compact(lambda n, r: n + 1, 0)
        log.append({"i": 9})
    victim = tmp_path / "l.log.snapshot" if where == "snapshot" else path
    if where != "snapshot":
        (tmp_path / "l.log.snapshot").unlink()
    data = bytearray(victim.read_bytes())
    data[5] ^= 0x01
    victim.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    proc = cli(str(path), "--repair")
    assert proc.returncode == 1, proc.stdout
    assert "not repaired, nothing changed: cannot be made whole:" in proc.stdout
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_log_salvage_never_writes_through_a_link_swapped_in(tmp_path: Path) -> None:
    """A link to another file swapped in at the log's name after the salvage's last look
    (driven through the seam, at the exact call): the salvaged log replaces the link
    itself, never the link's target, which stays byte for byte (docs/security.md, 2)."""
    from racefree import _fs

    path = tmp_path / "l.log"
    good = _log(path)
    at = good.index(b'{"i":2}')
    bad = bytearray(good)
    bad[at + 5] ^= 0x01
    path.write_bytes(bytes(bad))
    victim = tmp_path / "victim"
    victim.write_bytes(b"someone else's data\n")
    swapped: list[bool] = []

    class Swapper(_fs.FileSystem):
        """After the salvage's last lstat of the log, a link takes its place."""

        def stat(self, p: str, *, follow_symlinks: bool = True) -> os.stat_result:
            st = super().stat(p, follow_symlinks=follow_symlinks)
            if p == str(path) and not follow_symlinks and any(
                n.startswith("damaged-") for n in os.listdir(tmp_path)
            ) and not swapped:
                os.rename(path, tmp_path / "moved.log")
                os.symlink(victim, path)
                swapped.append(True)
            return st

    with _fs.use(Swapper()):
        [found] = check_path(path, repair=True)
    assert swapped == [True] and found.repaired
    assert victim.read_bytes() == b"someone else's data\n"
    assert not path.is_symlink()
    with AppendLog(path) as log:
        assert list(log) == [{"i": i} for i in (0, 1, 3, 4, 5)]
