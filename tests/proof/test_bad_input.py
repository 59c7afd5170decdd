"""Bad input, given the way a new user would give it, to every public call and CLI command.

A directory where a file is expected and the reverse, a missing parent
directory, a read-only directory, non-JSON data, a non-dict document, an
enormous document, ids with ``/``, ``..``, NUL and emoji, a negative or NaN
timeout, a store directory that is not a store, a file from a newer format
version. Each gets a clear, typed error or the documented behaviour, and nothing
already stored is lost (checked byte for byte where it applies).

Tests run as root, which ignores directory permissions: the read-only cases
use a read-only tmpfs mount (skipped, with the reason, where mounting is not
possible).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.testkit import mounted_tmpfs

import racefree
from racefree import CorruptFileError, FileLock, JsonFile, atomic_write

BAD_TIMEOUTS = [-1, -0.001, math.nan, -math.inf]
EMOJI = "\N{GRINNING FACE}\N{PILE OF POO}"


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file under ``directory``, byte for byte (None for a directory)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        rel = os.path.relpath(dirpath, directory)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_bytes()
    return out


def read_only_dir(path: Path) -> contextlib.AbstractContextManager[Path]:
    """``path`` as a tmpfs that can be made read-only (root ignores mode bits, not ro mounts)."""
    return mounted_tmpfs(
        path, "4m", "needs root to mount a read-only tmpfs (root is what defeats chmod)"
    )


def make_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, timeout=30)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``racefree ARGS`` in a fresh interpreter (bounded in time)."""
    return subprocess.run(
        [sys.executable, "-m", "racefree", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """A CLI failure: exit code 1, one line on stderr, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- atomic_write
def test_atomic_write_directory_where_file_expected(tmp_path: Path) -> None:
    """A directory at the target: IsADirectoryError; the directory and its contents untouched."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_bytes(b"kept")
    before = snapshot(tmp_path)
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "d", b"x")
    assert snapshot(tmp_path) == before


def test_atomic_write_file_where_directory_expected(tmp_path: Path) -> None:
    """A file used as the parent directory: NotADirectoryError, the file untouched."""
    (tmp_path / "f").write_bytes(b"kept")
    with pytest.raises(NotADirectoryError):
        atomic_write(tmp_path / "f" / "x", b"x")
    assert snapshot(tmp_path) == {"f": b"kept"}


def test_atomic_write_missing_parent(tmp_path: Path) -> None:
    """A missing parent directory: FileNotFoundError naming the directory; nothing created."""
    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "nope" / "f", b"x")
    assert "nope" in str(info.value)
    assert snapshot(tmp_path) == {}


def test_atomic_write_read_only_directory(tmp_path: Path) -> None:
    """A read-only file system: OSError(EROFS), the old file byte for byte, no temp."""
    with read_only_dir(tmp_path / "ro") as ro:
        atomic_write(ro / "f", b"old")
        make_read_only(ro)
        with pytest.raises(OSError) as info:
            atomic_write(ro / "f", b"new")
        assert info.value.errno == errno.EROFS
        assert snapshot(ro) == {"f": b"old"}


@pytest.mark.parametrize("data", [None, 42, {"a": 1}, ["x"]], ids=repr)
def test_atomic_write_wrong_data_type(tmp_path: Path, data: Any) -> None:
    """Data that is not bytes or str: TypeError before anything is created."""
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "f", data)
    assert snapshot(tmp_path) == {"f": b"old"}


def test_atomic_write_odd_names(tmp_path: Path) -> None:
    """A NUL in the path is ValueError; emoji and spaces are ordinary names."""
    with pytest.raises(ValueError):
        atomic_write(str(tmp_path / "a\0b"), b"x")
    atomic_write(tmp_path / f"{EMOJI} name.txt", b"ok")
    assert snapshot(tmp_path) == {f"{EMOJI} name.txt": b"ok"}


def test_atomic_write_100_mb(tmp_path: Path) -> None:
    """A 100 MB write is one atomic, whole file (memory: the caller's buffer, no copy kept)."""
    data = b"\xab" * (100 * 1024 * 1024)
    atomic_write(tmp_path / "big", data, durable=False)
    assert (tmp_path / "big").stat().st_size == len(data)
    with open(tmp_path / "big", "rb") as f:
        f.seek(len(data) - 4)
        assert f.read() == b"\xab" * 4
    assert sorted(os.listdir(tmp_path)) == ["big"]


