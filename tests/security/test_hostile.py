"""Another local user attacks racefree running as root, in shared directories.

The attacker runs as ``nobody`` (``helpers.hostile``); racefree runs here, as
root. Each test first asserts that its attack is in place (the link planted and
owned by nobody, the file pre-created, the FIFO made), then that racefree
refused with the exact error (or stayed safe), and that the victim is byte for
byte unchanged, with its owner and mode. The cases are numbered as in
``docs/security.md``. ``test_teeth.py`` runs this module with the rule switched
off (``RACEFREE_TEST_RULE_OFF=1``, see ``conftest.py``) and requires every test
here to fail then.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hostile import (
    NOBODY,
    attacker,
    attacker_process,
    bounded,
    is_link,
    owner,
    shared_dir,
)
from helpers.testkit import reap

import racefree
from racefree import _fs
from racefree.check.checker import check_path
from racefree.cli import main

SHARED = ["tmp", "group-sticky"]
PLANT_LINK = "import os, sys; os.symlink(sys.argv[1], sys.argv[2])"
PRECREATE = (
    "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666);"
    " os.write(fd, sys.argv[2].encode()); os.close(fd); os.chmod(sys.argv[1], 0o666)"
)
MKFIFO = "import os, sys; os.mkfifo(sys.argv[1], 0o666)"


@dataclasses.dataclass(frozen=True)
class Snap:
    """Everything about a file that an attack could change."""

    data: bytes
    uid: int
    gid: int
    mode: int
    ino: int


def snap(path: Path) -> Snap:
    st = os.lstat(path)
    return Snap(path.read_bytes(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_ino)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file only root may write, outside the shared directory: what an attack aims at."""
    path = tmp_path / "victim"
    path.write_bytes(b"root's own data\n" * 256)
    os.chmod(path, 0o600)
    return path


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A sticky directory others may write: root's /tmp-like 1777, or a group's 3775."""
    with shared_dir(request.param) as d:
        yield d


def plant_link(link: Path, target: Path) -> None:
    attacker(PLANT_LINK, str(target), str(link))
    assert is_link(link) and owner(link) == NOBODY  # the attack is in place
    assert os.readlink(link) == str(target)


# -- case 1: atomic_write and JsonFile follow a link another user planted ----------------

def test_case1_atomic_write_refuses_a_planted_link(shared: Path, victim: Path) -> None:
    """Case 1: a link nobody planted in a shared directory: atomic_write refuses it
    (UnsafePathError), the victim keeps its bytes, owner and mode; the link stays."""
    before = snap(victim)
    link = shared / "config.json"
    plant_link(link, victim)
    with pytest.raises(racefree.UnsafePathError, match="refusing to follow a symbolic link"):
        racefree.atomic_write(link, b"root's new data")
    with pytest.raises(racefree.UnsafePathError), racefree.atomic_open(link, "wb") as f:
        f.write(b"root's new data")
    assert snap(victim) == before
    assert is_link(link) and owner(link) == NOBODY
    assert sorted(os.listdir(victim.parent)) == ["victim"]  # no temp beside the victim


def test_case1_jsonfile_refuses_a_planted_link(shared: Path, victim: Path) -> None:
    """Case 1: JsonFile through a planted link: refused before any lock file is created next
    to the target; the victim is unchanged."""
    before = snap(victim)
    link = shared / "settings.json"
    plant_link(link, victim)
    with pytest.raises(racefree.UnsafePathError):
        racefree.JsonFile(link, default={}).write({"root": True})
    assert snap(victim) == before
    assert sorted(os.listdir(victim.parent)) == ["victim"]  # no victim.lock
    assert sorted(os.listdir(shared)) == ["settings.json"]


def test_case1_planted_directory_link_is_refused(shared: Path, tmp_path: Path) -> None:
    """Case 1 (any component): a planted link as a directory on the way is refused; nothing
    is created in the directory it points to."""
    target = tmp_path / "etc"
    target.mkdir()
    (target / "passwd").write_bytes(b"root:x:0:0\n")
    before = snap(target / "passwd")
    plant_link(shared / "app", target)
    with pytest.raises(racefree.UnsafePathError):
        racefree.atomic_write(shared / "app" / "passwd", b"owned\n")
    with pytest.raises(racefree.UnsafePathError):
        racefree.JsonFile(shared / "app" / "new.json").write(1)
    with pytest.raises(racefree.UnsafePathError):
        racefree.FileLock(shared / "app" / "x.lock").acquire(timeout=1)
    with pytest.raises(racefree.UnsafePathError):
        racefree.LockFile(shared / "app" / "x.lock").acquire(timeout=1)
    assert snap(target / "passwd") == before
    assert sorted(os.listdir(target)) == ["passwd"]


# -- case 2: check --repair truncates through a swapped path ----------------------------

def make_torn_log(path: Path) -> bytes:
    """A log of three records and an incomplete fourth (a crash mid-append); its good bytes."""
    with racefree.AppendLog(path) as log:
        for i in range(3):
            log.append({"i": i})
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b"15 0000")
    return good


class SwapsBeforeTheCut(_fs.FileSystem):
    """The attacker's swap, at the one call between the check and the cut: the first
    open of the log for writing finds a link to the victim in its place."""

    def __init__(self, log: Path, victim: Path) -> None:
        self.log, self.victim, self.swapped = log, victim, False

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        if path == str(self.log) and flags & (os.O_WRONLY | os.O_RDWR) and not self.swapped:
            self.swapped = True
            aside = self.log.with_name("aside")
            os.rename(self.log, aside)
            os.symlink(self.victim, self.log)
        return super().open(path, flags, mode)


def test_case2_repair_never_cuts_a_file_swapped_in(tmp_path: Path, victim: Path) -> None:
    """Case 2, deterministic: the log is swapped for a link to the victim exactly between
    the check and the cut (through the seam): the repair refuses the link; the victim is
    unchanged."""
    before = snap(victim)
    log = tmp_path / "app.log"
    make_torn_log(log)
    fs = SwapsBeforeTheCut(log, victim)
    with _fs.use(fs), pytest.raises(racefree.UnsafePathError, match="symbolic link"):
        check_path(log, repair=True)
    assert fs.swapped
    assert snap(victim) == before


SWAPPER = r"""
import os, select, sys
log, saved, victim = sys.argv[1:]
tmp = log + ".swap"
print("ready", flush=True)
n = 0
while True:
    if n % 32 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break
    os.symlink(victim, tmp)
    os.rename(tmp, log)          # the log is now a link to the victim
    os.link(saved, tmp)
    os.rename(tmp, log)          # and the log again
    n += 1
