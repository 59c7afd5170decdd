"""atomic_write, atomic_open and sweep: the W1-W9 pitfalls, faults injected at the fs seam."""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import racefree
from racefree import DurabilityError, _fs
from racefree.files.sweep import _TEMP_RE

TEMP = re.compile(r"\A\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.rftmp\Z")


def temps(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".rftmp"))


class Recorder(_fs.FileSystem):
    """The real file system, recording each call as (op, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]


def _recording(op: str) -> Any:
    real = getattr(_fs.FileSystem, op)

    def method(self: Recorder, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((op, args))
        return real(self, *args, **kwargs)

    return method


for _op in _fs.OPS:
    setattr(Recorder, _op, _recording(_op))


class FailingFsync(_fs.FileSystem):
    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        raise OSError(errno.EIO, "injected fsync failure")

    fdatasync = fsync


class FailingDirSync(_fs.FileSystem):
    def fsync_dir(self, path: str) -> None:
        raise OSError(errno.EIO, "injected directory fsync failure")


class FailingWrite(_fs.FileSystem):
    """Writes the first call's bytes, then fails with ENOSPC."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, "injected: no space left")
        return os.write(fd, bytes(data[:10]))


class OneByteWrites(_fs.FileSystem):
    def __init__(self) -> None:
        self.writes = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.writes += 1
        return os.write(fd, bytes(data[:1]))


class FailingReplace(_fs.FileSystem):
    def replace(self, src: str, dst: str) -> None:
        raise OSError(errno.EXDEV, "injected rename failure")


# -- contents and protocol -----------------------------------------------------


def test_write_bytes_and_str(tmp_path: Path) -> None:
    """bytes are written as given, str as UTF-8; the second write replaces the first."""
    path = tmp_path / "f.txt"
    racefree.atomic_write(path, b"\x00\xffbytes")
    assert path.read_bytes() == b"\x00\xffbytes"
    racefree.atomic_write(str(path), "h\u00e9llo")
    assert path.read_bytes() == b"h\xc3\xa9llo"
    racefree.atomic_write(path, bytearray(b"ba"))
    assert path.read_bytes() == b"ba"
    assert temps(tmp_path) == []


def test_wrong_data_type_creates_nothing(tmp_path: Path) -> None:
    """Data that is neither bytes nor str is a TypeError before any file is created."""
    with pytest.raises(TypeError, match="bytes or str"):
        racefree.atomic_write(tmp_path / "f", 42)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_durable_protocol(tmp_path: Path) -> None:
    """Durable: O_EXCL|O_NOFOLLOW temp in the same directory, write, fsync, close, rename,
    fsync of the directory - in that order (W1, W2, W3)."""
    path = tmp_path / "new.json"
    rec = Recorder()
    with _fs.use(rec):
        racefree.atomic_write(path, b"{}")
    # One lstat per path component: the path is resolved under the trust rule first.
    lstats = ["stat"] * len(path.parts)
    assert rec.ops() == [*lstats, "open", "write", "fsync", "close", "replace", "fsync_dir"]
    rec.calls[: len(lstats)] = []
    tmp, flags, create_mode = rec.calls[0][1]
    assert os.path.dirname(tmp) == str(tmp_path)
    match = TEMP.match(os.path.basename(tmp))
    assert match is not None and match["name"] == "new.json" and int(match["pid"]) == os.getpid()
    want = os.O_CREAT | os.O_EXCL | os.O_WRONLY | _fs.O_NOFOLLOW
    assert flags & want == want
    assert create_mode == 0o666
    assert rec.calls[4][1] == (tmp, str(path))
    assert rec.calls[5][1] == (str(tmp_path),)
    assert path.read_bytes() == b"{}"