# --------------------------------------------------------------------------- FileLock
@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_filelock_bad_timeout(tmp_path: Path, timeout: float) -> None:
    """A negative or NaN timeout is ValueError, at construction and at acquire; nothing held."""
    with pytest.raises(ValueError):
        FileLock(tmp_path / "l", timeout=timeout)
    lock = FileLock(tmp_path / "l")
    with pytest.raises(ValueError):
        lock.acquire(timeout=timeout)
    assert not lock.locked


@pytest.mark.parametrize("timeout", ["1", b"1", [1]], ids=repr)
def test_filelock_timeout_of_wrong_type(tmp_path: Path, timeout: Any) -> None:
    """A timeout that is not a number is TypeError."""
    with pytest.raises(TypeError):
        FileLock(tmp_path / "l", timeout=timeout)


def test_filelock_directory_and_missing_parent(tmp_path: Path) -> None:
    """A directory as the lock file is IsADirectoryError; a missing parent is created, or with
    ``make_parents=False`` is FileNotFoundError.
    """
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        FileLock(tmp_path / "d").acquire(timeout=1)
    with pytest.raises(FileNotFoundError):
        FileLock(tmp_path / "nope" / "l", make_parents=False).acquire(timeout=1)
    with pytest.raises(FileNotFoundError):
        FileLock(tmp_path / "nope" / "l", make_parents=False, mode=0o600).acquire(timeout=1)
    assert snapshot(tmp_path) == {"d": None}
    with FileLock(tmp_path / "new" / "l").acquire(timeout=1):
        pass
    assert snapshot(tmp_path) == {"d": None, "new": None, "new/l": b""}


# --------------------------------------------------------------------------- JsonFile
def test_jsonfile_not_json_is_corrupt_and_untouched(tmp_path: Path) -> None:
    """Non-JSON data: CorruptFileError naming file and offset; update and edit leave it byte for
    byte.
    """
    path = tmp_path / "doc.json"
    path.write_bytes(b'{"a": 1,\n "b": oops}\n')
    jf = JsonFile(path, default={})
    with pytest.raises(CorruptFileError) as info:
        jf.read()
    assert info.value.path == str(path) and info.value.offset == 15 and info.value.line == 2
    with pytest.raises(CorruptFileError):
        jf.update(lambda d: {**d, "c": 3})
    with pytest.raises(CorruptFileError), jf.edit() as doc:
        doc["c"] = 3
    assert path.read_bytes() == b'{"a": 1,\n "b": oops}\n'


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xff\xfe{}", b'{"a": 1}{"b": 2}', b"\0\0\0\0"],
    ids=["empty", "utf16", "glued", "nul"],
)
def test_jsonfile_damaged_variants(tmp_path: Path, raw: bytes) -> None:
    """Empty, non-UTF-8, glued (S2) and NUL-filled (W1) files are corrupt, never "no data"."""
    path = tmp_path / "doc.json"
    path.write_bytes(raw)
    with pytest.raises(CorruptFileError):
        JsonFile(path, default={}).read()
    assert path.read_bytes() == raw


def test_jsonfile_non_dict_documents_are_documents(tmp_path: Path) -> None:
    """A JSON file holds any JSON value (documented): a list, a number, a string, null."""
    for value in ([1, 2], 3, "s", None, {"k": [None]}):
        jf = JsonFile(tmp_path / "doc.json")
        jf.write(value)
        assert jf.read() == value


@pytest.mark.parametrize("value", [{1, 2}, {"a": math.nan}, {"a": object()}, b"bytes"], ids=repr)
def test_jsonfile_unserialisable_value_writes_nothing(tmp_path: Path, value: Any) -> None:
    """A value that is not JSON (a set, NaN, an object, bytes): TypeError/ValueError, file
    untouched.
    """
    jf = JsonFile(tmp_path / "doc.json")
    jf.write({"keep": 1})
    before = snapshot(tmp_path)
    with pytest.raises((TypeError, ValueError)):
        jf.write(value)
    with pytest.raises((TypeError, ValueError)):
        jf.update(lambda d: value)
    assert snapshot(tmp_path) == before


def test_jsonfile_update_returning_none(tmp_path: Path) -> None:
    """An update function that mutates in place and forgets to return: TypeError, nothing written.
    """
    jf = JsonFile(tmp_path / "doc.json", default={})
    jf.write({"n": 1})
    with pytest.raises(TypeError):
        jf.update(lambda d: d.update(n=2))
    assert jf.read() == {"n": 1}


