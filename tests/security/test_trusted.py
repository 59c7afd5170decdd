"""What the rule still allows: trusted users' links and files keep working.

The counterpart of ``test_hostile.py``: the caller's own links (a symlinked
dotfile), the directory owner's, and every member's in a group directory without
the sticky bit (they may replace any entry there anyway) are followed, and their
files are replaced keeping their owner and mode, as before the rule.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from helpers.hostile import NOBODY, attacker, is_link, need_root, owner, shared_dir

import racefree

PLANT_LINK = "import os, sys; os.symlink(sys.argv[1], sys.argv[2])"


def test_own_symlinked_dotfile_is_written_through(tmp_path: Path) -> None:
    """The caller's own link, even in a shared directory: written through, the link stays a
    link, the target keeps its mode; JsonFile and its lock follow it too."""
    need_root()
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "app.json"
    target.write_bytes(b"{}")
    os.chmod(target, 0o640)
    with shared_dir("tmp") as d:
        link = d / ".app.json"
        link.symlink_to(target)
        racefree.atomic_write(link, b'{"a": 1}')
        racefree.JsonFile(link).update(lambda doc: {**doc, "b": 2})
        assert is_link(link)
    assert target.read_bytes() == b'{\n  "a": 1,\n  "b": 2\n}\n'
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(os.listdir(dotfiles)) == ["app.json", "app.json.lock"]


def test_directory_owners_link_in_a_sticky_directory_is_followed(tmp_path: Path) -> None:
    """A link that belongs to the directory's owner is trusted in a sticky directory (as the
    kernel's protected_symlinks has it): followed."""
    need_root()
    target = tmp_path / "t.json"
    target.write_bytes(b"old")
    with shared_dir("tmp") as d:
        os.chown(d, NOBODY, -1)  # nobody's sticky, world-writable directory
        attacker(PLANT_LINK, str(target), str(d / "x.json"))
        assert owner(d / "x.json") == NOBODY == owner(d)
        racefree.atomic_write(d / "x.json", b"new")
    assert target.read_bytes() == b"new"


def test_group_members_are_trusted_in_a_group_directory(tmp_path: Path) -> None:
    """In a group directory without the sticky bit, a member's link is followed and a
    member's file is replaced keeping its owner (root keeps it, W4): every member may
    replace any entry of that directory anyway."""
    need_root()
    target = tmp_path / "shared-target"
    target.write_bytes(b"old")
    with shared_dir("group") as d:
        attacker(PLANT_LINK, str(target), str(d / "link.json"))
        attacker("import sys; open(sys.argv[1], 'w').write('theirs')", str(d / "member.json"))
        assert owner(d / "link.json") == NOBODY and owner(d / "member.json") == NOBODY
        racefree.atomic_write(d / "link.json", b"through")
        racefree.atomic_write(d / "member.json", b"replaced")
        assert (d / "member.json").read_bytes() == b"replaced"
        assert owner(d / "member.json") == NOBODY
        with racefree.FileLock(d / "member.json.lock"):
            pass
    assert target.read_bytes() == b"through"


def test_a_procfs_pipe_link_is_opened_only_to_that_pipe(tmp_path: Path) -> None:
    """/proc/PID/fd/N -> pipe:[ino] (what /dev/stdout is when output is piped) is opened
    through the kernel; its owner can point fd N elsewhere between the look and the open
    (at a file the caller could otherwise never reach). What was opened must be that pipe."""
    from racefree import _fs, _trust

    r, w = os.pipe()
    other = os.open(tmp_path / "elsewhere", os.O_RDWR | os.O_CREAT, 0o600)
    link = f"/proc/{os.getpid()}/fd/{w}"
    try:
        fd, st = _trust.open_followed(link, os.O_WRONLY | os.O_APPEND, special=True)
        os.close(fd)
        assert stat.S_ISFIFO(st.st_mode)

        class Repoints(_fs.FileSystem):
            def open(self, path: str, flags: int, mode: int = 0o777) -> int:
                if path == link:
                    os.dup2(other, w)  # the link now leads to a regular file
                return super().open(path, flags, mode)

        with _fs.use(Repoints()):
            try:
                fd, st = _trust.open_followed(link, os.O_WRONLY | os.O_APPEND, special=True)
            except racefree.UnsafePathError as exc:
                assert "changed while it was opened" in str(exc)
            else:
                os.close(fd)
                raise AssertionError(f"opened {stat.filemode(st.st_mode)} through the link")
    finally:
        for n in (r, w, other):
            os.close(n)
    assert (tmp_path / "elsewhere").read_bytes() == b""


def test_a_procfs_link_to_a_deleted_file_is_never_read_as_a_path(tmp_path: Path) -> None:
    """/proc/self/fd/N of a deleted file reads "<name> (deleted)": whoever may write that
    directory can put a link there under that name. The kernel follows the descriptor, not
    the text; so must racefree: the write goes to the deleted file, not the link's target."""
    from racefree import _trust

    victim = tmp_path / "victim"
    victim.write_bytes(b"secret\n")
    log = tmp_path / "out.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.unlink(log)
        (tmp_path / "out.log (deleted)").symlink_to(victim)
        assert os.readlink(f"/proc/self/fd/{fd}") == f"{log} (deleted)"
        opened, st = _trust.open_followed(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(opened, b"record\n")
            assert (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        finally:
            os.close(opened)
    finally:
        size = os.fstat(fd).st_size
        os.close(fd)
    assert victim.read_bytes() == b"secret\n"
    assert size == len(b"record\n")
