"""LockFile creates a lock file's missing directories, and its files with ``mode=``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from helpers.lock_contract import try_in_child

from racefree import LockFile

pytestmark = pytest.mark.timeout(60)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    """The lock file and its token file land in the new directories; the lock excludes."""
    path = tmp_path / "run" / "app" / "app.pid"
    with LockFile(path):
        assert path.is_file()
        assert try_in_child(path, 0, spec="lockfile") == "timeout"
    assert not path.exists()
    assert (tmp_path / "run" / "app" / "app.pid.token").read_bytes() == b"1\n"


def test_mode_applies_to_the_record_and_the_token(tmp_path: Path) -> None:
    """``mode=0o644`` under umask 077: other users can read who holds it, and the token."""
    path = tmp_path / "app.pid"
    old = os.umask(0o077)
    try:
        with LockFile(path, mode=0o644):
            assert _mode(path) == 0o644
        assert _mode(tmp_path / "app.pid.token") == 0o644
        with LockFile(path):  # the default again: the umask's bits
            assert _mode(path) == 0o600
        assert _mode(tmp_path / "app.pid.token") == 0o600
    finally:
        os.umask(old)


def test_bad_mode_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LockFile(tmp_path / "x.lock", mode=0o17777)
