"""The store's own files as a user sees them: never through a link or a FIFO, bounded
reads, files cut short (no SIGBUS), how the shared header is read, read-only handles,
and several handles on one directory in one process. (The same cases, attacked by
another local user, are in ``tests/security/test_store_*.py``.)"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.testkit import reap

from racefree import (
    CorruptFileError,
    FormatError,
    InheritedLockError,
    ReadOnlyError,
    Store,
    UnsafePathError,
    _fs,
)
from racefree.store.files import SHM_MAGIC, W_END, W_MAGIC


def _child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child interpreter, bounded (a hang is a failure)."""
    try:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("the store hung") from None


def test_fifo_manifest_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO at MANIFEST (a read would wait for a writer forever): UnsafePathError."""
    d = tmp_path / "s"
    Store(d).close()
    (d / "MANIFEST").unlink()
    os.mkfifo(d / "MANIFEST")
    code = ("import sys\nfrom racefree import Store, UnsafePathError\ntry:\n"
            "    Store(sys.argv[1])\nexcept UnsafePathError as e:\n    print(e.reason)")
    out = _child(code, str(d))
    assert (out.returncode, out.stdout) == (0, "is a FIFO, not a regular file\n")


def test_manifest_link_is_refused_even_the_users_own(tmp_path: Path) -> None:
    """The store never makes its MANIFEST a link, so it never follows one (whoever made
    it): UnsafePathError, and the link's target is unchanged."""
    d = tmp_path / "s"
    with Store(d) as s:
        s.put("a", {"n": 1})
    real = tmp_path / "elsewhere"
    (d / "MANIFEST").rename(real)
    (d / "MANIFEST").symlink_to(real)
    before = real.read_bytes()
    with pytest.raises(UnsafePathError) as err:
        Store(d)
    assert (err.value.path, err.value.reason) == (str(d / "MANIFEST"), "is a symbolic link")
    assert real.read_bytes() == before


def test_store_directory_may_be_the_users_own_link(tmp_path: Path) -> None:
    """A link to the store directory that the caller owns is followed (the trust rule)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with Store(tmp_path / "link") as s:
        s.put("a", {"n": 1})
    assert (tmp_path / "real" / "MANIFEST").is_file()
    with Store(tmp_path / "real") as s:
        assert s.get("a") == {"n": 1}


def test_manifest_read_is_bounded(tmp_path: Path) -> None:
    """A MANIFEST larger than any real one (16 MiB) is damage: CorruptFileError, not an
    unbounded read into memory."""
    d = tmp_path / "s"
    Store(d).close()
    with open(d / "MANIFEST", "ab") as f:
        f.truncate((16 << 20) + 1)
    with pytest.raises(CorruptFileError) as err:
        Store(d)
    assert err.value.path == str(d / "MANIFEST")
    assert "more than the 16777216 it may hold" in err.value.detail


_HOLDER = """
import json, sys
from racefree import CorruptFileError, Store
s = Store(sys.argv[1], durable=False)
assert s.version("a") == 1  # not get: a document read before the cut is cached
print(json.dumps(getattr(getattr(s._core, "hdr", None), "mapped", None)), flush=True)
sys.stdin.readline()
out = []
for op in (lambda: s.get("a"), lambda: s.put("b", {"n": 2})):
    try:
        out.append(repr(op()))
    except CorruptFileError as exc:
        out.append("CorruptFileError " + exc.path)
print(json.dumps(out), flush=True)
s.close()
"""


def _readline(stream: Any) -> str:
    """One line from a child, bounded in time (a child that hangs fails the test)."""
    ready, _, _ = select.select([stream], [], [], 60)
    assert ready, "the child did not answer in time"
    line: str = stream.readline()
    return line


def _cut_while_open(store: Path, name: str, size: int) -> tuple[bool, int, list[str]]:
    """A child with the store open; ``name`` is cut to ``size`` bytes; it calls get and put.
    Returns (its header was mapped, its exit status, what it saw)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        mapped = json.loads(_readline(proc.stdout))
        os.truncate(store / name, size)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = _readline(proc.stdout)
        return mapped, proc.wait(timeout=60), json.loads(line) if line else []
    finally:
        reap([proc])


def test_segment_cut_short_while_open_is_corruption_not_sigbus(tmp_path: Path) -> None:
    """Segments are read with pread, never mapped: one cut short under a live process is
    CorruptFileError at its next get and put, whoever cut it."""
    d = tmp_path / "s"
    with Store(d, durable=False) as s:
        s.put("filler", {"pad": "f" * 8192})  # "a" lands past the first page of the file
        s.put("a", {"n": 1})
    seg = d / "seg-00000001.rfs"
    mapped, status, seen = _cut_while_open(d, "seg-00000001.rfs", 16)
    assert status != -signal.SIGBUS
    assert (mapped, status, seen) == (True, 0, [f"CorruptFileError {seg}"] * 2)