def test_non_durable_skips_syncs(tmp_path: Path) -> None:
    """durable=False makes no fsync of the file or the directory, and still replaces."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    rec = Recorder()
    with _fs.use(rec):
        racefree.atomic_write(path, b"new", durable=False)
    owner = ["fchown"] if os.geteuid() == 0 else []  # root keeps the owner too
    lstats = ["stat"] * len(path.parts)
    assert rec.ops() == [*lstats, "open", *owner, "fchmod", "write", "close", "replace"]
    assert path.read_bytes() == b"new"


def test_short_writes_are_completed(tmp_path: Path) -> None:
    """A file system that writes one byte per call still gets every byte (W6)."""
    data = bytes(range(256)) * 12
    path = tmp_path / "f"
    fs = OneByteWrites()
    with _fs.use(fs):
        racefree.atomic_write(path, data)
    assert fs.writes == len(data)
    assert path.read_bytes() == data
    fs = OneByteWrites()
    with _fs.use(fs), racefree.atomic_open(path, "wb") as f:
        f.write(data[:1000])
        f.write(data[1000:])
    assert fs.writes == len(data)
    assert path.read_bytes() == data


# -- faults ----------------------------------------------------------------------


def test_fsync_failure_raises_and_keeps_old_file(tmp_path: Path) -> None:
    """An fsync error is a DurabilityError, not retried; the old file stays byte-for-byte (W7)."""
    path = tmp_path / "f"
    path.write_bytes(b"old contents\n")
    fs = FailingFsync()
    with _fs.use(fs), pytest.raises(DurabilityError) as info:
        racefree.atomic_write(path, b"new")
    assert fs.fsyncs == 1
    assert info.value.errno == errno.EIO
    assert isinstance(info.value, OSError)
    assert "not replaced" in str(info.value)
    assert path.read_bytes() == b"old contents\n"
    assert temps(tmp_path) == []


def test_directory_fsync_failure_says_maybe_committed(tmp_path: Path) -> None:
    """A failed directory fsync after the rename is a DurabilityError saying 'may or may not'."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with _fs.use(FailingDirSync()), pytest.raises(DurabilityError, match="may or may not"):
        racefree.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert temps(tmp_path) == []


def test_write_error_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    """ENOSPC in the middle of the data: the error reaches the caller, no temp, old file kept."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with _fs.use(FailingWrite()), pytest.raises(OSError) as info:
        racefree.atomic_write(path, b"x" * 100)
    assert info.value.errno == errno.ENOSPC
    assert not isinstance(info.value, DurabilityError)
    assert path.read_bytes() == b"old"
    assert temps(tmp_path) == []


def test_rename_error_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    """A failed rename removes the temp and leaves the old file."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with _fs.use(FailingReplace()), pytest.raises(OSError) as info:
        racefree.atomic_write(path, b"new")
    assert info.value.errno == errno.EXDEV
    assert path.read_bytes() == b"old"
    assert temps(tmp_path) == []


class InterruptAt(_fs.FileSystem):
    """Raises KeyboardInterrupt at the first call of ``op`` (after doing it, for close)."""

    def __init__(self, op: str) -> None:
        self.op = op
        for name in ("open", "fchmod", "fchown", "write", "fsync", "close", "replace"):
            setattr(self, name, self._wrap(name))

    def _wrap(self, name: str) -> Any:
        real = getattr(_fs.FileSystem(), name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if name == self.op:
                self.op = ""
                if name == "close":
                    real(*args, **kwargs)  # close(2) frees the descriptor even when it fails
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        return call


@pytest.mark.parametrize("op", ["open", "fchmod", "write", "fsync", "close", "replace"])
@pytest.mark.parametrize("api", ["atomic_write", "atomic_open"])
def test_interrupt_at_any_step_leaves_old_file_and_no_temp(
    tmp_path: Path, op: str, api: str
) -> None:
    """A KeyboardInterrupt raised by any call before the rename (or by the rename) leaves the
    old file byte-for-byte and no temp; no descriptor is closed twice."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    fs = InterruptAt(op)
    with _fs.use(fs), pytest.raises(KeyboardInterrupt):
        if api == "atomic_write":
            racefree.atomic_write(path, b"new" * 1000)
        else:
            with racefree.atomic_open(path, "wb") as f:
                f.write(b"new" * 1000)
    assert fs.op == ""  # the interrupt did fire at that step
    assert path.read_bytes() == b"old"
    assert temps(tmp_path) == []


@pytest.mark.parametrize("exc_type", [ValueError, KeyboardInterrupt])
def test_atomic_open_exception_publishes_nothing(tmp_path: Path, exc_type: type) -> None:
    """An exception (KeyboardInterrupt too) inside atomic_open's block: old file, no temp."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(exc_type), racefree.atomic_open(path, "w") as f:
        f.write("half of the new" * 1000)
        f.flush()
        assert temps(tmp_path) != []
        raise exc_type()
    assert path.read_bytes() == b"old"
    assert temps(tmp_path) == []


def test_atomic_open_write_error_publishes_nothing(tmp_path: Path) -> None:
    """A write error while the block's data is flushed: the error propagates, old file kept."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with _fs.use(FailingWrite()), pytest.raises(OSError) as info:  # noqa: SIM117 - order matters
        with racefree.atomic_open(path, "wb") as f:
            f.write(b"y" * 100_000)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old"
    assert temps(tmp_path) == []


def test_atomic_open_text_and_binary(tmp_path: Path) -> None:
    """The block's writes are invisible until it exits; text is encoded as asked."""
    path = tmp_path / "f.txt"
    path.write_bytes(b"old")
    with racefree.atomic_open(path, "w") as f:
        f.write("caf\u00e9\n")
        f.flush()
        assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"caf\xc3\xa9\n"
    with racefree.atomic_open(path, "w", encoding="latin-1") as f:
        f.write("caf\u00e9")
    assert path.read_bytes() == b"caf\xe9"
    with racefree.atomic_open(path, "wb", durable=False) as g:
        g.write(b"\x00\x01")
        g.close()  # closing inside the block is allowed; the exit still publishes
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="'w' or 'wb'"):
        racefree.atomic_open(path, "a")  # type: ignore[call-overload]
    assert temps(tmp_path) == []


