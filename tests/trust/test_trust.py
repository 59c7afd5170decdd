"""The trust rule (``racefree._trust``): what it trusts, how it resolves paths, how it opens.

The rule: an entry of a shared directory (sticky, writable by group or others)
is trusted only if it belongs to the caller or to the directory's owner;
entries of any other directory are trusted. Entries "of another user" are made
here by ``lchown`` as root (no second process needed); the hostile-user suite in
``tests/security`` has the attacks run by ``nobody`` itself.
"""

from __future__ import annotations

import errno
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hostile import NOBODY, need_root, shared_dir

import racefree
from racefree import _fs, _trust


@pytest.fixture
def tmpdir1777() -> Iterator[Path]:
    """Root's sticky, world-writable directory (like /tmp)."""
    with shared_dir("tmp") as d:
        yield d


def plant_link(path: Path, target: str | Path, uid: int = NOBODY) -> Path:
    path.symlink_to(target)
    os.lchown(path, uid, -1)
    return path


# -- shared() and trusted() -------------------------------------------------------------

@pytest.mark.parametrize(
    ("mode", "expected"),
    [(0o1777, True), (0o1770, True), (0o1707, True), (0o3775, True), (0o1755, False),
     (0o0777, False), (0o2775, False), (0o0755, False)],
)
def test_shared_is_sticky_and_writable_by_others(tmp_path: Path, mode: int,
                                                 expected: bool) -> None:
    """Shared: sticky and writable by the group or others; nothing else."""
    d = tmp_path / "d"
    d.mkdir()
    os.chmod(d, mode)
    assert _trust.shared(os.lstat(d)) is expected


def test_trusted_entries_of_a_shared_directory() -> None:
    """In a shared directory: the caller's and the directory owner's entries only."""
    need_root()
    with shared_dir("tmp") as d:
        mine = d / "mine"
        mine.touch()
        theirs = d / "theirs"
        theirs.touch()
        os.chown(theirs, NOBODY, -1)
        dir_st = os.lstat(d)
        assert _trust.trusted(os.lstat(mine), dir_st) is True
        assert _trust.trusted(os.lstat(theirs), dir_st) is False
        # The directory's owner is trusted too: give the directory to nobody.
        os.chown(d, NOBODY, -1)
        assert _trust.trusted(os.lstat(theirs), os.lstat(d)) is True


def test_every_entry_of_a_non_shared_directory_is_trusted(tmp_path: Path) -> None:
    """Without the sticky bit everyone who may write the directory may replace any entry
    anyway: the rule trusts them all (group-writable project directories)."""
    need_root()
    with shared_dir("group") as d:
        theirs = d / "theirs"
        theirs.touch()
        os.chown(theirs, NOBODY, -1)
        assert _trust.trusted(os.lstat(theirs), os.lstat(d)) is True


def test_check_message_names_the_path_owner_and_reason() -> None:
    """The refusal is an UnsafePathError (a PermissionError) naming the path and why."""
    need_root()
    with shared_dir("tmp") as d:
        link = plant_link(d / "x", "/etc/passwd")
        with pytest.raises(racefree.UnsafePathError) as info:
            _trust.check(str(link), os.lstat(link), os.lstat(d), "follow")
    err = info.value
    assert isinstance(err, PermissionError) and isinstance(err, racefree.RacefreeError)
    assert err.path == str(link) and err.filename == str(link) and err.errno == errno.EACCES
    assert str(err) == (
        f"{link}: refusing to follow a symbolic link owned by uid {NOBODY} in a shared"
        " directory (sticky, writable by others) that uid 0 owns: only the caller's own"
        " entries and the directory owner's are trusted there"
    )
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is racefree.UnsafePathError and str(copy) == str(err)