def test_header_others_may_write_is_read_with_pread(tmp_path: Path) -> None:
    """A header its group may write is never mapped: cut short under a live process it is
    CorruptFileError at the next call (no SIGBUS); a reopen rebuilds it, nothing lost."""
    d = tmp_path / "s"
    with Store(d, durable=False) as s:
        s.put("a", {"n": 1})
    # A store its group may write: its data (the MANIFEST's mode says so) and its header.
    os.chmod(d / "MANIFEST", 0o664)
    os.chmod(d / "store.shm", 0o664)
    mapped, status, seen = _cut_while_open(d, "store.shm", 0)
    assert status != -signal.SIGBUS
    assert (mapped, status, seen) == (False, 0, [f"CorruptFileError {d / 'store.shm'}"] * 2)
    with Store(d, durable=False) as s:
        assert s.items() == [("a", {"n": 1})]
        assert s.put("b", {"n": 2}) == 1


def test_store_works_alike_with_a_header_read_by_pread(tmp_path: Path) -> None:
    """A store whose files its group may write (umask 002): every process reads the header
    with pread; puts, updates, rolls, compaction, durable group commit and another
    process's view all behave as with a mapped header."""
    old = os.umask(0o002)
    try:
        d = tmp_path / "s"
        with Store(d, _segment_size=64 << 10) as s:
            assert s._core.hdr is not None and not s._core.hdr.mapped
            for i in range(200):
                s.put(f"k{i % 20}", {"i": i, "pad": "x" * 500})
            s.update("k1", lambda doc: {**doc, "u": 1})
            s.compact()
            code = ("import sys\nfrom racefree import Store\ns = Store(sys.argv[1])\n"
                    "print(s.put('x', {'from': 'child'}), s.get('k1')['u'], len(s))\n"
                    "s.close()")
            out = _child(code, str(d))
            assert (out.returncode, out.stdout) == (0, "1 1 21\n"), out.stderr
            assert s.get("x") == {"from": "child"}
            assert s.get("k19") == {"i": 199, "pad": "x" * 500}
            assert s.check().documents == 21
    finally:
        os.umask(old)


# -- read-only handles -----------------------------------------------------------------


def test_readonly_refuses_every_write_and_creates_nothing(tmp_path: Path) -> None:
    """readonly=True: put, delete, update, batch, put_at_versions and compact raise
    ReadOnlyError with nothing written; a missing directory is not created."""
    with pytest.raises(FileNotFoundError):
        Store(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError):
        Store(tmp_path / "empty", readonly=True)
    assert os.listdir(tmp_path / "empty") == []
    d = tmp_path / "s"
    with Store(d) as s:
        s.put("a", {"n": 1})
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with Store(d, readonly=True) as r:
        writes: list[Any] = [
            lambda: r.put("a", {"n": 2}), lambda: r.delete("a"),
            lambda: r.update("a", lambda doc: doc), lambda: r.put_at_versions([("b", 1, {})]),
            r.compact,
        ]
        for write in writes:
            with pytest.raises(ReadOnlyError):
                write()
        with pytest.raises(ReadOnlyError), r.batch() as b:
            b.put("b", {})
        assert (r.readonly, r.items(), r.check().documents) == (True, [("a", {"n": 1})], 1)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_readonly_without_a_live_writer_does_not_trust_a_stale_header(tmp_path: Path) -> None:
    """A header left stale (as after a power loss: its end past the data) with nobody
    holding the store open: a read-only handle indexes the files itself (no false
    corruption, no missed document); once a writer opens (rebuilding the header) and
    writes, it sees the write."""
    d = tmp_path / "s"
    with Store(d) as s:
        s.put("a", {"n": 1})
    with open(d / "store.shm", "r+b") as f:
        f.seek(W_END * 8)
        f.write(((1 << 40) | 999_999).to_bytes(8, sys.byteorder))  # past the data
    with Store(d, readonly=True) as r:
        assert (r.items(), r._core.attached) == ([("a", {"n": 1})], False)
        with Store(d) as w:
            w.put("b", {"n": 2})
            assert r.get("b") == {"n": 2}
            assert r._core.attached
        assert r.keys() == ["a", "b"]


