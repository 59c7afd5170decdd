"""Recovery of the file store from page-order tears, and damage no crash leaves.

Each state is built byte by byte: a store is written, then the bytes of the
write that was "in flight" are replaced by what a power loss leaves of it. A
write spanning several pieces (sectors, pages) may reach the disk as any subset
of them, each piece independently; a piece that never reached the disk reads as
the zeros the segment was filled with. Recovery must open every such state with
every acknowledged write present; damage no crash can leave must stay
``CorruptFileError``, with the file and offset, and nothing changed.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest

from racefree import CorruptFileError, Store
from racefree.check.checker import check_path
from racefree.store.segment import SEG_HEADER, iter_frames


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.rfs"))


def _frames(seg: Path) -> list[tuple[int, int]]:
    return list(iter_frames(seg.read_bytes(), SEG_HEADER.size))


def _pieces(off: int, n: int, block: int) -> list[tuple[int, int]]:
    """The pieces a write of ``n`` bytes at ``off`` reaches the disk in (cut at block multiples)."""
    cuts = [off, *range((off // block + 1) * block, off + n, block), off + n]
    return list(itertools.pairwise(cuts))


def _drop(data: bytearray, pieces: list[tuple[int, int]]) -> None:
    for lo, hi in pieces:
        data[lo:hi] = bytes(hi - lo)


def _written(path: Path, docs: int, last: dict[str, object] | None, *, durable: bool) -> None:
    before = b""
    with Store(path, durable=durable) as s:
        for i in range(docs):
            s.put(f"doc-{i}", {"i": i, "text": "t" * 50})
        if last is not None:
            before = (path / "store.shm").read_bytes()
            s.put("in-flight", last)
    if last is not None:
        # A power loss while that put was in flight: its fdatasync never returned, so the
        # shared header (never synced itself) never said it was synced: as it was before.
        (path / "store.shm").write_bytes(before)


def test_torn_middle_of_a_large_put_opens(tmp_path: Path) -> None:
    """A 70 KB put in flight: its first and last thirds reached the disk, its middle did
    not. Every earlier record is intact: the store opens without it, check and
    ``check --repair`` pass, and the next put lands where it was."""
    d = tmp_path / "s"
    _written(d, 20, {"blob": "b" * 70_000}, durable=True)
    seg = _segments(d)[0]
    off, n = _frames(seg)[-1]
    data = bytearray(seg.read_bytes())
    third = n // 3
    data[off + third:off + 2 * third] = bytes(third)  # the middle never landed
    assert data[off] != 0 and data[off + n - 1] != 0  # head and tail are there
    seg.write_bytes(bytes(data))
    [found] = check_path(d)
    assert found.ok, found.detail
    assert f"an incomplete last record of {n} bytes" in found.detail
    with Store(d) as s:
        assert "in-flight" not in s
        assert s.keys() == sorted(f"doc-{i}" for i in range(20))
        assert s.check().documents == 20
        assert s.put("after", {"ok": 1}) == 1
    with Store(d) as s:
        assert s.get("after") == {"ok": 1}
        assert len(s) == 21
    assert (seg.read_bytes()[off:off + 40]).count(0) < 40  # "after" was written there


@pytest.mark.parametrize("block", [16, 512, 4096])
def test_every_subset_of_a_writes_pieces_opens(tmp_path: Path, block: int) -> None:
    """The in-flight put keeps any subset of its pieces: every state opens, with every
    earlier record, and the put either whole or absent (sampled beyond 512 subsets)."""
    src = tmp_path / "src"
    _written(src, 5, {"blob": "x" * 9000}, durable=True)
    seg = _segments(src)[0]
    off, n = _frames(seg)[-1]
    full = seg.read_bytes()
    pieces = _pieces(off, n, block)
    if len(pieces) <= 9:
        subsets = list(itertools.product([False, True], repeat=len(pieces)))
    else:
        rng = random.Random(block)
        subsets = [tuple(rng.random() < 0.5 for _ in pieces) for _ in range(512)]
        subsets += [(False,) * len(pieces), (True,) * len(pieces)]
    opened = 0
    for kept in subsets:
        data = bytearray(full)
        _drop(data, [p for p, keep in zip(pieces, kept, strict=True) if not keep])
        work = tmp_path / "w"
        shutil.copytree(src, work)
        (work / seg.name).write_bytes(bytes(data))
        with Store(work) as s:
            assert s.keys()[:5] == [f"doc-{i}" for i in range(5)], kept
            assert ("in-flight" in s) == all(kept), kept
            assert s.check().documents == 5 + all(kept)
        opened += 1
        shutil.rmtree(work)
    assert opened == len(subsets)


def test_two_writes_in_flight_torn_independently_open(tmp_path: Path) -> None:
    """Two un-synced puts (durable=False, or writers sharing one fdatasync): each keeps
    any subset of its 512-byte pieces. Every state opens with the records before them;
    a torn one drops itself and everything after it (none of it was synced)."""
    src = tmp_path / "src"
    with Store(src, durable=True) as s:
        for i in range(3):
            s.put(f"doc-{i}", {"i": i})
    with Store(src, durable=False) as s:
        s.put("a", {"blob": "a" * 1500})
        s.put("b", {"blob": "b" * 1500})
    seg = _segments(src)[0]
    frames = _frames(seg)
    (a_off, a_n), (b_off, b_n) = frames[-2], frames[-1]
    full = seg.read_bytes()
    pa, pb = _pieces(a_off, a_n, 512), _pieces(b_off, b_n, 512)
    states = 0
    for ka in itertools.product([False, True], repeat=len(pa)):
        for kb in itertools.product([False, True], repeat=len(pb)):
            data = bytearray(full)
            # A piece that two writes share is kept or lost per write: the model
            # applies each write's part of it independently.
            _drop(data, [p for p, keep in zip(pa, ka, strict=True) if not keep])
            _drop(data, [p for p, keep in zip(pb, kb, strict=True) if not keep])
            work = tmp_path / "w"
            shutil.copytree(src, work)
            (work / seg.name).write_bytes(bytes(data))
            with Store(work, durable=False) as s:
                keys = set(s.keys())
                assert keys - {"a", "b"} == {"doc-0", "doc-1", "doc-2"}, (ka, kb)
                # A torn "a" drops "b" too; "b" torn (or gone) drops only itself.
                want = ({"a"} if all(ka) else set()) | ({"b"} if all(ka) and all(kb) else set())
                assert keys & {"a", "b"} == want, (ka, kb)
            states += 1
            shutil.rmtree(work)
    assert states == 2 ** (len(pa) + len(pb))


def test_torn_middle_of_a_synced_record_is_corruption(tmp_path: Path) -> None:
    """A later record claims the damaged one was synced: a zeroed middle there is damage
    (no power loss loses synced data), with the offset, and nothing is changed."""
    d = tmp_path / "s"
    _written(d, 6, None, durable=True)
    seg = _segments(d)[0]
    off, _ = _frames(seg)[2]
    data = bytearray(seg.read_bytes())
    data[off + 24:off + 56] = bytes(32)
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as info:
        Store(d)
    assert info.value.offset == off
    assert "synced" in info.value.detail
    assert seg.read_bytes() == bytes(data)


@pytest.mark.parametrize("delta", [+7, +300, -9, 1 << 30])
def test_damaged_length_of_the_last_record_is_corruption(tmp_path: Path, delta: int) -> None:
    """The last record of a synced store, whole, with its length field changed: no write
    leaves that length (a torn length field only loses bits, and the rest of the record
    is all there). CorruptFileError, the acknowledged document kept on disk untouched."""
    d = tmp_path / "s"
    _written(d, 5, None, durable=True)
    seg = _segments(d)[0]
    off, _ = _frames(seg)[-1]
    data = bytearray(seg.read_bytes())
    plen = int.from_bytes(data[off + 4:off + 8], "little")
    data[off + 4:off + 8] = (plen + delta).to_bytes(4, "little")
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as info:
        Store(d)
    assert info.value.offset == off
    if delta > 0:
        assert "length" in info.value.detail
    assert seg.read_bytes() == bytes(data)
    [found] = check_path(d)
    assert not found.ok and f"byte offset {off}" in found.detail


def test_zeroed_end_of_a_sealed_segment_is_corruption(tmp_path: Path) -> None:
    """The next segment's first record says where the sealed one ended when it was
    synced: records zeroed at its end (a page lost after it was synced) are damage,
    although what is left of the sealed segment reads as a clean end of data."""
    d = tmp_path / "s"
    with Store(d, durable=False, _segment_size=64 << 10) as s:
        i = 0
        while len(_segments(d)) < 2:
            s.put(f"k{i}", {"pad": "p" * 3000})
            i += 1
    first = _segments(d)[0]
    frames = _frames(first)
    off = frames[-2][0]
    data = bytearray(first.read_bytes())
    data[off:] = bytes(len(data) - off)  # the last two records of the sealed segment
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as info:
        Store(d)
    assert info.value.path == str(first)
    assert info.value.offset == off
    assert "synced" in info.value.detail


@pytest.mark.parametrize("manifest", [b"", b"\x00" * 40, b"garbage, not JSON", b"[" * 5000,
                                      b'{"racefree": "stor'])
def test_store_with_a_damaged_manifest_is_reported_damaged(tmp_path: Path,
                                                           manifest: bytes) -> None:
    """A store directory with segments whose MANIFEST was emptied, overwritten or torn is
    damage (CorruptFileError; check exits 1), never "not a store" or "unfinished"."""
    d = tmp_path / "s"
    _written(d, 50, None, durable=True)
    (d / "MANIFEST").write_bytes(manifest)
    with pytest.raises(CorruptFileError) as info:
        Store(d)
    assert info.value.path == str(d / "MANIFEST")
    [found] = check_path(d)
    assert not found.ok
    assert found.kind == "store"
    assert "unfinished" not in found.detail
    assert json.loads(json.dumps(found.detail))  # one line, no traceback


@pytest.mark.parametrize("gen", [-1, 2**63, 2**64, True, 1.0])
def test_a_manifest_generation_no_store_writes_is_damage_and_salvaged(tmp_path: Path,
                                                                      gen: object) -> None:
    """A MANIFEST whose generation is outside the header's word (negative, 2**63 or more)
    or not an integer: CorruptFileError when opening (before, a bare ValueError from the
    shared header, while check said "ok"); check says DAMAGED; --repair salvages every
    document and the store opens."""
    d = tmp_path / "s"
    with Store(d) as s:
        s.put("a", {"v": 1})
        s.put("b", {"v": 2})
    manifest = json.loads((d / "MANIFEST").read_bytes())
    manifest["gen"] = gen
    (d / "MANIFEST").write_text(json.dumps(manifest) + "\n")
    with pytest.raises(CorruptFileError, match="malformed manifest"):
        Store(d)
    [found] = check_path(d)
    assert not found.ok and found.kind == "store"
    [fixed] = check_path(d, repair=True)
    assert fixed.ok
    with Store(d) as s:
        assert s.items() == [("a", {"v": 1}), ("b", {"v": 2})]


@pytest.mark.parametrize("readonly", [False, True])
def test_a_segment_the_manifest_names_that_is_gone_is_damage(tmp_path: Path,
                                                             readonly: bool) -> None:
    """A MANIFEST naming a segment file that is gone: CorruptFileError naming it (before, a
    bare FileNotFoundError, read as "no such store", or, read-only, "the segments kept
    changing"); --repair salvages the rest and reports the segment's records lost. The
    failed open, its exception still held here, keeps no lock of the store (its header's
    mapping outlives it while a frame holds the words): the repair is not refused as "open
    in another process"."""
    d = tmp_path / "s"
    with Store(d) as s:
        s.put("a", {"v": 1})
    manifest = json.loads((d / "MANIFEST").read_bytes())
    manifest["segments"].append(7)
    (d / "MANIFEST").write_text(json.dumps(manifest) + "\n")
    with pytest.raises(CorruptFileError, match="a segment the MANIFEST names is missing") as info:
        Store(d, readonly=readonly)
    assert info.value.path == str(d / "seg-00000007.rfs")
    [fixed] = check_path(d, repair=True)
    assert fixed.ok
    with Store(d) as s:
        assert s.items() == [("a", {"v": 1})]


@pytest.mark.parametrize("cut", ["after the first record", "to the header", "zeros in the last"])
def test_synced_records_cut_or_zeroed_are_damage_not_a_torn_tail(tmp_path: Path, cut: str) -> None:
    """Durable puts, then the segment cut at a record boundary (no torn bytes to tell it by),
    or the last synced record's first 16 bytes zeroed (what a torn write looks like). The
    shared header says where the store had been synced (a synced end is stored there only
    after its fdatasync returned), so the store refuses to open, every time, instead of
    opening without the acknowledged records (deleted ids back); check says DAMAGED and
    --repair salvages the intact records."""
    d = tmp_path / "s"
    with Store(d, durable=True) as s:
        for i in range(4):
            s.put(f"k{i}", {"i": i})
        s.delete("k1")
    seg = _segments(d)[0]
    frames = _frames(seg)
    data = bytearray(seg.read_bytes())
    if cut == "after the first record":
        data = data[:frames[0][0] + frames[0][1]]
    elif cut == "to the header":
        data = data[:SEG_HEADER.size]
    else:
        off = frames[-1][0]
        data[off:off + 16] = bytes(16)
    seg.write_bytes(bytes(data))
    for _ in range(2):  # and again: the refusal does not go away by itself
        with pytest.raises(CorruptFileError, match="synced up to"):
            Store(d)
        # A read-only handle, whose readers may read the header, refuses it too (it
        # opened without the records, and its check() said the store was fine).
        with pytest.raises(CorruptFileError, match="synced up to"):
            Store(d, readonly=True)
    [found] = check_path(d)
    assert not found.ok and "synced up to" in found.detail
    [fixed] = check_path(d, repair=True)
    assert fixed.ok, fixed.detail
    with Store(d) as s:
        # What salvage keeps is every intact record; with the last one (the delete of k1)
        # damaged, k1's put is intact and comes back (the damaged files are copied aside).
        kept = {"after the first record": ["k0"], "to the header": [],
                "zeros in the last": ["k0", "k1", "k2", "k3"]}[cut]
        assert s.keys() == kept
        assert [s.get(k) for k in kept] == [{"i": int(k[1])} for k in kept]


def test_a_store_whose_data_files_were_removed_opens_new(tmp_path: Path) -> None:
    """Segments and MANIFEST removed by hand, store.shm left behind: a new, empty store, not
    one that owes the old header's synced end (no SyncedLost from a header of the old data)."""
    d = tmp_path / "s"
    with Store(d, durable=True) as s:
        for i in range(5):
            s.put(f"k{i}", {"i": i})
    for p in [*_segments(d), d / "MANIFEST"]:
        p.unlink()
    assert (d / "store.shm").exists()
    with Store(d) as s:
        assert s.keys() == []
        s.put("new", {"ok": 1})
    with Store(d) as s:
        assert s.keys() == ["new"]


def test_check_while_a_segment_rolls_is_not_damage(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """racefree check reads the MANIFEST, then the shared header's synced end: a writer's
    segment roll in between makes that end point into a segment the MANIFEST it read does
    not list. That is a store moving on, not data cut short: look again (driven here by
    the header's first answer naming the next segment)."""
    from racefree.store import compact

    d = tmp_path / "s"
    with Store(d, durable=True) as s:
        for i in range(3):
            s.put(f"k{i}", {"i": i})
    real = compact._header_floor
    answers: list[int] = []

    def rolled_once(directory: str, gen: int) -> int:
        floor = real(directory, gen)
        answers.append(floor)
        return floor + (1 << 40) if len(answers) == 1 else floor

    monkeypatch.setattr(compact, "_header_floor", rolled_once)
    found = compact.check_files(str(d))
    assert found.report.documents == 3 and len(answers) == 2


def test_a_read_only_open_across_a_segment_roll_reads_the_manifest_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only handle reads the MANIFEST, then the header: a writer's roll in between
    leaves a synced end in a segment that MANIFEST does not name (a roll keeps the
    generation). The handle reads the MANIFEST again instead of raising SyncedLost on a
    healthy store. (The roll is played by a MANIFEST read that returns one segment less.)"""
    from racefree.store import index

    d = tmp_path / "s"
    with Store(d, _segment_size=4096) as s:
        for i in range(40):
            s.put(f"k{i:02d}", {"pad": "p" * 200})
    real = index.read_manifest
    calls = []

    def before_the_roll(directory: str) -> tuple[int, list[int]]:
        gen, segs = real(directory)
        calls.append(len(segs))
        return (gen, segs[:-1]) if len(calls) == 1 else (gen, segs)

    monkeypatch.setattr(index, "read_manifest", before_the_roll)
    with Store(d, readonly=True) as s:
        assert len(s) == 40
    assert calls[0] >= 2 and len(calls) >= 2