def test_describe_names_every_kind(tmp_path: Path) -> None:
    """The kind of an entry, for messages."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").touch()
    (tmp_path / "link").symlink_to("file")
    got = {n: _trust.describe(os.lstat(tmp_path / n)) for n in ("fifo", "file", "link")}
    assert got == {"fifo": "a FIFO", "file": "a regular file", "link": "a symbolic link"}
    assert _trust.describe(os.lstat(tmp_path)) == "a directory"
    if os.geteuid() == 0:
        os.mknod(tmp_path / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
        assert _trust.describe(os.lstat(tmp_path / "zero")) == "a character device"


# -- resolve ------------------------------------------------------------------------------

def test_resolve_follows_like_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative and absolute links, links to links, "link/.." (the target's parent, not the
    spelling's), relative paths, and the last component: missing, a file, or a link kept."""
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "f").write_bytes(b"x")
    (tmp_path / "abs").symlink_to(real / "sub")
    (tmp_path / "rel").symlink_to("real/sub")
    (tmp_path / "chain").symlink_to("rel")
    (tmp_path / "up").symlink_to("real/sub/..")
    (real / "sub" / "flink").symlink_to("f")
    sub = str(real / "sub")
    for spelled in ("abs/f", "rel/f", "chain/f", "rel/../sub/f", "up/sub/f", "rel/flink"):
        got = _trust.resolve(tmp_path / spelled)
        assert got.path == sub + "/f", spelled
        assert got.st is not None and got.st.st_ino == os.lstat(real / "sub" / "f").st_ino
        assert got.dir_st.st_ino == os.lstat(sub).st_ino
    # "abs/.." is real, not tmp_path (os.path.abspath would say tmp_path).
    assert _trust.resolve(tmp_path / "abs" / ".." / "sub" / "f").path == sub + "/f"
    missing = _trust.resolve(tmp_path / "rel" / "new")
    assert missing.path == sub + "/new" and missing.st is None
    kept = _trust.resolve(tmp_path / "rel" / "flink", follow_last=False)
    assert kept.path == sub + "/flink" and kept.st is not None and stat.S_ISLNK(kept.st.st_mode)
    monkeypatch.chdir(tmp_path)
    assert _trust.resolve("chain/f").path == sub + "/f"
    assert _trust.resolve(tmp_path / "abs").path == sub  # a directory: held by its parent
    assert _trust.resolve("/").path == "/"


def test_resolve_errors(tmp_path: Path) -> None:
    """Missing directories, files used as directories, loops and empty paths: the kernel's
    errors, with the path."""
    (tmp_path / "file").touch()
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(FileNotFoundError):
        _trust.resolve(tmp_path / "nope" / "x")
    with pytest.raises(NotADirectoryError):
        _trust.resolve(tmp_path / "file" / "x")
    with pytest.raises(NotADirectoryError):
        _trust.resolve(str(tmp_path / "file") + "/")
    with pytest.raises(OSError) as info:
        _trust.resolve(tmp_path / "loop")
    assert info.value.errno == errno.ELOOP
    with pytest.raises(FileNotFoundError):
        _trust.resolve("")


def test_resolve_refuses_an_untrusted_link_anywhere_on_the_path(tmpdir1777: Path) -> None:
    """A link another user planted in a shared directory is refused as a directory on the
    way and as the last component; the caller's own link, and the directory owner's, are
    followed; follow_last=False returns a planted last link without following it."""
    target = tmpdir1777 / "t"
    target.mkdir()
    (target / "f").touch()
    plant_link(tmpdir1777 / "evil", target)
    plant_link(tmpdir1777 / "evilf", target / "f")
    plant_link(tmpdir1777 / "mine", target, uid=0)
    for spelled in ("evil/f", "evilf"):
        with pytest.raises(racefree.UnsafePathError, match="refusing to follow"):
            _trust.resolve(tmpdir1777 / spelled)
    assert _trust.resolve(tmpdir1777 / "mine" / "f").path == str(target / "f")
    kept = _trust.resolve(tmpdir1777 / "evilf", follow_last=False)
    assert kept.st is not None and kept.st.st_uid == NOBODY
    # A link planted in a non-shared directory of a shared one is followed: that
    # directory's owner (here: root) could replace any entry of it anyway.
    (target / "inner").symlink_to("f")
    assert _trust.resolve(tmpdir1777 / "mine" / "inner").path == str(target / "f")