# -- names, modes, links ---------------------------------------------------------


def test_existing_mode_kept_and_explicit_mode(tmp_path: Path) -> None:
    """The file keeps its mode bits on every write (W4); mode= sets them explicitly."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    racefree.atomic_write(path, b"new")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    with racefree.atomic_open(path, "wb") as f:
        f.write(b"newer")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    racefree.atomic_write(path, b"x", mode=0o604)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o604
    with pytest.raises(ValueError, match="permission bits"):
        racefree.atomic_write(path, b"x", mode=0o10000)
    assert path.read_bytes() == b"x"


def test_new_file_mode_follows_umask(tmp_path: Path) -> None:
    """A new file gets 0o666 & ~umask, as open() would give it."""
    old = os.umask(0o027)
    try:
        racefree.atomic_write(tmp_path / "a", b"a")
        with racefree.atomic_open(tmp_path / "b", "w") as f:
            f.write("b")
        racefree.atomic_write(tmp_path / "c", b"c", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o600


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_keeps_owner(tmp_path: Path) -> None:
    """Running as root, a rewrite keeps the file's owner and group (W4)."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    os.chown(path, 12345, 23456)
    os.chmod(path, 0o2640)
    racefree.atomic_write(path, b"new")
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12345, 23456, 0o2640)


def test_symlink_is_written_through(tmp_path: Path) -> None:
    """A symlink stays a link; its target (in another directory) gets the new contents."""
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "real" / "config.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    link = tmp_path / "links" / "config.json"
    link.symlink_to(os.path.join("..", "real", "config.json"))
    racefree.atomic_write(link, b"new")
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("..", "real", "config.json")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    dangling = tmp_path / "links" / "later.json"
    dangling.symlink_to(tmp_path / "real" / "later.json")
    racefree.atomic_write(dangling, b"created")
    assert dangling.is_symlink()
    assert (tmp_path / "real" / "later.json").read_bytes() == b"created"
    assert temps(tmp_path / "real") == [] and temps(tmp_path / "links") == []


def test_missing_directory_and_directory_target(tmp_path: Path) -> None:
    """A missing parent is a clear FileNotFoundError; a directory is IsADirectoryError."""
    with pytest.raises(FileNotFoundError, match="No such directory") as info:
        racefree.atomic_write(tmp_path / "nope" / "f", b"x")
    assert info.value.filename == str(tmp_path / "nope" / "f")
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        racefree.atomic_write(tmp_path / "d", b"x")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="Not a regular file") as info2:
        racefree.atomic_write(tmp_path / "fifo", b"x")
    assert info2.value.errno == errno.EINVAL
    assert sorted(os.listdir(tmp_path)) == ["d", "fifo"]


def test_temp_names_are_unique_and_long_names_fit(tmp_path: Path) -> None:
    """A 255-byte name still gets a temp name within NAME_MAX; each temp name is fresh."""
    name = "n" * 255
    racefree.atomic_write(tmp_path / name, b"x")
    assert (tmp_path / name).read_bytes() == b"x"
    rec = Recorder()
    with _fs.use(rec):
        for _ in range(20):
            racefree.atomic_write(tmp_path / "f", b"x", durable=False)
    made = [args[0] for op, args in rec.calls if op == "open"]
    assert len(set(made)) == 20


# -- sweep -------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def test_sweep_removes_only_dead_writers_temps(tmp_path: Path) -> None:
    """sweep removes temps of dead pids, keeps live writers' temps and other files."""
    dead = _dead_pid()
    me = os.getpid()
    old = time.time() - 30 * 86400
    files = {
        "dead": f".data.json.{dead}.0000abcd.rftmp",
        "live": f".data.json.{me}.00001234.rftmp",
        "data": "data.json",
        "no_random": f".data.json.{dead}.rftmp",
        "other": f"data.json.{dead}.0000abcd.rftmp",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"x")
    os.utime(tmp_path / files["dead"], (old, old))  # so that reuse of the pid cannot save it
    (tmp_path / f".dir.{dead}.0000beef.rftmp").mkdir()
    removed = racefree.sweep(tmp_path)
    assert removed == [str(tmp_path / files["dead"])]
    left = set(os.listdir(tmp_path))
    assert left == set(files.values()) - {files["dead"]} | {f".dir.{dead}.0000beef.rftmp"}
    assert racefree.sweep(tmp_path) == []


