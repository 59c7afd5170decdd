"""FileLock creates a lock file's missing directories, and creates it with ``mode=``."""

from __future__ import annotations

import errno
import os
import pickle
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers.lock_contract import try_in_child

from racefree import FileLock, _fs

pytestmark = pytest.mark.timeout(60)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    """A lock file under directories that do not exist: they are made, and the lock works
    (other processes are excluded through it).
    """
    path = tmp_path / "a" / "b" / "c" / "x.lock"
    with umask(0o022):
        with FileLock(path):
            assert path.is_file()
            assert try_in_child(path, 0) == "timeout"
        assert try_in_child(path, 10) == "acquired"
    assert _mode(tmp_path / "a") == 0o755
    assert _mode(tmp_path / "a" / "b" / "c") == 0o755
    assert path.read_bytes() == b""


def test_parent_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    """A file where a directory should be is reported, not replaced."""
    (tmp_path / "f").write_bytes(b"data")
    with pytest.raises(NotADirectoryError):
        FileLock(tmp_path / "f" / "x.lock").acquire()
    assert (tmp_path / "f").read_bytes() == b"data"


def test_mode_is_exact_despite_the_umask(tmp_path: Path) -> None:
    """``mode=0o660`` under umask 077: the new lock file is 0o660, not 0o600."""
    path = tmp_path / "group.lock"
    with umask(0o077):
        with FileLock(path, mode=0o660):
            assert _mode(path) == 0o660
        assert FileLock(path, mode=0o660).mode == 0o660
    assert sorted(os.listdir(tmp_path)) == ["group.lock"]  # no temp left behind


def test_mode_in_a_missing_directory(tmp_path: Path) -> None:
    """``mode=`` and missing directories together."""
    path = tmp_path / "new" / "x.lock"
    with umask(0o077), FileLock(path, mode=0o640, shared=True):
        assert _mode(path) == 0o640
        assert _mode(tmp_path / "new") == 0o700


def test_existing_lock_file_keeps_its_mode(tmp_path: Path) -> None:
    """A lock file that exists (made by anyone) is never chmod-ed."""
    path = tmp_path / "x.lock"
    path.write_bytes(b"")
    path.chmod(0o604)
    with FileLock(path, mode=0o666):
        pass
    assert _mode(path) == 0o604


def test_default_mode_is_the_umask(tmp_path: Path) -> None:
    """Without ``mode=``, 0o666 & ~umask, as before."""
    path = tmp_path / "x.lock"
    with umask(0o027), FileLock(path):
        pass
    assert _mode(path) == 0o640


@pytest.mark.parametrize("bad", [0o10000, -1])
def test_bad_mode_is_a_value_error(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError):
        FileLock(tmp_path / "x.lock", mode=bad)


def test_mode_of_the_wrong_type_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        FileLock(tmp_path / "x.lock", mode="0o660")  # type: ignore[arg-type]


def test_pickle_keeps_the_mode(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "d" / "x.lock", mode=0o660, shared=True, make_parents=False)
    copy = pickle.loads(pickle.dumps(lock))
    assert (copy.mode, copy.shared) == (0o660, True)
    with pytest.raises(FileNotFoundError):
        copy.acquire()  # make_parents=False came along


class _Recorder(_fs.FileSystem):
    """The real file system, recording (name, path) of the calls on paths."""

    def __init__(self, fail_link: int | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_link = fail_link

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        self.calls.append(("open", os.path.basename(path)))
        return super().open(path, flags, mode)

    def fchmod(self, fd: int, mode: int) -> None:
        self.calls.append(("fchmod", oct(mode)))
        super().fchmod(fd, mode)

    def link(self, src: str, dst: str) -> None:
        self.calls.append(("link", os.path.basename(dst)))
        if self.fail_link is not None:
            raise OSError(self.fail_link, os.strerror(self.fail_link), src)
        super().link(src, dst)

    def unlink(self, path: str) -> None:
        self.calls.append(("unlink", os.path.basename(path)))
        super().unlink(path)


def test_new_lock_file_appears_with_its_mode(tmp_path: Path) -> None:
    """The lock file's name appears by ``link`` of a temp that already has the mode, so no
    process ever opens it with the umask's bits (a group member would get EACCES).
    """
    fake = _Recorder()
    path = tmp_path / "x.lock"
    with _fs.use(fake), FileLock(path, mode=0o660):
        pass
    names = [c[0] for c in fake.calls]
    assert names[:4] == ["open", "fchmod", "link", "unlink"]
    assert fake.calls[1] == ("fchmod", "0o660")
    assert fake.calls[2] == ("link", "x.lock")
    assert fake.calls[0][1].endswith(".rftmp") and fake.calls[3][1] == fake.calls[0][1]
    assert fake.calls[4] == ("open", "x.lock")  # then the lock file is opened to lock it


def test_without_hard_links_it_is_created_in_place(tmp_path: Path) -> None:
    """A file system without hard links (EPERM from link): created in place, same mode."""
    fake = _Recorder(fail_link=errno.EPERM)
    path = tmp_path / "x.lock"
    with umask(0o077), _fs.use(fake), FileLock(path, mode=0o664):
        pass
    assert _mode(path) == 0o664
    assert sorted(os.listdir(tmp_path)) == ["x.lock"]


def test_other_link_errors_propagate(tmp_path: Path) -> None:
    """An I/O error from link is raised, and the temp is removed."""
    fake = _Recorder(fail_link=errno.EIO)
    path = tmp_path / "x.lock"
    lock: Any = FileLock(path, mode=0o664)
    with _fs.use(fake), pytest.raises(OSError) as info:
        lock.acquire()
    assert info.value.errno == errno.EIO
    assert os.listdir(tmp_path) == []
