"""The file store's own behaviour: its files, torn tails, corruption, repair, group commit,
fdatasync failure, compaction crashes, segment rolls and the on-disk format."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from racefree import ConflictError, CorruptFileError, DurabilityError, FormatError, Store, _fs
from racefree.store.segment import FRAME, SEG_HEADER, iter_frames

SMALL = 64 << 10  # a small segment size, so that tests roll segments


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.rfs"))


def _frames(seg: Path) -> list[tuple[int, int]]:
    return list(iter_frames(seg.read_bytes(), SEG_HEADER.size))


def _wait_for(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def test_on_disk_format(tmp_path: Path) -> None:
    """A put is one frame: magic, length, crc32, then the synced position, then
    op/idlen/version/doclen, id, JSON."""
    with Store(tmp_path / "s", durable=False) as s:
        s.put("k/1", {"a": [1, 2.5, None], "é": "\ud800"})
    seg = _segments(tmp_path / "s")[0]
    data = seg.read_bytes()
    assert data[:16] == b"RFSTSEG\x01" + (1).to_bytes(8, "little")
    [(off, n)] = _frames(seg)
    assert off == 16
    doc = b'{"a":[1,2.5,null],"\\u00e9":"\\ud800"}'
    synced = (1 << 40 | 16).to_bytes(8, "little")  # segment 1, its header: synced at open
    payload = synced + bytes([1]) + (3).to_bytes(4, "little") + (1).to_bytes(8, "little")
    payload += len(doc).to_bytes(4, "little") + b"k/1" + doc
    assert data[off + FRAME.size:off + n] == payload
    assert data[off + n:off + n + 64] == bytes(64)
    manifest = json.loads((tmp_path / "s" / "MANIFEST").read_text())
    assert manifest == {"racefree": "store", "format": 1, "gen": 0, "segments": [1]}


def _store_with_last_record(path: Path) -> tuple[Path, int, int]:
    with Store(path, durable=False) as s:
        for i in range(5):
            s.put(f"k{i}", {"i": i})
        s.put("last", {"payload": "z" * 40})
    seg = _segments(path)[0]
    off, n = _frames(seg)[-1]
    return seg, off, n


def test_a_segment_cut_short_inside_a_record_is_damage(tmp_path: Path) -> None:
    """Segments are zero-filled to their full size and synced before use, so no crash
    leaves one that ends inside a record: a file cut there is damage, reported with the
    offset of that record, and opening changes nothing (``racefree check --repair``
    salvages it: tests/check/test_salvage.py)."""
    src = tmp_path / "src"
    seg, off, n = _store_with_last_record(src)
    for cut in range(off + 1, off + n):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(src, work)
        os.truncate(work / seg.name, cut)
        before = (work / seg.name).read_bytes()
        with pytest.raises(CorruptFileError) as info:
            Store(work, durable=False)
        assert info.value.offset == off, cut
        assert "cut" in info.value.detail or "runs past the end of the segment" in info.value.detail
        assert (work / seg.name).read_bytes() == before
        shutil.rmtree(work)


def test_torn_tail_inside_preallocated_space(tmp_path: Path) -> None:
    """A prefix of the last record followed by the segment's zeros is a torn tail, repaired."""
    src = tmp_path / "src"
    seg, off, n = _store_with_last_record(src)
    full = seg.read_bytes()
    for keep in range(1, n, 3):
        work = tmp_path / f"keep{keep}"
        shutil.copytree(src, work)
        data = bytearray(full)
        data[off + keep:off + n] = bytes(n - keep)
        (work / seg.name).write_bytes(bytes(data))
        with Store(work, durable=False) as s:
            assert "last" not in s
            s.put("x", {"short": 1})
        # The garbage after the new, shorter record was zeroed: the file reopens clean.
        assert (work / seg.name).read_bytes()[off:off + n].count(0) >= n - 60
        with Store(work, durable=False) as s:
            assert s.get("x") == {"short": 1}
            assert s.check().documents == 6
        shutil.rmtree(work)