def test_jsonfile_directory_and_missing_parent(tmp_path: Path) -> None:
    """A directory as the JSON file: IsADirectoryError on read and write; missing parent:
    FileNotFoundError.
    """
    (tmp_path / "d").mkdir()
    jf = JsonFile(tmp_path / "d")
    with pytest.raises(IsADirectoryError):
        jf.read()
    with pytest.raises(IsADirectoryError):
        jf.write({"a": 1})
    with pytest.raises(FileNotFoundError):
        JsonFile(tmp_path / "nope" / "x.json").write({"a": 1})
    assert (tmp_path / "d").is_dir() and os.listdir(tmp_path / "d") == []


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_jsonfile_bad_timeout(tmp_path: Path, timeout: float) -> None:
    """A negative or NaN timeout: ValueError at construction."""
    with pytest.raises(ValueError):
        JsonFile(tmp_path / "doc.json", timeout=timeout)


def test_jsonfile_read_only_directory(tmp_path: Path) -> None:
    """On a read-only mount: reads work, writes raise OSError(EROFS), the document is kept."""
    with read_only_dir(tmp_path / "ro") as ro:
        jf = JsonFile(ro / "doc.json")
        jf.write({"n": 1})
        make_read_only(ro)
        ro_jf = JsonFile(ro / "doc.json")
        assert ro_jf.read() == {"n": 1}
        with pytest.raises(OSError) as info:
            ro_jf.update(lambda d: {"n": 2})
        assert info.value.errno == errno.EROFS
        assert ro_jf.read() == {"n": 1}


def test_jsonfile_100_mb_document(tmp_path: Path) -> None:
    """A 100 MB document is written and read back whole (documented: no size limit)."""
    jf = JsonFile(tmp_path / "big.json", durable=False, indent=None)
    doc = {"blob": "x" * (100 * 1024 * 1024)}
    jf.write(doc)
    back = jf.read()
    assert len(back["blob"]) == 100 * 1024 * 1024
    del back, doc


def test_public_names_exist() -> None:
    """Every name in ``racefree.__all__`` resolves (a lazy import that fails is bad input too)."""
    for name in racefree.__all__:
        getattr(racefree, name)


# --------------------------------------------------------------------------- LockFile
@pytest.mark.parametrize("value", BAD_TIMEOUTS, ids=repr)
def test_lockfile_bad_timeout_and_stale_after(tmp_path: Path, value: float) -> None:
    """A negative or NaN timeout or stale_after: ValueError at construction; nothing created."""
    from racefree import LockFile

    with pytest.raises(ValueError):
        LockFile(tmp_path / "x.lock", timeout=value)
    with pytest.raises(ValueError):
        LockFile(tmp_path / "x.lock", stale_after=value)
    assert snapshot(tmp_path) == {}


def test_lockfile_directory_and_missing_parent(tmp_path: Path) -> None:
    """A directory as the lock file: IsADirectoryError; a missing parent is created."""
    from racefree import LockFile

    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        LockFile(tmp_path / "d", timeout=1).acquire()
    assert snapshot(tmp_path) == {"d": None}
    with LockFile(tmp_path / "new" / "x.lock", timeout=1).acquire():
        pass
    assert snapshot(tmp_path) == {"d": None, "new": None, "new/x.lock.token": b"1\n"}


# --------------------------------------------------------------------------- AppendLog
def test_log_directory_and_missing_parent(tmp_path: Path) -> None:
    """A directory as the log: IsADirectoryError to read and append; missing parent:
    FileNotFoundError.
    """
    from racefree import AppendLog

    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        AppendLog(tmp_path / "d").append({"a": 1})
    with pytest.raises(IsADirectoryError):
        list(AppendLog(tmp_path / "d"))
    with pytest.raises(FileNotFoundError):
        AppendLog(tmp_path / "nope" / "l.log").append({"a": 1})
    # The sidecar lock (documented: created on first use, never deleted) is all that appears.
    assert snapshot(tmp_path) == {"d": None, "d.lock": b""}


@pytest.mark.parametrize(
    "raw",
    [b"hello world\nthis is not a log\n", b'{"a": 1}\n', b"\0" * 100,
     b'39 8afa8dbf {"racefree_log":9,"segment":0,"base":0}\n'],
    ids=["text", "json", "nul", "newer-version"],
)
def test_log_not_a_log_or_newer_format(tmp_path: Path, raw: bytes) -> None:
    """A file that is not a racefree log (or a newer one): a typed error to read and append,
    untouched.
    """
    from racefree import AppendLog, FormatError

    path = tmp_path / "l.log"
    path.write_bytes(raw)
    with pytest.raises((FormatError, CorruptFileError)):
        list(AppendLog(path))
    with pytest.raises((FormatError, CorruptFileError)):
        AppendLog(path).append({"a": 1})
    assert path.read_bytes() == raw


