"""What another user's entries may not decide: a lock's mode, where a compat rename lands.

Root runs racefree, ``nobody`` attacks (``helpers.hostile``), in a shared directory.

- A data lock (``X.json.lock``, ``X.log.lock``) takes its mode from its data file,
  so that only who may write the data may open the lock (``flock`` needs only a
  descriptor). An untrusted data file, or a link of another user's leading to one
  (``/dev/null``, mode 0666), must not set it: the write is refused
  (``UnsafePathError``) before any lock file is made. Were a 0666 lock made, its
  maker could hold it for ever and stop every later writer.
- ``racefree.compat.atomicwrites.replace_atomic`` / ``move_atomic`` rename into a
  path whose directories may hold a link another user planted: it is refused, as
  ``racefree.atomic_write`` refuses it, and nothing moves.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hostile import NOBODY, attacker, is_link, owner, shared_dir

import racefree
from racefree.compat.atomicwrites import move_atomic, replace_atomic

PRECREATE = (
    "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666);"
    " os.close(fd); os.chmod(sys.argv[1], 0o666)"
)
PLANT_LINK = "import os, sys; os.symlink(sys.argv[1], sys.argv[2])"


@pytest.fixture(params=["tmp", "group-sticky"])
def shared(request: pytest.FixtureRequest) -> Iterator[Path]:
    with shared_dir(request.param) as d:
        yield d


def test_another_users_json_file_never_sets_the_mode_of_roots_lock(shared: Path) -> None:
    """nobody pre-creates ``conf.json`` (0666): root's write is refused, and no
    ``conf.json.lock`` is made (it was made 0666, for nobody to hold for ever)."""
    data = shared / "conf.json"
    attacker(PRECREATE, str(data))
    assert owner(data) == NOBODY and stat.S_IMODE(os.lstat(data).st_mode) == 0o666
    with pytest.raises(racefree.UnsafePathError, match="refusing to use a regular file owned"):
        racefree.JsonFile(data).write({"a": 1})
    with pytest.raises(racefree.UnsafePathError):
        racefree.JsonFile(data).update(lambda doc: doc)
    assert sorted(os.listdir(shared)) == ["conf.json"]


def test_another_users_link_never_sets_the_mode_of_an_append_logs_lock(shared: Path) -> None:
    """nobody plants ``data.log -> /dev/null`` (0666): root's append is refused, and no
    ``data.log.lock`` is made (it was made 0666 from the device's mode)."""
    log = shared / "data.log"
    attacker(PLANT_LINK, "/dev/null", str(log))
    assert is_link(log) and owner(log) == NOBODY
    with pytest.raises(racefree.UnsafePathError, match="refusing to follow a symbolic link"), \
            racefree.AppendLog(log) as opened:
        opened.append({"a": 1})
    assert sorted(os.listdir(shared)) == ["data.log"]


def test_a_trusted_data_file_still_sets_its_locks_mode(shared: Path) -> None:
    """Root's own 0640 data file there: its lock opens to who may write it (the owner): 0o600."""
    data = shared / "mine.json"
    data.write_text("{}")
    os.chmod(data, 0o640)
    racefree.JsonFile(data).write({"a": 1})
    assert stat.S_IMODE(os.lstat(shared / "mine.json.lock").st_mode) == 0o600


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    """A directory only root may write, holding a file: where a planted link points."""
    where = tmp_path / "private"
    where.mkdir(mode=0o700)
    (where / "config").write_bytes(b"root's config\n")
    return where


@pytest.mark.parametrize("call", [replace_atomic, move_atomic])
def test_compat_renames_never_follow_a_planted_directory_link(
    shared: Path, private_dir: Path, tmp_path: Path, call: object
) -> None:
    """``replace_atomic`` / ``move_atomic`` to ``shared/app/...`` where nobody planted
    ``app -> private_dir``: refused; the private directory and the source are unchanged."""
    attacker(PLANT_LINK, str(private_dir), str(shared / "app"))
    assert is_link(shared / "app") and owner(shared / "app") == NOBODY
    src = tmp_path / "new"
    src.write_bytes(b"new\n")
    name = "config" if call is replace_atomic else "moved"
    with pytest.raises(racefree.UnsafePathError, match="refusing to follow a symbolic link"):
        call(src, shared / "app" / name)  # type: ignore[operator]
    assert sorted(os.listdir(private_dir)) == ["config"]
    assert (private_dir / "config").read_bytes() == b"root's config\n"
    assert src.read_bytes() == b"new\n"


def test_compat_replace_never_replaces_another_users_file(shared: Path, tmp_path: Path) -> None:
    """nobody's file at the destination in a shared directory is not replaced by root."""
    dst = shared / "state"
    attacker(PRECREATE, str(dst))
    src = tmp_path / "new"
    src.write_bytes(b"root's\n")
    with pytest.raises(racefree.UnsafePathError, match="refusing to replace a regular file"):
        replace_atomic(src, dst)
    assert owner(dst) == NOBODY and dst.read_bytes() == b""
    assert src.exists()


def test_compat_renames_within_roots_own_directory_still_work(tmp_path: Path) -> None:
    """The ordinary case: both names in a directory of root's own."""
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    replace_atomic(tmp_path / "a", tmp_path / "b")
    move_atomic(tmp_path / "b", tmp_path / "c")
    assert sorted(os.listdir(tmp_path)) == ["c"]
    assert (tmp_path / "c").read_bytes() == b"1"