@pytest.mark.parametrize("where", ["doc", "length", "crc", "magic"])
def test_flipped_byte_in_the_middle_is_corruption(tmp_path: Path, where: str) -> None:
    """A damaged record followed by good records: CorruptFileError naming file and offset."""
    with Store(tmp_path / "s", durable=False) as s:
        for i in range(4):
            s.put(f"k{i}", {"i": i, "text": "abcdefgh" * 4})
    seg = _segments(tmp_path / "s")[0]
    off, n = _frames(seg)[1]
    at = {"doc": off + n - 5, "length": off + 4, "crc": off + 9, "magic": off}[where]
    data = bytearray(seg.read_bytes())
    data[at] ^= 0x5A
    seg.write_bytes(bytes(data))
    before = seg.read_bytes()
    with pytest.raises(CorruptFileError) as info:
        Store(tmp_path / "s", durable=False)
    assert info.value.path == str(seg)
    assert info.value.offset == off
    assert seg.read_bytes() == before  # nothing repaired, nothing thrown away


def test_check_finds_damage_after_open(tmp_path: Path) -> None:
    """check() re-reads every record: damage made while the store is open is reported."""
    with Store(tmp_path / "s", durable=False) as s:
        for i in range(3):
            s.put(f"k{i}", {"i": i})
        seg = _segments(tmp_path / "s")[0]
        off, n = _frames(seg)[0]
        fd = os.open(seg, os.O_RDWR)
        try:
            os.pwrite(fd, b"X", off + n - 2)
        finally:
            os.close(fd)
        with pytest.raises(CorruptFileError) as info:
            s.check()
        assert info.value.offset == off