@pytest.mark.parametrize("record", [{1, 2}, math.nan, {"a": object()}, b"x"], ids=repr)
def test_log_unserialisable_record_writes_nothing(tmp_path: Path, record: Any) -> None:
    """A record that is not JSON: TypeError, the log byte for byte as before."""
    from racefree import AppendLog

    with AppendLog(tmp_path / "l.log") as log:
        log.append({"keep": 1})
        before = (tmp_path / "l.log").read_bytes()
        with pytest.raises(TypeError):
            log.append(record)
        with pytest.raises(TypeError):
            log.extend([{"ok": 1}, record])
    assert (tmp_path / "l.log").read_bytes() == before


def test_log_read_only_mount(tmp_path: Path) -> None:
    """On a read-only mount: records read; an append raises OSError(EROFS); nothing lost."""
    from racefree import AppendLog

    with read_only_dir(tmp_path / "ro") as ro:
        with AppendLog(ro / "l.log") as log:
            log.append({"i": 1})
        make_read_only(ro)
        with AppendLog(ro / "l.log") as log:
            assert list(log) == [{"i": 1}]
            with pytest.raises(OSError) as info:
                log.append({"i": 2})
            assert info.value.errno == errno.EROFS
            assert list(log) == [{"i": 1}]


# --------------------------------------------------------------------------- Store
def test_store_on_a_file_and_missing_parent(tmp_path: Path) -> None:
    """A file where the store directory should be: NotADirectoryError; missing parent:
    FileNotFoundError.
    """
    from racefree import Store

    (tmp_path / "f").write_bytes(b"kept")
    with pytest.raises(NotADirectoryError):
        Store(tmp_path / "f")
    with pytest.raises(FileNotFoundError):
        Store(tmp_path / "nope" / "s")
    assert snapshot(tmp_path) == {"f": b"kept"}


def test_store_directory_that_is_not_a_store(tmp_path: Path) -> None:
    """A directory with other files: FormatError, and the directory is left exactly as it was.

    (Today the store creates store.lock, store.shm and sync.lock in it before
    finding that it is not a store: files left in a user's directory.)
    """
    from racefree import FormatError, Store

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("mine")
    with pytest.raises(FormatError):
        Store(tmp_path / "d")
    assert snapshot(tmp_path / "d") == {"readme.txt": b"mine"}


def test_store_newer_format_version(tmp_path: Path) -> None:
    """A MANIFEST from a newer format: FormatError, every file untouched."""
    import json

    from racefree import FormatError, Store

    with Store(tmp_path / "s") as s:
        s.put("a", {"n": 1})
    manifest = json.loads((tmp_path / "s" / "MANIFEST").read_text())
    manifest["format"] = 99
    (tmp_path / "s" / "MANIFEST").write_text(json.dumps(manifest))
    before = snapshot(tmp_path / "s")
    with pytest.raises(FormatError):
        Store(tmp_path / "s")
    after = snapshot(tmp_path / "s")
    assert {k: v for k, v in after.items() if k != "store.shm"} == {
        k: v for k, v in before.items() if k != "store.shm"}


@pytest.mark.parametrize(
    ("key", "doc", "error"),
    [("a", [1, 2], TypeError), ("a", "text", TypeError), ("a", None, TypeError),
     ("a", {"x": math.nan}, TypeError), ("a", {"x": {1, 2}}, TypeError),
     (1, {"x": 1}, TypeError), (b"a", {"x": 1}, TypeError), (None, {"x": 1}, TypeError)],
    ids=["list", "str", "None", "nan", "set", "int-id", "bytes-id", "None-id"],
)
def test_store_bad_documents_and_ids_write_nothing(
    tmp_path: Path, key: Any, doc: Any, error: type[Exception]
) -> None:
    """A document that is not a JSON object, or an id that is not a str: TypeError, store unchanged.
    """
    from racefree import Store

    with Store(tmp_path / "s") as s:
        s.put("keep", {"n": 1})
        with pytest.raises(error):
            s.put(key, doc)
        with pytest.raises(error), s.batch() as b:
            b.put("other", {"n": 2})
            b.put(key, doc)
        assert dict(s.items()) == {"keep": {"n": 1}}