def test_resolve_with_the_rule_off_follows_everything(tmpdir1777: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``enforce = False`` (tests only) is the old behaviour: every link is followed."""
    (tmpdir1777 / "f").touch()
    plant_link(tmpdir1777 / "evil", tmpdir1777 / "f")
    monkeypatch.setattr(_trust, "enforce", False)
    assert _trust.resolve(tmpdir1777 / "evil").path == str(tmpdir1777 / "f")


# -- open_own ------------------------------------------------------------------------------

def test_open_own_creates_with_o_excl_and_reopens(tmp_path: Path) -> None:
    """Missing: created (O_CREAT|O_EXCL, mode & ~umask); present: opened; both regular."""
    path = tmp_path / "own.lock"
    fd, st, created = _trust.open_own(path, os.O_RDONLY, 0o640)
    os.close(fd)
    assert created is True and stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 & ~_umask()
    fd, st2, created = _trust.open_own(path, os.O_RDWR)
    os.close(fd)
    assert created is False and st2.st_ino == st.st_ino
    with pytest.raises(FileNotFoundError):
        _trust.open_own(tmp_path / "absent", os.O_RDONLY, create=False)
    assert sorted(os.listdir(tmp_path)) == ["own.lock"]
    with pytest.raises(ValueError, match="O_CREAT"):
        _trust.open_own(path, os.O_RDONLY | os.O_TRUNC)


@pytest.mark.parametrize("kind", ["link", "dangling", "fifo", "dir", "device", "socket"])
def test_open_own_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """A link (even the caller's own, even dangling), a FIFO (without blocking), a device or a
    socket: UnsafePathError at once (a directory: IsADirectoryError); nothing is created or
    changed."""
    path = tmp_path / "x"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    if kind == "link":
        path.symlink_to(victim)
    elif kind == "dangling":
        path.symlink_to(tmp_path / "made")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a device needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero
    else:
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    before = sorted(os.listdir(tmp_path))
    expected = IsADirectoryError if kind == "dir" else racefree.UnsafePathError
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        with pytest.raises(expected):
            _trust.open_own(path, flags)
    assert sorted(os.listdir(tmp_path)) == before
    assert victim.read_bytes() == b"keep"


def test_open_own_refuses_another_users_file_in_a_shared_directory(
    tmpdir1777: Path, tmp_path: Path
) -> None:
    """Another user's existing file in a shared directory is refused; the directory owner's
    (a sticky directory of theirs, itself in a directory only root writes) is used."""
    theirs = tmpdir1777 / "theirs.lock"
    theirs.touch()
    os.chown(theirs, NOBODY, -1)
    with pytest.raises(racefree.UnsafePathError, match="refusing to use a regular file"):
        _trust.open_own(theirs, os.O_RDONLY)
    their_dir = tmp_path / "theirs"
    their_dir.mkdir()
    os.chmod(their_dir, 0o1777)
    os.chown(their_dir, NOBODY, -1)
    owners = their_dir / "x.lock"
    owners.touch()
    os.chown(owners, NOBODY, -1)  # the directory owner's file
    fd, _st, created = _trust.open_own(owners, os.O_RDONLY)
    os.close(fd)
    assert created is False


def test_open_own_resolves_its_directory_under_the_rule(tmpdir1777: Path) -> None:
    """The directory part is resolved under the rule: a planted directory link is refused and
    nothing is created in its target."""
    target = tmpdir1777 / "target"
    target.mkdir()
    plant_link(tmpdir1777 / "d", target)
    with pytest.raises(racefree.UnsafePathError):
        _trust.open_own(tmpdir1777 / "d" / "x.lock", os.O_RDONLY)
    assert os.listdir(target) == []


def test_open_own_takes_a_file_created_in_between(tmp_path: Path) -> None:
    """"Missing", then someone creates it before our O_EXCL create: we open and check what
    they made, and report it as not created by us."""
    path = tmp_path / "x.lock"

    class CreatesFirst(_fs.FileSystem):
        raced = False

        def open(self, p: str, flags: int, mode: int = 0o666) -> int:
            if p == str(path) and flags & os.O_EXCL and not self.raced:
                self.raced = True
                path.write_bytes(b"theirs")
            return super().open(p, flags, mode)

    fs = CreatesFirst()
    with _fs.use(fs):
        fd, st, created = _trust.open_own(path, os.O_RDONLY)
    os.close(fd)
    assert fs.raced and created is False and st.st_size == 6


# -- open_followed ---------------------------------------------------------------------

def test_open_followed_reads_through_trusted_links_only(tmpdir1777: Path) -> None:
    """A user's own link is followed; a planted one, a FIFO (without blocking) and a device
    are refused; a directory is IsADirectoryError; a missing file FileNotFoundError."""
    data = tmpdir1777 / "data"
    data.write_bytes(b"abc")
    plant_link(tmpdir1777 / "mine", data, uid=0)
    plant_link(tmpdir1777 / "evil", data)
    fd, st = _trust.open_followed(tmpdir1777 / "mine", os.O_RDONLY)
    assert os.read(fd, 10) == b"abc" and stat.S_ISREG(st.st_mode)
    os.close(fd)
    with pytest.raises(racefree.UnsafePathError):
        _trust.open_followed(tmpdir1777 / "evil", os.O_RDONLY)
    os.mkfifo(tmpdir1777 / "fifo")
    with pytest.raises(racefree.UnsafePathError, match="FIFO"):
        _trust.open_followed(tmpdir1777 / "fifo", os.O_RDONLY)
    with pytest.raises(racefree.UnsafePathError, match="FIFO"):
        _trust.open_followed(tmpdir1777 / "fifo", os.O_WRONLY)
    with pytest.raises(IsADirectoryError):
        _trust.open_followed(tmpdir1777, os.O_RDONLY)
    with pytest.raises(FileNotFoundError):
        _trust.open_followed(tmpdir1777 / "absent", os.O_RDONLY)
    with pytest.raises(ValueError, match="O_CREAT"):
        _trust.open_followed(data, os.O_RDONLY | os.O_CREAT)


def test_open_followed_resolves_again_when_a_link_is_swapped_in(tmp_path: Path) -> None:
    """A link swapped in between the resolution and the open is not followed blindly: the
    path is resolved again under the rule (here a trusted link: followed, to its target)."""
    path = tmp_path / "f"
    path.write_bytes(b"first")
    other = tmp_path / "other"
    other.write_bytes(b"second")

    class SwapsBeforeOpen(_fs.FileSystem):
        swaps = 0

        def open(self, p: str, flags: int, mode: int = 0o666) -> int:
            if p == str(path) and not self.swaps:
                self.swaps += 1
                path.unlink()
                path.symlink_to(other)
            return super().open(p, flags, mode)

    fs = SwapsBeforeOpen()
    with _fs.use(fs):
        fd, _st = _trust.open_followed(path, os.O_RDONLY)
    assert fs.swaps == 1 and os.read(fd, 10) == b"second"
    os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resolve_looks_again_when_a_link_is_swapped_for_a_file(tmp_path: Path) -> None:
    """A link replaced by a file between its lstat and its readlink (EINVAL) is looked at
    again, not reported as an error (found by the real swapper of tests/security)."""
    real = tmp_path / "real"
    real.write_bytes(b"x")
    path = tmp_path / "f"
    path.symlink_to(real)

    class SwapsBeforeReadlink(_fs.FileSystem):
        swaps = 0

        def readlink(self, p: str) -> str:
            if p == str(path) and not self.swaps:
                self.swaps += 1
                path.unlink()
                path.write_bytes(b"now a file")
            return super().readlink(p)

    fs = SwapsBeforeReadlink()
    with _fs.use(fs):
        got = _trust.resolve(path)
    assert fs.swaps == 1 and got.path == str(path)
    assert got.st is not None and stat.S_ISREG(got.st.st_mode)