def test_dead_writers_torn_frame_is_zeroed_by_next_writer(tmp_path: Path) -> None:
    """Bytes past the published end (a writer killed mid-pwrite) are zeroed, not read."""
    with Store(tmp_path / "s", durable=False) as s:
        s.put("a", {"n": 1})
        seg = _segments(tmp_path / "s")[0]
        off, n = _frames(seg)[-1]
        end = off + n
        fd = os.open(seg, os.O_RDWR)
        try:
            # Half of a frame, as a SIGKILL in the middle of a large pwrite leaves it.
            os.pwrite(fd, seg.read_bytes()[off:off + n // 2] + b"\x07" * 30, end)
        finally:
            os.close(fd)
        assert s.put("b", {"n": 2}) == 1
        assert s.items() == [("a", {"n": 1}), ("b", {"n": 2})]
    with Store(tmp_path / "s", durable=False) as s:
        assert s.check().documents == 2


def test_dead_writers_whole_frame_is_adopted(tmp_path: Path) -> None:
    """A complete frame past the published end (writer killed before publishing) is kept."""
    with Store(tmp_path / "src", durable=False) as s:
        s.put("a", {"n": 1})
        s.put("ghost", {"n": 2})
    seg = _segments(tmp_path / "src")[0]
    _, (off2, n2) = _frames(seg)
    ghost = seg.read_bytes()[off2:off2 + n2]
    with Store(tmp_path / "s", durable=False) as s:
        s.put("a", {"n": 1})
        target = _segments(tmp_path / "s")[0]
        fd = os.open(target, os.O_RDWR)
        try:
            os.pwrite(fd, ghost, off2)
        finally:
            os.close(fd)
        assert "ghost" not in s  # not published: readers do not see it
        assert s.put("c", {"n": 3}) == 1
        assert s.get("ghost") == {"n": 2}
        assert s.keys() == ["a", "c", "ghost"]


def test_format_errors(tmp_path: Path) -> None:
    """A directory that is not a store, or a newer format, raises FormatError."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    with pytest.raises(FormatError):
        Store(other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]  # nothing created there
    with Store(tmp_path / "s", durable=False) as s:
        s.put("a", {})
    manifest = tmp_path / "s" / "MANIFEST"
    manifest.write_text(json.dumps({"racefree": "store", "format": 99, "gen": 0, "segments": [1]}))
    with pytest.raises(FormatError):
        Store(tmp_path / "s")


def test_segments_roll_and_big_documents(tmp_path: Path) -> None:
    """Writes beyond a segment's size roll to new segments; a huge doc gets its own."""
    big = {"blob": "b" * (3 * SMALL)}
    with Store(tmp_path / "s", durable=False, _segment_size=SMALL) as s:
        for i in range(300):
            s.put(f"k{i}", {"i": i, "pad": "p" * 500})
        s.put("big", big)
        s.put("after", {"x": 1})
        assert len(_segments(tmp_path / "s")) >= 3
        other = Store(tmp_path / "s", durable=False)
        assert other.get("big") == big
        s.put("later", {"y": 2})
        assert other.get("later") == {"y": 2}
        other.close()
    with Store(tmp_path / "s", durable=False) as s:
        assert len(s) == 303
        assert s.get("k299") == {"i": 299, "pad": "p" * 500}
        assert s.get("big") == big
        assert s.check().documents == 303


def test_automatic_compaction(tmp_path: Path) -> None:
    """Overwrites past the threshold trigger a compaction: space is reclaimed, nothing lost."""
    with Store(tmp_path / "s", durable=False, _segment_size=SMALL, _compact_min=32 << 10) as s:
        for round_ in range(40):
            for i in range(20):
                s.put(f"k{i}", {"round": round_, "pad": "q" * 200})
        s.delete("k0")
        report = s.check()
        assert report.documents == 19
        assert report.tombstones == 1
        assert report.dead_bytes < 32 << 10
        manifest = json.loads((tmp_path / "s" / "MANIFEST").read_text())
        assert manifest["gen"] >= 1
        assert s.get("k5") == {"round": 39, "pad": "q" * 200}
        assert s.version("k5") == 40
    files = {p.name for p in (tmp_path / "s").iterdir()}
    assert {f"seg-{n:08d}.rfs" for n in manifest["segments"]} <= files
    assert len([f for f in files if f.startswith("seg-")]) == len(manifest["segments"])


def test_reader_keeps_working_across_compaction(tmp_path: Path) -> None:
    """A second handle reads through another's compaction and then sees later writes."""
    a = Store(tmp_path / "s", durable=False)
    b = Store(tmp_path / "s", durable=False)
    try:
        for i in range(50):
            a.put(f"k{i}", {"i": i})
        assert b.get("k7") == {"i": 7}
        a.compact()
        a.put("new", {"n": 1})
        assert b.get("k7") == {"i": 7}
        assert b.get("new") == {"n": 1}
        b.delete("k8")
        a.compact()
        assert "k8" not in a
        assert len(b) == 50
    finally:
        a.close()
        b.close()


class _FailReplace(_fs.FileSystem):
    """Fails the rename of the MANIFEST: a compaction that stops before its commit point."""

    def replace(self, src: str, dst: str) -> None:
        if dst.endswith("MANIFEST"):
            raise OSError(errno.EIO, "injected")
        super().replace(src, dst)


def test_compaction_failing_before_commit_changes_nothing(tmp_path: Path) -> None:
    """A compaction that fails before the MANIFEST is replaced leaves the old state in force."""
    with Store(tmp_path / "s", durable=False) as s:
        for i in range(10):
            s.put(f"k{i}", {"i": i})
        s.delete("k3")
        with _fs.use(_FailReplace()), pytest.raises(OSError):
            s.compact()
        assert len(s) == 9
        assert s.put("k3", {"back": True}) == 3
    with Store(tmp_path / "s", durable=False) as s:
        assert len(s) == 10
        assert s.check().documents == 10
    assert [p.name for p in _segments(tmp_path / "s")] == ["seg-00000001.rfs"]


class _CountSync(_fs.FileSystem):
    """Counts fdatasync calls; the first one waits until the test releases it."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_entered = threading.Event()
        self.release_first = threading.Event()
        self.lock = threading.Lock()

    def fdatasync(self, fd: int) -> None:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.first_entered.set()
            if not self.release_first.wait(30):
                raise AssertionError("never released")
        super().fdatasync(fd)


def test_group_commit_shares_one_fdatasync(tmp_path: Path) -> None:
    """Two writers that publish while a third is in fdatasync share one: 3 puts, 2 syncs."""
    store = Store(tmp_path / "s", durable=True)
    reader = Store(tmp_path / "s", durable=False)
    fake = _CountSync()
    errors: list[BaseException] = []

    def put(key: str) -> None:
        try:
            store.put(key, {"k": key})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        with _fs.use(fake):
            first = threading.Thread(target=put, args=("a",))
            first.start()
            assert fake.first_entered.wait(30)
            others = [threading.Thread(target=put, args=(k,)) for k in ("b", "c")]
            for t in others:
                t.start()
            # Both are published (readable) and now wait for the sync in progress.
            _wait_for(lambda: "b" in reader and "c" in reader, "b and c to be published")
            fake.release_first.set()
            for t in [first, *others]:
                t.join(30)
        assert errors == []
        assert fake.calls == 2
        assert reader.keys() == ["a", "b", "c"]
    finally:
        fake.release_first.set()
        store.close()
        reader.close()


class _FailSync(_fs.FileSystem):
    def __init__(self) -> None:
        self.calls = 0

    def fdatasync(self, fd: int) -> None:
        self.calls += 1
        raise OSError(errno.EIO, "injected EIO")


def test_fdatasync_failure_is_never_retried_and_stops_writes(tmp_path: Path) -> None:
    """An fdatasync error raises DurabilityError once; every handle then refuses writes (W7)."""
    store = Store(tmp_path / "s", durable=True)
    other = Store(tmp_path / "s", durable=False)
    fake = _FailSync()
    try:
        store.put("before", {"n": 1})
        with _fs.use(fake):
            with pytest.raises(DurabilityError) as info:
                store.put("a", {"n": 1})
            assert info.value.errno == errno.EIO
            with pytest.raises(DurabilityError):
                store.put("b", {"n": 2})
            with pytest.raises(DurabilityError):
                other.put("c", {"n": 3})
            with pytest.raises(DurabilityError):
                store.update("before", lambda d: d)
        assert fake.calls == 1
        assert store.get("before") == {"n": 1}  # reads still work
        assert "b" not in other and "c" not in other
    finally:
        store.close()
        other.close()


def test_update_is_reentrant_for_fn_writes(tmp_path: Path) -> None:
    """fn may write to the store itself: its write comes first, update's after."""
    with Store(tmp_path / "s", durable=False) as s:
        s.put("a", {"n": 1})

        def fn(doc: dict[str, Any]) -> dict[str, Any]:
            s.put("side", {"from": "fn"})
            return {"n": doc["n"] + 1}

        assert s.update("a", fn) == {"n": 2}
        assert s.get("side") == {"from": "fn"}
        with pytest.raises(ConflictError):
            s.put("a", {}, expect_version=1)


def test_threads_lose_no_update(tmp_path: Path) -> None:
    """8 threads x 50 updates of one counter through one shared Store: exactly 400."""
    with Store(tmp_path / "s", durable=False) as s:
        def work() -> None:
            for _ in range(50):
                s.update("n", lambda d: {"n": d["n"] + 1}, default={"n": 0})

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert s.get("n") == {"n": 400}
        assert s.version("n") == 400


def test_fence_is_refused(tmp_path: Path) -> None:
    """A fencing token is a PostgreSQL-store feature: the file store refuses one, writes nothing."""
    with Store(tmp_path / "s", durable=False) as s:
        with pytest.raises(ValueError):
            s.put("a", {}, fence=7)  # type: ignore[arg-type]
        assert "a" not in s


def _damage(seg: Path, at: int, data: bytes) -> None:
    fd = os.open(seg, os.O_RDWR)
    try:
        os.pwrite(fd, data, at)
    finally:
        os.close(fd)


@pytest.mark.parametrize("missing", ["tail", "head"])
def test_power_loss_tear_before_a_valid_record_opens(tmp_path: Path, missing: str) -> None:
    """Un-synced records may reach the disk out of order: a torn one followed by a valid
    one, neither claimed synced, is a torn tail: both are dropped, the rest opens."""
    with Store(tmp_path / "s", durable=False) as s:
        for i in range(4):
            s.put(f"k{i}", {"i": i, "text": "t" * 100})
    seg = _segments(tmp_path / "s")[0]
    frames = _frames(seg)
    off, n = frames[2]
    if missing == "tail":
        _damage(seg, off + n - 40, bytes(40))  # the last 40 bytes never landed
    else:
        _damage(seg, off, bytes(32))  # the first 32 bytes never landed
    with Store(tmp_path / "s", durable=False) as s:
        assert s.keys() == ["k0", "k1"]
        s.put("k9", {"after": True})
    with Store(tmp_path / "s", durable=False) as s:
        assert s.keys() == ["k0", "k1", "k9"]
        assert s.check().documents == 3


def test_torn_shaped_damage_to_a_synced_record_is_corruption(tmp_path: Path) -> None:
    """A later record claims the damaged one was synced: its loss is damage, not a power
    loss, and opening raises CorruptFileError instead of dropping acknowledged writes."""
    with Store(tmp_path / "s", durable=True) as s:
        for i in range(3):
            s.put(f"k{i}", {"i": i, "text": "t" * 100})
    seg = _segments(tmp_path / "s")[0]
    off, n = _frames(seg)[1]
    _damage(seg, off + n - 40, bytes(40))
    with pytest.raises(CorruptFileError) as info:
        Store(tmp_path / "s", durable=False)
    assert info.value.offset == off
    assert "synced" in info.value.detail


def test_damage_in_a_sealed_segment_is_corruption(tmp_path: Path) -> None:
    """A sealed segment was synced before the next was used: even torn-looking damage at
    its end is corruption, never silently cut off."""
    with Store(tmp_path / "s", durable=False, _segment_size=SMALL) as s:
        i = 0
        while len(_segments(tmp_path / "s")) < 2:
            s.put(f"k{i}", {"pad": "p" * 3000})
            i += 1
    first = _segments(tmp_path / "s")[0]
    off, n = _frames(first)[-1]
    _damage(first, off + n - 50, bytes(50))  # looks like a tail that never landed
    with pytest.raises(CorruptFileError) as info:
        Store(tmp_path / "s", durable=False)
    assert info.value.path == str(first)
    assert info.value.offset == off


def test_segments_without_manifest_are_refused_and_left_alone(tmp_path: Path) -> None:
    """A store that lost its MANIFEST is CorruptFileError, never re-created over (data loss)."""
    d = tmp_path / "s"
    with Store(d, durable=False, _segment_size=SMALL) as s:
        for i in range(200):
            s.put(f"id{i}", {"pad": "x" * 500})
    (d / "MANIFEST").unlink()
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    assert [p.name for p in _segments(d)][:2] == ["seg-00000001.rfs", "seg-00000002.rfs"]
    with pytest.raises(CorruptFileError) as info:
        Store(d)
    assert "segments but no MANIFEST; refusing to create a store over them" in str(info.value)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    # Only the first segment, but holding a record: refused too.
    one = tmp_path / "one"
    with Store(one, durable=False) as s:
        s.put("a", {"n": 1})
    (one / "MANIFEST").unlink()
    with pytest.raises(CorruptFileError):
        Store(one)
    assert sorted(p.name for p in one.iterdir()) == [
        "seg-00000001.rfs", "store.lock", "store.shm", "sync.lock"]


def test_unfinished_creation_is_finished(tmp_path: Path) -> None:
    """seg-00000001.rfs with nothing after its (whole or zero) header, no MANIFEST: created."""
    for header in (SEG_HEADER.pack(b"RFSTSEG\x01", 1), bytes(16)):
        d = tmp_path / f"s{header[0]}"
        d.mkdir()
        (d / "seg-00000001.rfs").write_bytes(header + bytes(4096))
        (d / "store.lock").write_bytes(b"")
        with Store(d) as s:
            assert len(s) == 0
            assert s.put("a", {"n": 1}) == 1
        assert json.loads((d / "MANIFEST").read_text())["segments"] == [1]


def _flip_in_last_record(d: Path) -> tuple[Path, int]:
    with Store(d) as s:
        for i in range(5):
            s.put(f"k{i}", {"i": i})
    seg = _segments(d)[0]
    off, n = _frames(seg)[-1]
    data = bytearray(seg.read_bytes())
    data[off + n - 3] ^= 0x01  # inside the last, acknowledged and synced document
    seg.write_bytes(bytes(data))
    return seg, off


def test_bit_flip_in_the_last_record_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    """A whole last frame that only fails its crc is damage: CorruptFileError, nothing changed."""
    seg, off = _flip_in_last_record(tmp_path / "s")
    before = seg.read_bytes()
    with pytest.raises(CorruptFileError) as info:
        Store(tmp_path / "s")
    assert info.value.offset == off
    assert seg.read_bytes() == before


class _FullDisk(_fs.FileSystem):
    """Creating a segment file fails with ENOSPC (the compaction's new segment)."""

    def __init__(self) -> None:
        self.refused = 0

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        if path.endswith(".rfs") and flags & os.O_CREAT:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return super().open(path, flags, mode)


def test_failed_automatic_compaction_writes_nothing(tmp_path: Path) -> None:
    """Auto-compaction runs before the append: if it fails, the put/batch wrote nothing."""
    s = Store(tmp_path / "s", durable=True, _compact_min=10**9)
    try:
        for _ in range(3):
            s.put("a", {"v": 1})
        assert s.version("a") == 3
        s._compact_min = 1  # garbage is now past the threshold: the next write compacts
        full = _FullDisk()
        with _fs.use(full):
            with pytest.raises(OSError) as info:
                s.put("a", {"v": 2}, expect_version=3)
            assert info.value.errno == errno.ENOSPC
            with pytest.raises(OSError), s.batch() as b:
                b.put("a", {"v": 2}, expect_version=3)
                b.put("new", {"v": 0})
        assert full.refused == 2
        assert s.version("a") == 3 and s.get("a") == {"v": 1} and "new" not in s
        assert s.put("a", {"v": 2}, expect_version=3) == 4  # the natural retry succeeds
        assert len(_segments(tmp_path / "s")) == 1  # it compacted first
    finally:
        s.close()
    with Store(tmp_path / "s") as s:
        assert s.items() == [("a", {"v": 2})]


def test_fdatasync_failure_poisons_across_reopen_until_repaired(tmp_path: Path) -> None:
    """The poison outlives every handle (POISONED); check --repair rewrites the data, clears it."""
    from racefree.check.checker import check_path

    d = tmp_path / "s"
    s = Store(d)
    s.put("a", {"v": 1})
    with _fs.use(_FailSync()), pytest.raises(DurabilityError):
        s.put("b", {"v": 2})
    s.close()
    assert (d / "POISONED").exists()
    with Store(d) as s:
        assert s.get("a") == {"v": 1}  # reads work
        with pytest.raises(DurabilityError) as info:
            s.put("c", {"v": 3})
        assert f"racefree check --repair {d}" in str(info.value)
    [found] = check_path(d)
    assert (found.kind, found.ok, found.repaired) == ("store", False, False)
    assert "POISONED" in found.detail
    [found] = check_path(d, repair=True)
    assert (found.kind, found.ok, found.repaired) == ("store", True, True)
    assert not (d / "POISONED").exists()
    assert [p.name for p in _segments(d)] == ["seg-00000002.rfs"]  # rewritten, synced
    with Store(d) as s:
        assert s.put("c", {"v": 3}) == 1
        assert s.items() == [("a", {"v": 1}), ("b", {"v": 2}), ("c", {"v": 3})]


class _DirSyncFails(_fs.FileSystem):
    def fsync_dir(self, path: str) -> None:
        raise OSError(errno.EIO, "injected EIO")


def test_failed_directory_fsync_at_open_poisons(tmp_path: Path) -> None:
    """The first opener's directory fsync (before removing orphans) fails: orphans kept, the
    store refuses writes (DurabilityError), reads work."""
    d = tmp_path / "s"
    with Store(d) as s:
        s.put("a", {"v": 1})
    (d / "seg-00000009.rfs").write_bytes(b"x")
    with _fs.use(_DirSyncFails()), Store(d) as s:
        assert s.get("a") == {"v": 1}
        with pytest.raises(DurabilityError):
            s.put("b", {"v": 2})
    assert (d / "seg-00000009.rfs").read_bytes() == b"x"
    with Store(d) as s:
        assert "b" not in s


def test_batch_is_all_or_nothing_for_reader_threads(tmp_path: Path) -> None:
    """A thread reading while another writes batches never sees part of a batch."""
    n = 20000
    s = Store(tmp_path / "s", durable=False)
    try:
        with s.batch() as b:
            for k in range(n):
                b.put(f"k{k:05d}", {"v": 0})
        stop = threading.Event()
        torn: list[tuple[int, int]] = []
        reads = [0]

        def reader() -> None:
            while not stop.is_set():
                first = s.get("k00000")["v"]
                last = s.get(f"k{n - 1:05d}")["v"]
                reads[0] += 1
                if last < first:
                    torn.append((first, last))

        t = threading.Thread(target=reader)
        t.start()
        try:
            for i in range(1, 8):
                with s.batch() as b:
                    for k in range(n):
                        b.put(f"k{k:05d}", {"v": i})
                    b.delete("gone")
        finally:
            stop.set()
            t.join(timeout=60)
        assert torn == []
        assert reads[0] > 0
        assert s.get(f"k{n - 1:05d}") == {"v": 7}
    finally:
        s.close()


class _SyncWaitsForClose(_fs.FileSystem):
    """The first fdatasync waits (bounded) until the store's close has begun closing files."""

    def __init__(self) -> None:
        self.in_sync = threading.Event()
        self.closing = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if not self.in_sync.is_set():
            self.in_sync.set()
            self.closing.wait(timeout=2)  # the fixed close never closes before this returns
        super().fdatasync(fd)

    def close(self, fd: int) -> None:
        self.closing.set()
        super().close(fd)


def test_close_waits_for_a_group_commit_in_another_thread(tmp_path: Path) -> None:
    """close() while another thread is in sync(): the sync completes on its own descriptors
    (no EBADF, no poison); a later call raises ValueError("the store is closed")."""
    d = tmp_path / "s"
    other = Store(d)
    s = Store(d)
    fake = _SyncWaitsForClose()
    results: list[object] = []
    try:
        with _fs.use(fake):
            t = threading.Thread(target=lambda: results.append(s.put("k", {"n": 1})))
            t.start()
            assert fake.in_sync.wait(timeout=30)
            s.close()
            t.join(timeout=30)
        assert results == [1]
        with pytest.raises(ValueError, match="the store is closed"):
            s.put("k", {"n": 2})
        assert other.put("x", {"ok": 1}) == 1  # not poisoned
        assert other.get("k") == {"n": 1}
    finally:
        s.close()
        other.close()


_IDLE_CHILD_HOLDER = r'''
import os, sys
import racefree
d, ready, inside = sys.argv[1:4]
s = racefree.Store(d)
s.put("a", {"n": 0})
pid = os.fork()
if pid == 0:  # an idle prefork worker: never touches the store, lives until stdin closes
    with open(ready, "w") as f:
        f.write(str(os.getpid()))
    sys.stdin.read()
    os._exit(0)
def fn(doc):
    open(inside, "w").close()
    sys.stdin.read()  # holds the write lock until killed
    return doc
s.update("a", fn)
'''


@pytest.mark.slow
def test_idle_forked_child_does_not_keep_a_dead_parents_write_lock(tmp_path: Path) -> None:
    """A child forked from a store's process closes the inherited descriptors at once (L5):
    once the parent is SIGKILLed holding the write lock, the lock is free although the
    child lives on."""
    import fcntl
    import signal
    import subprocess
    import sys

    d = tmp_path / "s"
    ready, inside = tmp_path / "ready", tmp_path / "inside"
    parent = subprocess.Popen(
        [sys.executable, "-c", _IDLE_CHILD_HOLDER, str(d), str(ready), str(inside)],
        stdin=subprocess.PIPE,
    )
    child_pid = 0
    try:
        _wait_for(lambda: inside.exists() and ready.exists() and ready.read_text() != "",
                  "the parent inside update() and the child forked")
        child_pid = int(ready.read_text())
        parent.kill()
        assert parent.wait(timeout=60) == -signal.SIGKILL
        os.kill(child_pid, 0)  # the child is still alive
        fd = os.open(d / "store.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        with Store(d) as s:
            assert s.put("a", {"n": 1}) == 2
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=60)
        if parent.stdin is not None:
            parent.stdin.close()  # the child's stdin: it exits
        if child_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)


class _HoldCompaction(_fs.FileSystem):
    """Creating a new segment (a compaction starting) waits until released (bounded)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.resumed = threading.Event()

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        if path.endswith(".rfs") and flags & os.O_EXCL and not self.started.is_set():
            self.started.set()
            self.release.wait(timeout=30)
            self.resumed.set()
        return super().open(path, flags, mode)


_BEHIND_READER = """
import json, sys
from racefree import Store
from racefree.store import handle
rebuilds = []
original = handle.rebuild
handle.rebuild = lambda core: rebuilds.append(1) or original(core)
r = Store(sys.argv[1], durable=False)
assert r.get("k1") == {"v": 1}
print("ready", flush=True)
sys.stdin.readline()                      # the writer is one write ahead, compacting
print(json.dumps([r.get("k1"), len(rebuilds)]), flush=True)
sys.stdin.readline()
print(json.dumps([r.get("k2"), r.keys() == sorted(f"k{i}" for i in range(50)), len(rebuilds)]),
      flush=True)
r.close()
"""


def _line(proc: Any, timeout: float = 60.0) -> str:
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError("the reader process did not answer in time")
    line: str = proc.stdout.readline()
    return line


def test_reader_catches_up_without_waiting_for_a_compaction(tmp_path: Path) -> None:
    """A process one write behind, while another compacts (holding the write lock): its get
    catches up in the old generation at once, and rebuilds nothing."""
    import subprocess
    import sys

    from helpers.testkit import reap

    d = tmp_path / "s"
    a = Store(d, durable=False)
    hold = _HoldCompaction()
    reader = subprocess.Popen(
        [sys.executable, "-c", _BEHIND_READER, str(d)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        for i in range(50):
            a.put(f"k{i}", {"v": i})
        assert _line(reader) == "ready\n"
        a.put("k1", {"v": -1})  # the reader is now one write behind
        with _fs.use(hold):
            t = threading.Thread(target=a.compact)
            t.start()
            try:
                assert hold.started.wait(timeout=30)
                assert reader.stdin is not None
                reader.stdin.write("go\n")
                reader.stdin.flush()
                answer = json.loads(_line(reader))
                waited = hold.resumed.is_set()  # did the compaction go on before get returned?
            finally:
                hold.release.set()
                t.join(timeout=60)
        assert (answer, waited) == ([{"v": -1}, 0], False)
        reader.stdin.write("again\n")
        reader.stdin.flush()
        assert json.loads(_line(reader)) == [{"v": 2}, True, 0]
        assert reader.wait(timeout=60) == 0
    finally:
        reap([reader])
        a.close()


def test_a_manifest_published_after_the_first_look_is_not_a_lost_manifest(tmp_path: Path) -> None:
    """An opener that listed the directory just before a racing creator published the
    MANIFEST (and another process then wrote a record) opens that store: it must not call
    it a store that lost its MANIFEST. Seen in CI with six concurrent first opens."""
    d = tmp_path / "store"
    with Store(d) as s:
        s.put("a", {"n": 1})

    class ListedTooEarly(_fs.FileSystem):
        """The first listing of the store is the one taken before the MANIFEST existed."""

        hidden = False

        def listdir(self, path: str) -> list[str]:
            names = super().listdir(path)
            if not self.hidden and "MANIFEST" in names:
                self.hidden = True
                names.remove("MANIFEST")
            return names

    fake = ListedTooEarly()
    with _fs.use(fake), Store(d) as s:
        assert s["a"] == {"n": 1}
        assert s.version("a") == 1
    assert fake.hidden