def test_sweep_keeps_a_running_writers_temp(tmp_path: Path) -> None:
    """A temp whose writer (another process) is alive is kept; once it has exited, removed."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE
    )
    try:
        temp = tmp_path / f".f.json.{child.pid}.0a0b0c0d.rftmp"
        temp.write_bytes(b"in progress")
        assert racefree.sweep(tmp_path) == []
        assert temp.read_bytes() == b"in progress"
    finally:
        child.communicate(b"\n", timeout=60)
    assert racefree.sweep(tmp_path) == [str(temp)]
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process start times: /proc")
def test_sweep_handles_pid_reuse(tmp_path: Path) -> None:
    """A temp whose pid belongs to a process that started after the temp was written is a
    dead writer's (pid reuse): removed. A recent temp of the same live pid is kept."""
    me = os.getpid()
    stale = tmp_path / f".f.{me}.0badf00d.rftmp"
    fresh = tmp_path / f".f.{me}.00c0ffee.rftmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    long_ago = time.time() - 30 * 86400  # before this test process started
    os.utime(stale, (long_ago, long_ago))
    assert racefree.sweep(tmp_path) == [str(stale)]
    assert os.listdir(tmp_path) == [fresh.name]


def test_temp_pattern_matches_what_atomic_write_creates(tmp_path: Path) -> None:
    """The names atomic_write creates are the names sweep recognises (pid in group 1)."""
    rec = Recorder()
    with _fs.use(rec):
        racefree.atomic_write(tmp_path / "a.b.c", b"x")
    tmp = next(args[0] for op, args in rec.calls if op == "open")
    match = _TEMP_RE.match(os.path.basename(tmp))
    assert match is not None and int(match.group(1)) == os.getpid()


# -- readers never see a torn file while writers are killed ----------------------------

WRITER = r"""
import sys, racefree
path = sys.argv[1]
a, b = b"A" * 200_000, b"B" * 70_000 + b"\n"
i = 0
while True:
    racefree.atomic_write(path, a if i % 2 else b, durable=(i % 5 == 0))
    i += 1
    sys.stdout.write("w\n")
    sys.stdout.flush()
"""

READER = r"""
import os, sys
path, stop = sys.argv[1], sys.argv[2]
good = {b"A" * 200_000, b"B" * 70_000 + b"\n", b"initial"}
reads = bad = 0
sys.stdout.write("ready\n")
sys.stdout.flush()
while not os.path.exists(stop):
    with open(path, "rb") as f:
        data = f.read()
    reads += 1
    if data not in good:
        bad += 1
print(reads, bad)
"""


@pytest.mark.slow
def test_reader_never_sees_partial_content_while_writers_are_killed(tmp_path: Path) -> None:
    """A reader process never sees anything but a whole version of the file while writer
    processes are SIGKILLed at random points; sweep then removes exactly their orphans."""
    path = tmp_path / "f"
    path.write_bytes(b"initial")
    stop = tmp_path / "stop"
    rng = random.Random()
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(stop)], stdout=subprocess.PIPE, text=True
    )
    writer: subprocess.Popen[str] | None = None
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline() == "ready\n"
        for _round in range(30):
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
            )
            assert writer.stdout is not None
            for _ in range(rng.randint(1, 40)):  # let it complete a random number of writes
                assert writer.stdout.readline() == "w\n"
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=60)
            writer.stdout.close()
            writer = None
        stop.write_bytes(b"")
        out, _ = reader.communicate(timeout=60)
    finally:
        for proc in (writer, reader):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    reads, bad = map(int, out.split())
    assert bad == 0
    assert reads > 0
    assert path.read_bytes() in {b"A" * 200_000, b"B" * 70_000 + b"\n"}
    orphans = [str(tmp_path / name) for name in temps(tmp_path)]
    assert racefree.sweep(tmp_path) == orphans
    assert temps(tmp_path) == []


def test_follow_symlinks_false_replaces_the_link_itself(tmp_path: Path) -> None:
    """``follow_symlinks=False``: a link at the name is replaced by the new file (new mode,
    not the target's); the link's target is byte for byte unchanged."""
    target = tmp_path / "target"
    target.write_bytes(b"target data")
    os.chmod(target, 0o600)
    link = tmp_path / "name"
    link.symlink_to(target)
    racefree.atomic_write(link, b"new", follow_symlinks=False)
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert target.read_bytes() == b"target data"
    racefree.atomic_write(link, b"newer", follow_symlinks=False)  # a file: replaced as ever
    assert link.read_bytes() == b"newer"
