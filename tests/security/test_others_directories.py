"""Cases 14 and 15: directories another user owns, or made first in a shared directory.

The rule (``racefree._trust``, docs/security.md): racefree does nothing of its own
initiative in a directory another user could change under it. ``racefree check``
does not descend into a directory another user owns, a repair writes only where
nobody but the caller or root can change anything (a *held* directory), and nothing
of racefree's own (lock files, lock-file records, stores, the directories
``make_parents`` creates) is made or used below a directory another user made in a
shared directory. racefree runs as root, the attacker as ``nobody``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import hostile

from racefree import AppendLog, FileLock, JsonFile, LockFile, Store, UnsafePathError, _fs
from racefree._aside import copy_aside
from racefree.check.checker import check_path
from racefree.log.frame import encode
from racefree.log.scan import header

WRITE_FILE = "import sys; open(sys.argv[1], 'wb').write(bytes.fromhex(sys.argv[2]))"


def _damaged_log() -> bytes:
    """A log with a flipped bit in its middle record: a salvage would copy it aside."""
    frames = [encode(b'{"i":%d}' % i) for i in range(3)]
    bad = bytearray(frames[1])
    bad[-3] ^= 1
    return header(0, 0) + frames[0] + bytes(bad) + frames[2]


@pytest.fixture
def victim_dir(tmp_path: Path) -> Path:
    """A root-owned directory (think /etc/profile.d): nothing may appear in it."""
    d = tmp_path / "victimdir"
    d.mkdir()
    (d / "secret").write_bytes(b"VICTIM\n")
    return d


def _plant_damaged_log(top: Path) -> Path:
    """nobody's directory ``att`` (0777, as if made by them, or for them by an admin) with
    a damaged log ``evil.sh`` of theirs."""
    att = top / "att"
    att.mkdir()
    os.chmod(att, 0o777)
    os.chown(att, hostile.NOBODY, -1)
    hostile.attacker(WRITE_FILE, str(att / "evil.sh"), _damaged_log().hex())
    assert hostile.owner(att) == hostile.NOBODY and hostile.owner(att / "evil.sh") == hostile.NOBODY
    return att


@pytest.fixture(params=["sticky", "private"])
def top(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Root's directory that root checks: sticky and world-writable (/tmp, a shared
    tree), or root's own 0755 one holding another user's directory (/home)."""
    with hostile.shared_dir("tmp") as d:
        if request.param == "private":
            os.chmod(d, 0o755)
        yield d


class SwapsNewDirectory(_fs.FileSystem):
    """The attacker's swap at the exact call: whatever directory racefree makes, it is
    renamed away at once and a link to the victim directory put in its place."""

    def __init__(self, victim: Path) -> None:
        self.victim, self.made = victim, 0

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        super().mkdir(path, mode)
        self.made += 1
        os.rename(path, path + ".away")
        os.symlink(self.victim, path)


def test_case14_check_repair_never_descends_into_another_users_directory(
    top: Path, victim_dir: Path
) -> None:
    """root runs check --repair over a tree holding nobody's directory with a damaged
    log: the directory is reported as skipped (with the reason) and never entered:
    nothing is made or written in it or anywhere else (before: the salvage made
    damaged-<time>/ there, which nobody could swap for a link to any directory)."""
    att = _plant_damaged_log(top)
    before = (att / "evil.sh").read_bytes()
    fs = SwapsNewDirectory(victim_dir)
    with _fs.use(fs):
        found = check_path(top, repair=True)
    assert [(f.path, f.kind, f.ok) for f in found] == [(str(att), "skipped", True)]
    assert "owned by uid 65534" in found[0].detail
    assert fs.made == 0
    assert sorted(os.listdir(att)) == ["evil.sh"] and (att / "evil.sh").read_bytes() == before
    assert sorted(os.listdir(victim_dir)) == ["secret"]


