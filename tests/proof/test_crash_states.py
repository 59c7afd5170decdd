"""Crash-state enumeration: every state a power loss could leave, opened with the public API.

Each test records one or more operations at the file-system seam
(:class:`crashsim.Recorder`), builds every crash state of the recording
(:func:`crashsim.crash_states`: un-synced writes dropped, torn at a block,
zero-filled or reordered; un-synced creates/renames/unlinks lost or kept) and
checks the operation's invariant in each: the old version or the new one, never
a mix; every operation acknowledged before the crash is present; opening raises
nothing. Each test prints how many distinct states it explored; the module's
total is printed at the end (``-s`` or the terminal summary) and must reach 10,000.

The "teeth" tests run the same harness against deliberately broken protocols
(no fsync before the rename, no directory fsync, no checksum in a log) and
require it to find violations.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.crashsim import CrashState, Exploration, Recorder, explore

from racefree import _fs

COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the per-operation state counts once the module's tests have run."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    lines = [f"  {name:<40} {n:>7}" for name, n in sorted(COUNTS.items())]
    total = sum(COUNTS.values())
    text = "\ncrash states explored per operation:\n" + "\n".join(lines)
    text += f"\n  {'total':<40} {total:>7}\n"
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(text)
    else:  # pragma: no cover
        print(text)


def run(
    name: str,
    rec: Recorder,
    check: Callable[[Path, CrashState], None],
    tmp_path: Path,
    *,
    minimum: int,
    **kwargs: Any,
) -> Exploration:
    """Explore every crash state of ``rec``; no violation, at least ``minimum`` states."""
    rec.verify_against_disk()
    result = explore(name, rec, check, tmp_path / "states", **kwargs)
    print(result.summary())
    assert result.violations == [], "\n".join(result.violations)
    COUNTS[name] = COUNTS.get(name, 0) + result.states
    assert result.states >= minimum, result.summary()
    return result


def versions_allowed(versions: list[Any], acked: tuple[str, ...]) -> list[Any]:
    """With versions[i] written by operation ``str(i)`` in order: what a crash may show.

    Every acknowledged version was durable, so the newest acknowledged one (or
    the initial ``versions[0]``) or the one in flight, nothing older and nothing newer.
    """
    done = len(acked)
    return versions[done : done + 2]


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


def _teeth(tmp_path: Path, *, fsync: bool, dirsync: bool) -> Exploration:
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

    return explore("teeth", rec, check, tmp_path / "states", max_violations=1000)


def test_teeth_the_correct_protocol_passes(tmp_path: Path) -> None:
    """The hand-written protocol with every step in place: 0 violations (the control)."""
    result = _teeth(tmp_path, fsync=True, dirsync=True)
    assert result.violations == []
    assert result.states >= 10


def test_teeth_no_fsync_before_rename_is_caught(tmp_path: Path) -> None:
    """W1: without fsync before the rename, a crash can leave an empty, NUL-filled or torn file."""
    result = _teeth(tmp_path, fsync=False, dirsync=True)
    print(result.summary())
    text = "\n".join(result.violations)
    assert "write@ino2:drop" in text  # the empty file
    assert "write@ino2:zero" in text  # the NUL-filled file
    assert "write@ino2:head/512" in text  # the torn file
    assert all("acked=[]" in v or "acked=['0']" in v for v in result.violations)


def test_teeth_no_directory_fsync_is_caught(tmp_path: Path) -> None:
    """W2: without the directory fsync, an acknowledged rename can be lost (old contents back)."""
    result = _teeth(tmp_path, fsync=True, dirsync=False)
    print(result.summary())
    assert result.violations, "the harness missed the lost rename"
    assert all("acked=['0']" in v and "lost" in v for v in result.violations)


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
    assert any("JSONDecodeError" in v for v in result.violations)


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


# --------------------------------------------------------------------------- Store
SHM = ("store.shm",)  # the store's shared header: a cache rebuilt from the files on open

Model = dict[str, Any]
Step = tuple[str, Callable[[Any], Any], Callable[[Model], Model]]


def _store_steps(tmp_path: Path, name: str, initial: list[Step], steps: list[Step],
                 *, block: int, minimum: int, **store_kw: Any) -> None:
    """Record ``steps`` on a store prepared by ``initial``; check every crash state.

    Each step is (label, action on the store, the same change on a dict model).
    A state must equal the model after the last acknowledged step or after the
    step in flight, and ``check()`` must pass.
    """
    from racefree import Store

    base = tmp_path / "base"
    base.mkdir()
    sdir = base / "store"
    model: Model = {}
    with Store(sdir, **store_kw) as store:
        for _label, act, change in initial:
            act(store)
            model = change(model)
    models = [model]
    rec = Recorder(base, ignore=SHM)
    with _fs.use(rec):
        rec.checkpoint()
        with Store(sdir, **store_kw) as store:
            for label, act, change in steps:
                act(store)
                models.append(change(models[-1]))
                rec.mark(label)

    def check(root: Path, state: CrashState) -> None:
        with Store(root / "store", **store_kw) as s:
            got = dict(s.items())
            s.check()
        allowed = versions_allowed(models, state.acked)
        assert got in allowed, sorted(set(got) ^ set(allowed[-1]))

    run(name, rec, check, tmp_path, minimum=minimum, block=block)


def _put(key: str, doc: dict[str, Any]) -> Step:
    return (f"put {key}", lambda s: s.put(key, doc), lambda m: {**m, key: doc})


def _delete(key: str) -> Step:
    return (
        f"delete {key}",
        lambda s: s.delete(key),
        lambda m: {k: v for k, v in m.items() if k != key},
    )


def _batch(puts: dict[str, dict[str, Any]], deletes: list[str]) -> Step:
    def act(s: Any) -> None:
        with s.batch() as b:
            for k, v in puts.items():
                b.put(k, v)
            for k in deletes:
                b.delete(k)

    def change(m: Model) -> Model:
        m = {**m, **puts}
        return {k: v for k, v in m.items() if k not in deletes}

    return ("batch", act, change)


def _doc(i: int, size: int) -> dict[str, Any]:
    return {"i": i, "body": "d" * size}


SMALL = {"_segment_size": 4096}  # small segments: rolls to new segments happen in the test


@pytest.mark.parametrize("block", [16, 128])
def test_store_put(tmp_path: Path, block: int) -> None:
    """Store.put x36 (new ids and overwrites, rolling segments): old or new store, acked present."""
    initial = [_put("a", _doc(0, 10))]
    steps = [_put(k, _doc(i, 40 * i % 900)) for i, k in enumerate("bcadbeacfgah" * 3)]
    _store_steps(tmp_path, "Store.put", initial, steps, block=block,
                 minimum=1000 if block == 16 else 300, **SMALL)


def test_store_put_awkward_ids(tmp_path: Path) -> None:
    """Store.put with ids that look like paths, NUL, emoji, empty: data, never paths (S9)."""
    ids = ["../x", "/etc/passwd", "a\0b", "", "\N{PILE OF POO}", "a/b/../c", "\udcff"]
    steps = [_put(k, _doc(i, 30)) for i, k in enumerate(ids)]
    _store_steps(tmp_path, "Store.put (awkward ids)", [], steps, block=16, minimum=50, **SMALL)


def _update(key: str, pad: int) -> Step:
    def fn(doc: dict[str, Any]) -> dict[str, Any]:
        return {"n": doc["n"] + 1, "pad": "u" * pad}

    return (
        f"update {key}",
        lambda s: s.update(key, fn, default={"n": 0}),
        lambda m: {**m, key: fn(m.get(key, {"n": 0}))},
    )


def test_store_update(tmp_path: Path) -> None:
    """Store.update x20 (locked read-modify-write): every crash shows an acked-or-newer counter."""
    steps = [_update(k, 13 * i % 400) for i, k in enumerate("abcab" * 4)]
    _store_steps(tmp_path, "Store.update", [], steps, block=16, minimum=400, **SMALL)


def test_store_delete(tmp_path: Path) -> None:
    """Store.delete x11 among puts: a deleted id is gone once acked and never comes back (S5)."""
    initial = [_put(k, _doc(i, 200)) for i, k in enumerate("abcdefghij")]
    steps = [_delete("a"), _delete("c"), _put("a", _doc(9, 50)), _delete("f"), _delete("a"),
             _delete("nope"), _delete("b"), _put("c", _doc(3, 700)), _delete("d"), _delete("c"),
             _delete("e"), _delete("g"), _delete("h")]
    _store_steps(tmp_path, "Store.delete", initial, steps, block=16, minimum=50, **SMALL)


def test_store_batch(tmp_path: Path) -> None:
    """Store.batch: several puts and deletes appear all together or not at all after any crash."""
    initial = [_put(k, _doc(i, 100)) for i, k in enumerate("abc")]
    steps = [
        _batch({"x": _doc(1, 300), "y": _doc(2, 300)}, ["a"]),
        _batch({"a": _doc(3, 10), "b": _doc(4, 700)}, ["c", "x"]),
        _batch({f"k{i}": _doc(i, 90) for i in range(8)}, []),
        _batch({}, [f"k{i}" for i in range(0, 8, 2)]),
        _batch({"a": _doc(5, 1200)}, ["b"]),
        _batch({f"k{i}": _doc(i, 40) for i in range(8, 12)}, ["y"]),
    ]
    _store_steps(tmp_path, "Store.batch", initial, steps, block=16, minimum=400, **SMALL)


def test_store_compact(tmp_path: Path) -> None:
    """Store.compact: a crash leaves the old segments or the new ones, same documents either way."""
    initial = [_put(k, _doc(i, 150 + i)) for i, k in enumerate("abcdefabghij")] + [_delete("c")]
    compact: Step = ("compact", lambda s: s.compact(), lambda m: m)
    steps = [compact, _put("z", _doc(7, 20)), _delete("d"), compact, _put("a", _doc(8, 900)),
             _put("c", _doc(9, 30)), compact]
    _store_steps(tmp_path, "Store.compact", initial, steps, block=16, minimum=1000, **SMALL)


def test_store_auto_compaction(tmp_path: Path) -> None:
    """Overwrites past the garbage threshold compact automatically inside put; every state whole."""
    initial = [_put(k, _doc(0, 300)) for k in "abc"]
    # 13 puts: three compactions (steps 5, 9, 13), each run by the put that finds the
    # garbage past the threshold, before it appends (the last one in the final step).
    steps = [_put(k, _doc(i, 300)) for i, k in enumerate("abcabcabcabca", 1)]
    _store_steps(tmp_path, "Store auto-compaction", initial, steps, block=16, minimum=200,
                 _segment_size=4096, _compact_min=1024)


def test_store_creation(tmp_path: Path) -> None:
    """Creating a store (first open) and its first put: every crash state opens.

    A crash before the first MANIFEST is durable leaves a segment and the lock
    files but no MANIFEST; nothing was acknowledged, so the next open must
    finish the creation (an empty store), not refuse the directory. And once a
    put was acknowledged as durable, the store's directory itself must survive:
    the store created it with mkdir, so it must fsync the parent directory (W2).
    """
    from racefree import Store

    base = tmp_path / "base"
    base.mkdir()
    rec = Recorder(base, ignore=SHM)
    with _fs.use(rec):
        rec.checkpoint()
        with Store(base / "s", **SMALL) as store:
            rec.mark("created")
            store.put("a", {"n": 1})
            rec.mark("put")

    def check(root: Path, state: CrashState) -> None:
        if not (root / "s").exists():
            assert not state.acked, "the store directory itself was lost (parent not fsynced)"
            return
        with Store(root / "s", **SMALL) as s:
            got = dict(s.items())
        allowed = [{}, {"a": {"n": 1}}] if len(state.acked) < 2 else [{"a": {"n": 1}}]
        assert got in allowed, got

    run("Store creation", rec, check, tmp_path, minimum=10, block=512)


# ------------------------------------------------------------------ several records in flight
class _GroupCommitGate(Recorder):
    """Holds the first fdatasync that follows a write until another thread has written.

    If the store lets a second writer append while the first one's sync is in
    flight (group commit), the recording then has two records before one sync,
    deterministically. If it makes the second writer wait, the gate gives up
    after a few seconds and the recording shows the serialised protocol; either
    way every crash state of it must open.
    """

    def __init__(self, base: Path, **kw: Any) -> None:
        super().__init__(base, **kw)
        self.first_sync: int | None = None
        self.wrote: set[int] = set()
        self.other_wrote = threading.Event()

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        n = super().pwrite(fd, data, offset)
        me = threading.get_ident()
        self.wrote.add(me)
        if self.first_sync is not None and me != self.first_sync:
            self.other_wrote.set()
        return n

    def fdatasync(self, fd: int) -> None:
        me = threading.get_ident()
        if self.first_sync is None and me in self.wrote:
            self.first_sync = me
            self.other_wrote.wait(timeout=3)
        super().fdatasync(fd)


def _in_flight_states(tmp_path: Path, kind: str, *, reorder: bool = True) -> Exploration:
    """Two records written before one sync covers them; every crash state must open."""
    from racefree import AppendLog, Store

    base = tmp_path / "base"
    base.mkdir()
    durable = kind == "store group commit"
    opts: dict[str, Any] = {"durable": durable}
    if kind.startswith("store"):
        opts["_segment_size"] = 1 << 16
        Store(base / "s", **opts).close()
    rec = _GroupCommitGate(base, ignore=SHM)
    with _fs.use(rec):
        rec.checkpoint()
        if kind.startswith("store"):
            with Store(base / "s", **opts) as store:
                if durable:
                    t = threading.Thread(target=lambda: store.put("b", {"pad": "b" * 1500}))
                    store_put = threading.Thread(target=lambda: store.put("a", {"pad": "a" * 1500}))
                    store_put.start()
                    while rec.first_sync is None and store_put.is_alive():
                        time.sleep(0.001)  # wait for the first put to reach its sync
                    t.start()
                    t.join(timeout=30)
                    store_put.join(timeout=30)
                else:
                    store.put("a", {"pad": "a" * 1500})
                    store.put("b", {"pad": "b" * 1500})
        else:
            with AppendLog(base / "l", durable=False) as log:
                log.append({"pad": "a" * 1500})
                log.append({"pad": "b" * 1500})

    def check(root: Path, state: CrashState) -> None:
        if kind.startswith("store"):
            with Store(root / "s", **opts) as s:
                got = sorted(s.keys())
            assert got in (["a"], ["b"], ["a", "b"], []), got
        else:
            with AppendLog(root / "l") as log:
                assert len(list(log)) in (0, 1, 2)

    return explore(kind, rec, check, tmp_path / "states", block=512, max_violations=50,
                   reorder=reorder)


@pytest.mark.parametrize("kind", ["store group commit", "store durable=False", "log durable=False"])
def test_power_loss_with_several_records_in_flight_opens(tmp_path: Path, kind: str) -> None:
    """Records written but not yet synced may reach the disk in any order; the files must open.

    When two records are in flight (a group commit's writers, or durable=False),
    a power loss can keep the second and tear the first. Neither was
    acknowledged as durable, so opening must succeed (with or without them):
    a torn record followed by a valid one is not proof of corruption unless
    the valid one was known to be synced.
    """
    result = _in_flight_states(tmp_path, kind)
    print(result.summary())
    assert result.violations == [], "\n".join(result.violations[:3])


@pytest.mark.parametrize("kind", ["store group commit", "store durable=False", "log durable=False"])
def test_in_flight_records_with_ordered_writes_open(tmp_path: Path, kind: str) -> None:
    """The same recordings under a milder model (each file's writes land in order): all open.

    Together with the test above this locates the problem exactly: it needs
    the second record to reach the disk before the first, which the
    pessimistic model allows and real disks do for data not covered by a sync.
    """
    result = _in_flight_states(tmp_path, kind, reorder=False)
    print(result.summary())
    assert result.violations == [], "\n".join(result.violations[:3])
    assert result.states >= 10


EXPECTED_OPERATIONS = {
    "atomic_write", "atomic_write (new file)", "atomic_write (overwrite=False)", "atomic_open",
    "JsonFile.update",
    "AppendLog.append", "AppendLog.extend", "AppendLog.compact", "Store.put",
    "Store.put (awkward ids)", "Store.update", "Store.delete", "Store.batch", "Store.compact",
    "Store auto-compaction", "Store creation",
}


def test_total_crash_states() -> None:
    """Together the operations above explored at least 10,000 distinct crash states.

    Runs last in this module (pytest keeps file order); skipped when a ``-k``
    selection left some of them out.
    """
    if set(COUNTS) != EXPECTED_OPERATIONS:
        pytest.skip(f"only {sorted(COUNTS)} ran")
    assert sum(COUNTS.values()) >= 10_000, COUNTS
