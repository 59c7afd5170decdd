"""Case 22: hard links another user plants in a shared directory, at names racefree uses.

Where ``fs.protected_hardlinks`` is off (the kernel's default), any user may hard-link
any file they can reach, root's included, into ``/tmp``. The link shows the file's
owner (root), not its maker, so an owner check alone trusts it. Each test here has
``nobody`` link a root-only file to a name racefree is about to use, then asserts
that racefree refused (``UnsafePathError``) or passed the name by, and that the
victim file is byte for byte unchanged, with its mode and owner. The sysctl is set to
0 for the test (and put back); the tests need root (``helpers.hostile``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hostile import NOBODY, attacker, need_root, shared_dir
from helpers.logrecording import Recording
from helpers.logrecording import rec as _rec

import racefree
from racefree.logging import RotatingFileHandler, TimedRotatingFileHandler

SYSCTL = Path("/proc/sys/fs/protected_hardlinks")
LINK = "import os, sys; os.link(sys.argv[1], sys.argv[2])"


@pytest.fixture(autouse=True)
def hardlinks_unprotected() -> Iterator[None]:
    """fs.protected_hardlinks = 0 for the test (the kernel's default), put back after."""
    need_root()
    try:
        before = SYSCTL.read_text()
        SYSCTL.write_text("0\n")
    except OSError:
        pytest.skip("cannot set fs.protected_hardlinks to 0 here")
    try:
        yield
    finally:
        SYSCTL.write_text(before)


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir("tmp") as d:
        yield d


@pytest.fixture
def victims(shared: Path) -> Iterator[Path]:
    """Root's files, in a root directory on the same file system (nobody may search it)."""
    where = shared.parent / (shared.name + "-root")
    where.mkdir(mode=0o755)
    try:
        yield where
    finally:
        for p in where.iterdir():
            p.unlink()
        where.rmdir()


def victim(where: Path, name: str, data: bytes, mode: int) -> Path:
    path = where / name
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def plant(target: Path, name: Path) -> None:
    attacker(LINK, str(target), str(name))
    st = os.lstat(name)
    assert st.st_uid == 0 and st.st_nlink == 2  # the attack is in place: root's file, 2 names
    assert os.stat(target).st_ino == st.st_ino and NOBODY != 0


def state(path: Path) -> tuple[bytes, int, int, int]:
    st = os.stat(path)
    return path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.mark.parametrize("mode", ["a", "w"])
def test_case22_a_log_handler_never_writes_a_file_linked_at_the_log_name(
        shared: Path, victims: Path, mode: str) -> None:
    """Root's 0600 passwd-like file linked as app.log: no record appended, never truncated."""
    shadow = victim(victims, "shadow", b"root:secret:0:0\n", 0o600)
    before = state(shadow)
    plant(shadow, shared / "app.log")
    with pytest.raises(racefree.UnsafePathError, match="hard links"):
        RotatingFileHandler(shared / "app.log", mode=mode)
    assert state(shadow) == before


def test_case22_a_new_log_after_a_rotation_never_opens_a_link_planted_meanwhile(
        shared: Path, victims: Path) -> None:
    """The name freed by a rotation, taken by a link before the handler opens it again."""
    shadow = victim(victims, "shadow", b"root:secret:0:0\n", 0o600)
    before = state(shadow)
    h = Recording(shared / "app.log", maxBytes=10, backupCount=2)
    try:
        h.handle(_rec("aaaaaaaa"))
        os.rename(shared / "app.log", shared / "app.log.1")  # as another process's rotation
        plant(shadow, shared / "app.log")
        os.pwrite(h._side.fd, (1).to_bytes(8, "little"), 0)  # type: ignore[union-attr]
        h.handle(_rec("evil::0:0::/root:/bin/bash"))
    finally:
        h.close()
    assert [type(e) for e in h.reported] == [racefree.UnsafePathError]
    assert state(shadow) == before


def test_case22_the_compressor_never_adopts_a_temp_linked_to_a_root_file(
        shared: Path, victims: Path) -> None:
    """A link at the compressor's temp name (.app.log.<inode>.gz.tmp, the inode of the
    backup to be, which anyone can stat): never truncated, filled or chmodded."""
    precious = victim(victims, "precious", b"root only\n", 0o600)
    before = state(precious)
    h = Recording(shared / "app.log", maxBytes=10, backupCount=3, compress=True)
    try:
        h.handle(_rec("aaaaaaaa"))
        ino = os.stat(shared / "app.log").st_ino
        plant(precious, shared / f".app.log.{ino}.gz.tmp")
        h.handle(_rec("bbbbbbbb"))  # rotates app.log (that inode) -> app.log.1, compresses
    finally:
        h.close()
    assert [type(e) for e in h.reported] == [racefree.UnsafePathError]
    assert state(precious) == before
    assert (shared / "app.log.1").read_bytes() == b"aaaaaaaa\n"  # kept plain and whole


@pytest.mark.parametrize("which", ["jsonfile", "appendlog", "store", "sidecar", "filelock"])
def test_case22_racefree_never_opens_its_own_file_linked_to_a_root_file(
        shared: Path, victims: Path, which: str) -> None:
    """A link at a lock file (JsonFile's, AppendLog's), a store's shared header or a log's
    sidecar: refused before any chmod, truncate or write of the linked file. A FileLock's
    own lock file is only flock'ed, never read, written or chmodded: it locks, and the
    linked file is unchanged."""
    passwd = victim(victims, "passwd", b"", 0o644)
    before = state(passwd)
    names = {"jsonfile": "x.json.lock", "appendlog": "data.log.lock", "store": "s/store.shm",
             "sidecar": ".app.log.lock", "filelock": "my.lock"}
    if which == "store":  # a store directory others may write, like /tmp
        (shared / "s").mkdir()
        os.chmod(shared / "s", 0o1777)
        racefree.Store(shared / "s").close()
        (shared / "s" / "store.shm").unlink()
    plant(passwd, shared / names[which])
    if which == "filelock":
        with racefree.FileLock(shared / "my.lock", timeout=5):
            pass
        assert state(passwd) == before
        return
    with pytest.raises(racefree.UnsafePathError, match="hard links"):
        if which == "jsonfile":
            racefree.JsonFile(shared / "x.json", default={}).update(lambda d: {**d, "a": 1})
        elif which == "appendlog":
            with racefree.AppendLog(shared / "data.log") as log:
                log.append({"a": 1})
        elif which == "store":
            with racefree.Store(shared / "s") as store:
                store.put("a", {"a": 1})
        else:
            RotatingFileHandler(shared / "app.log")
    assert state(passwd) == before


@pytest.mark.parametrize("mode", [0o4755, 0o664])
def test_case22_atomic_write_never_takes_the_mode_of_a_linked_file(
        shared: Path, victims: Path, mode: int) -> None:
    """atomic_write and JsonFile.write keep an existing file's mode and owner: a link to a
    setuid root binary (or a group-writable root file) at the name is refused, so root's
    new file is never setuid root (or group-writable) by someone else's choice."""
    binary = victim(victims, "tool", b"\x7fELF root tool", mode)
    before = state(binary)
    plant(binary, shared / "payload.bin")
    with pytest.raises(racefree.UnsafePathError, match="hard links"):
        racefree.atomic_write(shared / "payload.bin", b"#!/bin/sh\nid -u\n")
    with pytest.raises(racefree.UnsafePathError, match="hard links"):
        racefree.JsonFile(shared / "payload.bin").write({"a": 1})
    assert state(binary) == before
    assert os.lstat(shared / "payload.bin").st_ino == os.stat(binary).st_ino  # not replaced


def test_case22_links_at_timed_backup_names_neither_count_nor_are_deleted(
        shared: Path, victims: Path) -> None:
    """Root files linked under backup names dated 2099: not counted as the log's backups
    (root's own are not deleted to make room for them), and never deleted."""
    files = [victim(victims, f"f{i}", b"root %d\n" % i, 0o600) for i in range(2)]
    base = shared / "app.log"
    h = TimedRotatingFileHandler(base, when="S", backupCount=2)
    try:
        h.handle(_rec("first"))
        for i, f in enumerate(files):
            plant(f, shared / f"app.log.2099-01-01_00-00-0{i}")
        h.doRollover()
        h.handle(_rec("second"))
        h.doRollover()
    finally:
        h.close()
    ours = sorted(p.name for p in shared.iterdir()
                  if p.name.startswith("app.log.") and not p.name.startswith("app.log.2099"))
    assert len(ours) == 2  # root's own backups, kept
    for i, f in enumerate(files):
        assert f.read_bytes() == b"root %d\n" % i and f.stat().st_nlink == 2


def test_case22_racefrees_own_second_names_are_waited_out(shared: Path) -> None:
    """racefree's own second names (a lock file published with link(), a new file from
    atomic_write(overwrite=False)) last microseconds: a file with two names is looked at
    again before it is refused, so a racefree process that opens it then is not refused.
    The second name goes at the first look again (through the seam); one that stays is
    refused after LINK_SETTLE."""
    from racefree import _fs

    path = shared / "fresh.json"
    path.write_bytes(b"{}")
    other = shared / ".fresh.json.tmp"
    looks: list[int] = []

    class SecondNameGoes(_fs.FileSystem):
        def fstat(self, fd: int) -> os.stat_result:
            st = os.fstat(fd)
            if st.st_ino == os.stat(path).st_ino:
                looks.append(st.st_nlink)
                if len(looks) == 2:
                    other.unlink()  # as atomic_write(overwrite=False) finishing
                    st = os.fstat(fd)
            return st

    os.link(path, other)  # as atomic_write(overwrite=False) between its link and unlink
    with _fs.use(SecondNameGoes()):
        assert racefree.JsonFile(path).read() == {}
    assert looks == [2, 2]  # refused at the first look, trusted at the second
    os.link(path, other)  # a second name that stays: refused after LINK_SETTLE
    with pytest.raises(racefree.UnsafePathError, match="hard links"):
        racefree.JsonFile(path).read()


def test_case22_a_lock_file_left_with_its_creators_second_name_still_locks(shared: Path) -> None:
    """FileLock(mode=...) publishes its lock file with link() and then removes the temp name:
    a creator killed in between leaves racefree's own second name. The lock file is only
    flock'ed (nothing read, written or chmodded), so it may have one: the path keeps working
    for every later FileLock, and the file is unchanged."""
    lock = shared / "a.lock"
    with racefree.FileLock(lock, mode=0o666, timeout=5):
        pass
    os.link(lock, shared / f".a.lock.{os.getpid()}.0badc0de.rftmp")  # what the kill leaves
    before = state(lock)
    for kwargs in ({"mode": 0o666}, {}):
        with racefree.FileLock(lock, timeout=5, **kwargs):  # type: ignore[arg-type]
            assert os.stat(lock).st_nlink == 2
    assert state(lock) == before


def test_case22_a_file_others_may_open_linked_at_a_private_locks_name_is_refused(
        shared: Path, victims: Path) -> None:
    """nobody links a root file they may open (0666) at the name of root's
    ``FileLock(mode=0o600)``: refused (``UnsafePathError``), not locked, so they cannot hold
    root's private lock; the linked file is unchanged. Without ``mode=`` the lock is as
    open as the umask makes it, and the linked file locks."""
    open_file = victim(victims, "spool", b"", 0o666)
    before = state(open_file)
    plant(open_file, shared / "jobs.lock")
    with pytest.raises(racefree.UnsafePathError, match="hard links"):
        racefree.FileLock(shared / "jobs.lock", mode=0o600, timeout=5).acquire()
    with racefree.FileLock(shared / "jobs.lock", timeout=5):
        pass
    assert state(open_file) == before