def test_readonly_of_a_store_without_a_header(tmp_path: Path) -> None:
    """A store copied without its header (store.shm): a read-only handle reads the files;
    a writer that comes later creates the header, and the reader follows its writes."""
    d = tmp_path / "s"
    with Store(d) as s:
        s.put("a", {"n": 1})
    (d / "store.shm").unlink()
    with Store(d, readonly=True) as r:
        assert r.get("a") == {"n": 1}
        assert not (d / "store.shm").exists()
        with Store(d) as w:
            w.put("a", {"n": 2})
            assert r.get("a") == {"n": 2}


def test_readonly_attaches_to_a_live_writer_and_sees_a_batch_whole(tmp_path: Path) -> None:
    """With a writer open, a read-only handle follows the header (one word per read);
    a batch shows all at once; the read-only header of the caller's own store is mapped
    read-only (no system call per read)."""
    d = tmp_path / "s"
    with Store(d) as w, Store(d, readonly=True) as r:
        assert r._core.attached and r._core.hdr is not None and r._core.hdr.mapped
        with w.batch() as b:
            b.put("a", {"n": 1})
            b.put("b", {"n": 2})
        assert r.items() == [("a", {"n": 1}), ("b", {"n": 2})]
        assert r._core.words[W_MAGIC] == SHM_MAGIC


# -- several handles in one process --------------------------------------------------------


def test_second_handle_inside_update_is_reentrant(tmp_path: Path) -> None:
    """Two Store objects on one directory share the process's lock state: a write through
    one inside the other's update(fn) (same thread) goes through at once."""
    d = tmp_path / "s"
    with Store(d, durable=False) as a, Store(d, durable=False) as b:
        assert a._core.locks is b._core.locks
        a.put("n", {"v": 0})
        out = a.update("n", lambda doc: {"v": doc["v"] + b.put("x", {"x": 1})})
        assert (out, b.get("n"), a.get("x"), a.version("n")) == ({"v": 1}, {"v": 1}, {"x": 1}, 2)
    with Store(d) as c:
        assert c._core.locks.refs == 1  # the others let go of the shared state


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_forked_inside_update_cannot_write(tmp_path: Path) -> None:
    """A child forked inside update(fn) raises InheritedLockError at a write (its parent
    holds the lock), and the parent's update is the only write."""
    d = tmp_path / "s"
    with Store(d, durable=False) as s:
        s.put("n", {"v": 0})
        r, w = os.pipe()

        def fn(doc: dict[str, Any]) -> dict[str, Any]:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                try:
                    s.put("child", {})
                    os.write(w, b"wrote")
                except InheritedLockError:
                    os.write(w, b"InheritedLockError")
                finally:
                    os._exit(0)
            os.close(w)
            with os.fdopen(r, "rb") as pipe:
                said.append(pipe.read())
            said.append(os.waitpid(pid, 0)[1])
            return {"v": doc["v"] + 1}

        said: list[Any] = []
        assert s.update("n", fn) == {"v": 1}
        assert (said, s.keys(), s.version("n")) == ([b"InheritedLockError", 0], ["n"], 2)


class _TornEnd(_fs.FileSystem):
    """The ``nth`` 8-byte pread of the header's published end returns a torn value: the
    high half of the true one with the low half all ones (as a read racing a write can)."""

    def __init__(self, nth: int) -> None:
        self.nth = nth
        self.seen = 0

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        data = super().pread(fd, n, offset)
        if n == 8 and offset == W_END * 8:
            self.seen += 1
            if self.seen == self.nth:
                value = int.from_bytes(data, sys.byteorder) | 0xFFFFFFFF
                return value.to_bytes(8, sys.byteorder)
        return data


@pytest.mark.parametrize("nth", [1, 2])
def test_a_torn_header_read_is_read_again(tmp_path: Path, nth: int) -> None:
    """A header read with pread may see half of a concurrent write. A torn published end
    on the hot path only sends the read to the slow path (1st read); there (2nd read) the
    word is read until two reads agree: no false corruption, the new write is seen."""
    d = tmp_path / "s"
    with Store(d, durable=False) as w:
        w.put("a", {"n": 1})
    os.chmod(d / "MANIFEST", 0o664)  # a store its group may write: the header is not mapped
    os.chmod(d / "store.shm", 0o664)
    with Store(d, durable=False) as w, Store(d, durable=False) as r:
        assert r._core.hdr is not None and not r._core.hdr.mapped
        assert r.get("a") == {"n": 1}
        w.put("a", {"n": 2})
        torn = _TornEnd(nth)
        with _fs.use(torn):
            assert r.get("a") == {"n": 2}
        assert torn.seen >= nth + 1