def test_case14_a_repair_named_in_another_users_directory_is_refused(
    top: Path, victim_dir: Path
) -> None:
    """root names nobody's damaged log itself: it is checked (DAMAGED), but the repair is
    refused (the directory is nobody's: they could change it under racefree); nothing is
    made, copied or written, even with the attacker swapping every new directory."""
    att = _plant_damaged_log(top)
    before = (att / "evil.sh").read_bytes()
    fs = SwapsNewDirectory(victim_dir)
    with _fs.use(fs):
        [found] = check_path(att / "evil.sh", repair=True)
    assert (found.kind, found.ok, found.repaired) == ("log", False, False)
    if top.stat().st_mode & 0o1000:
        # In a shared directory, nobody's directory is not trusted for racefree's own
        # files at all (the log's snapshot and lock): the log cannot even be used.
        assert found.detail.startswith(f"cannot be used: {att}: refusing to use a directory"
                                       " owned by uid 65534 in a shared directory")
    else:
        assert "not repaired: refusing to repair in" in found.detail
        assert f"the directory {att} is owned by uid 65534" in found.detail
    assert fs.made == 0
    assert sorted(os.listdir(att)) == ["evil.sh"] and (att / "evil.sh").read_bytes() == before
    assert sorted(os.listdir(victim_dir)) == ["secret"]


def test_case14_repairs_in_a_group_directory_are_refused(tmp_path: Path) -> None:
    """A group directory without the sticky bit: its members may rename any entry, so a
    repair there is refused (a damaged log, a damaged store), and nothing changes."""
    with hostile.shared_dir("group") as d:
        with AppendLog(d / "a.log") as log:
            for i in range(3):
                log.append({"i": i})
        data = bytearray((d / "a.log").read_bytes())
        data[data.index(b'{"i":1}') + 5] ^= 1
        (d / "a.log").write_bytes(bytes(data))
        with Store(d / "s") as s:
            s.put("a", {"n": 1})
        seg = d / "s" / "seg-00000001.rfs"
        raw = bytearray(seg.read_bytes())
        raw[40] ^= 0xFF
        seg.write_bytes(bytes(raw))
        before = {p: p.read_bytes() for p in (d / "a.log", seg)}
        found = {f.path: f for f in check_path(d, repair=True)}
        for path in (d / "a.log", d / "s"):
            f = found[str(path)]
            assert (f.ok, f.repaired) == (False, False), f
            assert "writable by others without the sticky bit" in f.detail, f
        assert {p: p.read_bytes() for p in before} == before
        assert not [n for n in os.listdir(d) if n.startswith("damaged-")]
        assert not [n for n in os.listdir(d / "s") if n.startswith("damaged-")]