print(n, flush=True)
"""


def test_case2_repair_against_a_real_swapper(victim: Path) -> None:
    """Case 2, for real: nobody owns a torn log in a group directory and swaps it with a link
    to the victim as fast as it can, while root runs check --repair 1000 times. The victim is
    unchanged (before the fix the repair cut it about one round in two)."""
    before = snap(victim)
    rounds = int(os.environ.get("RACEFREE_TEST_SWAP_ROUNDS", "1000"))
    outcomes = {"repaired": 0, "refused": 0, "other": 0}
    with shared_dir("group") as d:
        log, saved = d / "app.log", d / "app.log.saved"
        good = make_torn_log(log)
        torn = log.read_bytes()
        (d / "app.log.lock").touch()
        os.link(log, saved)
        for p in (log, d / "app.log.lock"):
            os.chown(p, NOBODY, -1)
        proc = attacker_process(SWAPPER, str(log), str(saved), str(victim))
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "ready"
            for _ in range(rounds):
                if saved.read_bytes() == good:
                    with open(saved, "ab") as f:  # torn again, for the next repair
                        f.write(torn[len(good):])
                try:
                    found = check_path(log, repair=True)
                    outcomes["repaired" if any(f.repaired for f in found) else "other"] += 1
                except (OSError, racefree.RacefreeError):
                    # A link at the name when it is opened (ELOOP, UnsafePathError), or
                    # the victim's bytes read as a log (FormatError): refused, nothing cut.
                    outcomes["refused"] += 1
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            swaps = int(proc.stdout.readline())
        finally:
            reap([proc])
    assert swaps > rounds // 10, (swaps, outcomes)  # the attack ran along
    assert sum(outcomes.values()) == rounds
    assert snap(victim) == before


def test_case2_repair_of_another_users_log_in_a_sticky_directory_is_refused(
    shared: Path,
) -> None:
    """Case 2 (sticky): the log and its lock are nobody's, in a shared directory: the repair
    does not use their lock file (UnsafePathError) and cuts nothing."""
    log = shared / "app.log"
    make_torn_log(log)
    (shared / "app.log.lock").touch()
    for p in (log, shared / "app.log.lock"):
        os.chown(p, NOBODY, -1)
    before = snap(log)
    with pytest.raises(racefree.UnsafePathError):
        check_path(log, repair=True)
    assert snap(log) == before


# -- case 3: the owner and mode of another user's file are adopted ------------------------

def test_case3_precreated_file_is_never_adopted(shared: Path) -> None:
    """Case 3: nobody pre-creates the file (mode 0666) root is about to write: atomic_write
    and JsonFile refuse (a rename would get past protected_regular); the file still holds
    nobody's bytes and owner, and none of root's data."""
    path = shared / "state.json"
    attacker(PRECREATE, str(path), '{"theirs": 1}')
    assert owner(path) == NOBODY and stat.S_IMODE(os.lstat(path).st_mode) == 0o666
    before = snap(path)
    with pytest.raises(racefree.UnsafePathError, match="refusing to replace a regular file"):
        racefree.atomic_write(path, b'{"secret": "root"}')
    with pytest.raises(racefree.UnsafePathError):
        racefree.JsonFile(path).update(lambda d: {**d, "secret": "root"})
    assert snap(path) == before
    assert [n for n in os.listdir(shared) if n.endswith(".rftmp")] == []


def test_case3_precreated_lock_sidecar_is_refused(shared: Path) -> None:
    """Case 3 (racefree's own files): a lock sidecar nobody pre-created (to hold it forever,
    or to get root's lock file) is refused at once, not waited on or adopted."""
    lock = shared / "state.json.lock"
    attacker(PRECREATE, str(lock), "")
    assert owner(lock) == NOBODY
    with pytest.raises(racefree.UnsafePathError, match="refusing to use"):
        racefree.JsonFile(shared / "state.json").write({"a": 1})
    with pytest.raises(racefree.UnsafePathError):
        racefree.FileLock(lock).acquire(timeout=5)
    assert not (shared / "state.json").exists()
    assert owner(lock) == NOBODY and lock.read_bytes() == b""


# -- racefree's own files through a planted link (threat model T1) -----------------------

def test_t1_lock_files_never_open_a_planted_link(shared: Path, victim: Path) -> None:
    """T1: a link planted at a FileLock's path, a JsonFile's sidecar, a LockFile's path or its
    token: refused at once; the victim is neither created, truncated nor locked."""
    before = snap(victim)
    for name in ("plain.lock", "data.json.lock", "pid.lock", "tok.lock.token"):
        plant_link(shared / name, victim)
    with pytest.raises(racefree.UnsafePathError):
        racefree.FileLock(shared / "plain.lock").acquire(timeout=1)
    with pytest.raises(racefree.UnsafePathError):
        racefree.JsonFile(shared / "data.json").write([1])
    with pytest.raises(racefree.UnsafePathError):
        racefree.LockFile(shared / "pid.lock").acquire(timeout=1)
    with pytest.raises(racefree.UnsafePathError):
        racefree.LockFile(shared / "tok.lock").acquire(timeout=1)
    assert snap(victim) == before
    assert not (shared / "data.json").exists()


def test_t1_sweep_never_removes_another_users_file(shared: Path) -> None:
    """T1 (sweep): a file nobody made under a racefree temp name of a dead writer, in a
    shared directory, is not racefree's: sweep leaves it; root's own dead temp goes."""
    theirs = shared / ".x.json.99999999.deadbeef.rftmp"
    mine = shared / ".y.json.99999998.deadbeef.rftmp"
    attacker(PRECREATE, str(theirs), "theirs")
    mine.write_bytes(b"mine")
    assert owner(theirs) == NOBODY and owner(mine) == 0
    before = snap(theirs)
    assert racefree.sweep(shared) == [str(mine)]
    assert snap(theirs) == before


# -- case 8: special files at racefree's own names ----------------------------------------

def test_case8_fifo_as_a_lock_file(shared: Path) -> None:
    """Case 8: a FIFO nobody made at a FileLock's path: acquire(timeout=1) raises
    UnsafePathError at once instead of hanging in open(2)."""
    fifo = shared / "jobs.lock"
    attacker(MKFIFO, str(fifo))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and owner(fifo) == NOBODY
    lock = racefree.FileLock(fifo)
    err = bounded(lambda: lock.acquire(timeout=1), fifo)
    assert isinstance(err, racefree.UnsafePathError)
    assert "FIFO" in str(err) or "refusing" in str(err)


@pytest.mark.parametrize("where", ["lock", "token"])
@pytest.mark.parametrize("kind", ["fifo", "zero device"])
def test_case8_special_files_as_lockfile_record_or_token(tmp_path: Path, where: str,
                                                         kind: str) -> None:
    """Case 8: a FIFO or the zero device as a LockFile's lock file or token file:
    acquire(timeout=1) raises UnsafePathError at once (no hang, no endless read), and the
    special file is left where it is."""
    lock_path = tmp_path / "app.lock"
    special = lock_path if where == "lock" else tmp_path / "app.lock.token"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        os.mknod(special, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    before = os.lstat(special)
    lock = racefree.LockFile(lock_path, stale_after=0.05)
    err = bounded(lambda: lock.acquire(timeout=1), special)
    assert isinstance(err, racefree.UnsafePathError), repr(err)
    after = os.lstat(special)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert sorted(os.listdir(tmp_path)) == [special.name]


# -- case 9: a LockFile on a data file deletes it --------------------------------------

@pytest.mark.parametrize("size", [0, 1, 200, 4096])
def test_case9_lockfile_never_deletes_a_data_file(tmp_path: Path, size: int) -> None:
    """Case 9: LockFile(path) on a data file of 4096 bytes or less: FormatError, and the file
    is still there, byte for byte, after stale_after has passed many times over."""
    path = tmp_path / "data.csv"
    path.write_bytes((b"a,b\n" * 1024)[:size])
    before = snap(path)
    lock = racefree.LockFile(path, stale_after=0.01)
    for _ in range(3):
        err = bounded(lambda: lock.acquire(timeout=0.2), path)
        assert isinstance(err, racefree.FormatError), repr(err)
        threading.Event().wait(0.02)  # let stale_after pass: age must not matter
    assert snap(path) == before
    assert sorted(os.listdir(tmp_path)) == ["data.csv"]


# -- the command line and torture take the same rule -------------------------------------

def test_cli_check_and_torture_refuse_a_planted_link(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``racefree check`` and ``racefree torture`` given a path through a planted link: one
    line naming the refusal, exit 1, nothing created in the link's target."""
    target = tmp_path / "work"
    target.mkdir()
    plant_link(shared / "dir", target)
    for argv in (["check", str(shared / "dir")],
                 ["torture", str(shared / "dir"), "--seconds", "1"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 1, err
        assert err.count("\n") == 1 and "refusing to follow" in err
    assert os.listdir(target) == []