@pytest.mark.parametrize("expect", [-1, True, 1.5, "1"], ids=repr)
def test_store_bad_expect_version(tmp_path: Path, expect: Any) -> None:
    """expect_version that is negative, a bool, a float or a str: ValueError/TypeError, nothing
    written.
    """
    from racefree import Store

    with Store(tmp_path / "s") as s:
        with pytest.raises((TypeError, ValueError)):
            s.put("a", {"n": 1}, expect_version=expect)
        assert len(s) == 0


def test_store_ids_are_data(tmp_path: Path) -> None:
    """Ids with /, .., NUL, emoji, empty, absolute paths: stored and read back; no file named by
    them.
    """
    from racefree import Store

    ids = ["/", "..", "../../etc/passwd", "a\0b", EMOJI, "", "/etc/passwd", "a/b", "\udcff"]
    with Store(tmp_path / "s") as s:
        for k in ids:
            s.put(k, {"k": k})
    with Store(tmp_path / "s") as s:
        assert {k: s.get(k) for k in ids} == {k: {"k": k} for k in ids}
    names = set(os.listdir(tmp_path / "s"))
    assert names <= {"MANIFEST", "store.lock", "store.shm", "sync.lock", "seg-00000001.rfs"}
    assert os.listdir(tmp_path) == ["s"]


def test_store_100_mb_document(tmp_path: Path) -> None:
    """A 100 MB document is stored and read back whole; the documents around it are intact."""
    from racefree import Store

    with Store(tmp_path / "s", durable=False) as s:
        s.put("small", {"n": 1})
        s.put("big", {"blob": "b" * (100 * 1024 * 1024)})
        s.put("after", {"n": 2})
    with Store(tmp_path / "s", durable=False) as s:
        assert len(s.get("big")["blob"]) == 100 * 1024 * 1024
        assert s.get("small") == {"n": 1} and s.get("after") == {"n": 2}


def test_store_read_only_mount(tmp_path: Path) -> None:
    """A store on a read-only mount: a typed OSError (EROFS) at open or write; nothing lost."""
    from racefree import Store

    with read_only_dir(tmp_path / "ro") as ro:
        with Store(ro / "s", _segment_size=8192) as s:
            s.put("a", {"n": 1})
        make_read_only(ro)
        before = snapshot(ro)
        with pytest.raises(OSError) as info, Store(ro / "s", _segment_size=8192) as s:
            assert s.get("a") == {"n": 1}
            s.put("b", {"n": 2})
        assert info.value.errno == errno.EROFS
        assert snapshot(ro) == before


# --------------------------------------------------------------------------- the CLI
def test_cli_store_and_log_bad_paths(tmp_path: Path) -> None:
    """store/log/check commands on the wrong kind of path: one error line each, exit 1, no change.
    """
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("mine")
    (tmp_path / "f.txt").write_text("text")
    for args in (["store", str(tmp_path / "d"), "ls"], ["store", str(tmp_path / "f.txt"), "ls"],
                 ["store", str(tmp_path / "nope"), "get", "x"],
                 ["log", str(tmp_path / "d"), "tail"], ["log", str(tmp_path / "f.txt"), "tail"],
                 ["log", str(tmp_path / "nope"), "check"], ["check", str(tmp_path / "nope")]):
        one_line_error(cli(*args))
    assert snapshot(tmp_path) == {"d": None, "d/readme.txt": b"mine", "f.txt": b"text"}


def test_cli_store_put_bad_json_and_odd_ids(tmp_path: Path) -> None:
    """racefree store put with non-JSON or a non-object: one error line; odd ids round-trip."""
    s = str(tmp_path / "s")
    assert cli("store", s, "put", "a", '{"n": 1}').returncode == 0
    one_line_error(cli("store", s, "put", "a", "{not json"))
    one_line_error(cli("store", s, "put", "a", "[1, 2]"))
    for key in ("../x", "/etc/passwd", EMOJI):
        assert cli("store", s, "put", key, '{"k": 1}').returncode == 0
        got = cli("store", s, "get", key)
        assert got.returncode == 0 and '"k"' in got.stdout, (key, got.stdout, got.stderr)
    got = cli("store", s, "get", "a")
    assert got.returncode == 0 and '"n": 1' in got.stdout.replace('"n":1', '"n": 1')