def test_case14_copy_aside_never_copies_into_a_directory_swapped_in(
    tmp_path: Path, victim_dir: Path
) -> None:
    """Defence in depth: even where only root could swap it (a held directory), the copy
    aside looks at the directory it made before it copies into it: swapped for a link,
    it refuses; nothing lands in the link's target."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.log").write_bytes(b"damaged\n")
    fs = SwapsNewDirectory(victim_dir)
    with _fs.use(fs), pytest.raises(UnsafePathError, match="replaced right after"):
        copy_aside(str(d), ["x.log"])
    assert fs.made == 1
    assert sorted(os.listdir(victim_dir)) == ["secret"]


PLANT_DIR_LINK = r"""
import os, sys
d, target = sys.argv[1:]
os.mkdir(d, 0o777)
os.chmod(d, 0o777)
os.symlink(target, os.path.join(d, "locks"))
"""


def test_case15_racefree_files_are_never_made_below_another_users_directory(
    victim_dir: Path,
) -> None:
    """nobody makes app/ in the shared directory (first, as if racefree were about to)
    with a link app/locks -> a root directory: a FileLock, a LockFile, a store, a
    JsonFile's lock and an AppendLog's lock there are all refused; nothing appears in
    the root directory (before: every one of them was created there)."""
    with hostile.shared_dir("tmp") as shared:
        hostile.attacker(PLANT_DIR_LINK, str(shared / "app"), str(victim_dir))
        base = shared / "app" / "locks"
        assert hostile.owner(shared / "app") == hostile.NOBODY and hostile.is_link(base)
        with pytest.raises(UnsafePathError):
            FileLock(base / "x.lock").acquire(timeout=1)
        with pytest.raises(UnsafePathError):
            LockFile(base / "y.lock").acquire(timeout=1)
        with pytest.raises(UnsafePathError):
            Store(base / "st")
        with pytest.raises(UnsafePathError):
            JsonFile(base / "c.json").write({"a": 1})
        with pytest.raises(UnsafePathError), AppendLog(base / "a.log") as log:
            log.append(1)
    assert sorted(os.listdir(victim_dir)) == ["secret"]


def test_case15_torture_never_works_below_another_users_directory(victim_dir: Path) -> None:
    """``racefree torture`` in a directory nobody made in the shared directory: refused at
    once (one line, exit 1); nothing is made there (its files are racefree's own)."""
    from racefree.cli import main

    with hostile.shared_dir("tmp") as shared:
        hostile.attacker(PLANT_DIR_LINK, str(shared / "app"), str(victim_dir))
        assert main(["torture", str(shared / "app"), "--seconds", "1"]) == 1
        assert sorted(os.listdir(shared / "app")) == ["locks"]
    assert sorted(os.listdir(victim_dir)) == ["secret"]


class OtherUserMakesItFirst(_fs.FileSystem):
    """The race make_parents (or a store) loses: right before racefree's mkdir of
    ``name``, nobody makes it (mode 0777) with a link inside to the victim directory."""

    def __init__(self, name: str, victim: Path) -> None:
        self.name, self.victim, self.raced = name, victim, False

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        if os.path.basename(path) == self.name and not self.raced:
            self.raced = True
            os.mkdir(path)
            os.chmod(path, 0o777)
            os.symlink(self.victim, os.path.join(path, "sub"))
            os.lchown(os.path.join(path, "sub"), hostile.NOBODY, -1)
            os.chown(path, hostile.NOBODY, -1)
        super().mkdir(path, mode)


@pytest.mark.parametrize("what", ["FileLock", "LockFile", "Store"])
def test_case15_a_directory_another_user_made_first_is_never_adopted(
    victim_dir: Path, what: str
) -> None:
    """racefree is about to make a missing directory in the shared directory; nobody
    makes it in between (through the seam, at the exact call): racefree refuses it
    (UnsafePathError) instead of adopting it as its own, and makes nothing in it or
    through the link inside it."""
    with hostile.shared_dir("tmp") as shared:
        fs = OtherUserMakesItFirst("app", victim_dir)
        with _fs.use(fs), pytest.raises(UnsafePathError):
            if what == "FileLock":
                FileLock(shared / "app" / "sub" / "x.lock").acquire(timeout=1)
            elif what == "LockFile":
                LockFile(shared / "app" / "sub" / "y.lock").acquire(timeout=1)
            else:
                Store(shared / "app")
        assert fs.raced
        assert sorted(os.listdir(shared / "app")) == ["sub"]
    assert sorted(os.listdir(victim_dir)) == ["secret"]


def test_lockfile_names_its_files_from_the_resolved_path(tmp_path: Path) -> None:
    """A LockFile whose directory is missing at first: once make_parents made it, every
    file of the protocol is named from the path resolved under the rule (the record
    file too), not from the path as given, and nothing is left but the lock and token."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "lnk").symlink_to(real)
    lock = LockFile(tmp_path / "lnk" / "a" / "b" / "x.lock")  # two levels missing
    with lock.acquire(timeout=5):
        assert lock._where() == str(real / "a" / "b" / "x.lock")
        assert sorted(os.listdir(real / "a" / "b")) == ["x.lock", "x.lock.token"]
    assert sorted(os.listdir(real / "a" / "b")) == ["x.lock.token"]
