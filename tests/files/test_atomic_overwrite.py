"""atomic_write / atomic_open with ``overwrite=False``: create the file only if none exists.

The crash states of this protocol are enumerated in tests/proof/test_crash_states.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.testkit import reap

from racefree import DurabilityError, _fs, atomic_open, atomic_write
from racefree.testing.injection import FaultFS

pytestmark = pytest.mark.timeout(120)


def _names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


class _Calls(_fs.FileSystem):
    """The real file system, recording each call as (op, basename) and running hooks."""

    def __init__(self, before: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.before = before or {}

    def _note(self, op: str, path: object = "") -> None:
        self.calls.append((op, os.path.basename(str(path))))
        hook = self.before.pop(op, None)
        if hook is not None:
            hook()

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        self._note("open", path)
        return super().open(path, flags, mode)

    def fsync(self, fd: int) -> None:
        self._note("fsync")
        super().fsync(fd)

    def replace(self, src: str, dst: str) -> None:
        self._note("replace", dst)
        super().replace(src, dst)

    def link(self, src: str, dst: str) -> None:
        self._note("link", dst)
        super().link(src, dst)

    def unlink(self, path: str) -> None:
        self._note("unlink", path)
        super().unlink(path)

    def fsync_dir(self, path: str) -> None:
        self._note("fsync_dir", path)
        super().fsync_dir(path)


def test_creates_a_new_file_durably(tmp_path: Path) -> None:
    """The new file holds the bytes, with the umask's mode; fsync before the link, the
    directory fsync after the temp's name is gone (W1, W2); no temp is left.
    """
    path = tmp_path / "new.txt"
    fake = _Calls()
    old = os.umask(0o022)
    try:
        with _fs.use(fake):
            atomic_write(path, b"hello\n", overwrite=False)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"hello\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert _names(tmp_path) == ["new.txt"]
    ops = [op for op, _ in fake.calls]
    assert ops == ["open", "fsync", "link", "unlink", "fsync_dir"]
    assert fake.calls[2] == ("link", "new.txt")
    assert fake.calls[3][1] == fake.calls[0][1]  # the temp's own name is what goes


def test_existing_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """FileExistsError at once: the old file is byte-for-byte, no temp was even created."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    fake = _Calls()
    with _fs.use(fake), pytest.raises(FileExistsError) as info:
        atomic_write(path, b"new", overwrite=False)
    assert info.value.errno == errno.EEXIST
    assert info.value.filename == str(path)
    assert path.read_bytes() == b"old"
    assert [op for op, _ in fake.calls] == []
    assert _names(tmp_path) == ["f"]


def test_file_created_meanwhile_is_never_replaced(tmp_path: Path) -> None:
    """Another writer creates the file after the first look: the link refuses it, the
    other writer's file stays, the temp is removed.
    """
    path = tmp_path / "f"
    fake = _Calls(before={"link": lambda: path.write_bytes(b"theirs")})
    with _fs.use(fake), pytest.raises(FileExistsError):
        atomic_write(path, b"mine", overwrite=False)
    assert path.read_bytes() == b"theirs"
    assert _names(tmp_path) == ["f"]


@pytest.mark.parametrize("target", ["dangling", "to-file"])
def test_symlink_at_the_path_is_an_existing_file(tmp_path: Path, target: str) -> None:
    """A symlink (even a dangling one) is a name that exists: refused, never followed."""
    path = tmp_path / "link"
    pointee = tmp_path / "pointee"
    if target == "to-file":
        pointee.write_bytes(b"keep")
    path.symlink_to(pointee)
    with pytest.raises(FileExistsError):
        atomic_write(path, b"x", overwrite=False)
    assert os.readlink(path) == str(pointee)
    assert pointee.read_bytes() == b"keep" if target == "to-file" else not pointee.exists()


def test_explicit_mode(tmp_path: Path) -> None:
    """``mode=`` applies to the new file as with overwrite=True."""
    path = tmp_path / "f"
    atomic_write(path, "x", overwrite=False, mode=0o600)
    assert path.stat().st_mode & 0o777 == 0o600


def test_not_durable_skips_both_syncs(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fake = _Calls()
    with _fs.use(fake):
        atomic_write(path, b"x", overwrite=False, durable=False)
    assert [op for op, _ in fake.calls] == ["open", "link", "unlink"]
    assert path.read_bytes() == b"x"


def test_atomic_open_creates_or_refuses(tmp_path: Path) -> None:
    """atomic_open(..., overwrite=False): creates; an existing name refuses at the ``with``."""
    path = tmp_path / "t.txt"
    with atomic_open(path, "w", overwrite=False) as f:
        f.write("one\n")
    assert path.read_text() == "one\n"
    with pytest.raises(FileExistsError), atomic_open(path, "w", overwrite=False) as f:
        raise AssertionError("the block must not run")  # pragma: no cover
    assert path.read_text() == "one\n"
    assert _names(tmp_path) == ["t.txt"]


def test_atomic_open_created_meanwhile_publishes_nothing(tmp_path: Path) -> None:
    """Another writer creates the file while the block runs: FileExistsError at its end."""
    path = tmp_path / "b.bin"
    with pytest.raises(FileExistsError), atomic_open(path, "wb", overwrite=False) as f:
        f.write(b"mine")
        path.write_bytes(b"theirs")
    assert path.read_bytes() == b"theirs"
    assert _names(tmp_path) == ["b.bin"]


def test_failed_fsync_publishes_nothing(tmp_path: Path) -> None:
    """An fsync error: DurabilityError, no file, no temp (W7)."""
    path = tmp_path / "f"
    fault = FaultFS(op="fsync", nth=1, err=errno.EIO)
    fault.arm()
    with _fs.use(fault), pytest.raises(DurabilityError):
        atomic_write(path, b"x", overwrite=False)
    assert _names(tmp_path) == []


def test_failed_temp_removal_says_the_file_was_created(tmp_path: Path) -> None:
    """The link worked but removing the temp's name failed: the error says the file exists."""
    path = tmp_path / "f"
    fault = FaultFS(op="unlink", nth=1, err=errno.EIO)
    fault.arm()
    with _fs.use(fault), pytest.raises(OSError) as info:
        atomic_write(path, b"x", overwrite=False)
    assert info.value.errno == errno.EIO
    assert "was created" in str(info.value)
    assert path.read_bytes() == b"x"


def test_failed_directory_sync_says_maybe_committed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fault = FaultFS(op="fsync_dir", nth=1, err=errno.EIO)
    fault.arm()
    with _fs.use(fault), pytest.raises(DurabilityError, match="may or may not"):
        atomic_write(path, b"x", overwrite=False)
    assert path.read_bytes() == b"x"
    assert _names(tmp_path) == ["f"]


_RACER = """
import sys
from racefree import atomic_write
sys.stdin.readline()  # start barrier
try:
    atomic_write(sys.argv[1], (sys.argv[2] * 4096).encode(), overwrite=False)
except FileExistsError:
    print("exists")
else:
    print("created")
"""


def test_racing_processes_exactly_one_creates(tmp_path: Path) -> None:
    """Six processes create the same file at once: exactly one succeeds, its bytes whole."""
    path = tmp_path / "race"
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(6):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _RACER, str(path), chr(ord("a") + i)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            ))
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    finally:
        reap(procs)
    assert sorted(outs) == ["created"] + ["exists"] * 5
    winner = chr(ord("a") + outs.index("created"))
    assert path.read_bytes() == (winner * 4096).encode()
    assert _names(tmp_path) == ["race"]
