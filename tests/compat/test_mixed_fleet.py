"""A rolling migration: processes on a peer and processes on racefree, one lock path.

What docs/migrating.md says a mixed fleet does is what these tests show:

- filelock's ``FileLock`` and portalocker take ``flock`` on a file they never
  delete, as racefree's ``FileLock`` does: the two sides exclude each other,
  exclusive and shared racefree locks alike, in both directions;
- filelock's ``SoftFileLock`` and racefree's ``SoftFileLock`` exclude each
  other only for short holds: filelock reads racefree's lock file as a
  malformed record and takes it over after 2 s unchanged; racefree never
  deletes filelock's marker (it is not racefree's file) and waits for it to go;
- fasteners takes POSIX record locks, which Linux keeps apart from ``flock``,
  and filelock's ``ReadWriteLock`` is an SQLite transaction: no exclusion at all.

Each case runs real interpreters: one holds, another tries with a timeout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers.peers import PeerHolder, peer_try

pytestmark = pytest.mark.timeout(180)

# (holder, contender) pairs that exclude each other.
EXCLUDING = [
    ("filelock.FileLock", "racefree.FileLock"),
    ("racefree.FileLock", "filelock.FileLock"),
    ("filelock.FileLock", "racefree.FileLock-shared"),
    ("racefree.FileLock-shared", "filelock.FileLock"),
    ("filelock.FileLock", "compat.FileLock"),
    ("compat.FileLock", "filelock.FileLock"),
    ("portalocker", "racefree.FileLock"),
    ("racefree.FileLock", "portalocker"),
    ("filelock.SoftFileLock", "compat.SoftFileLock"),
    ("compat.SoftFileLock", "filelock.SoftFileLock"),
]


@pytest.mark.parametrize(("holder", "contender"), EXCLUDING)
def test_peer_and_racefree_exclude_each_other(holder: str, contender: str, tmp_path: Path) -> None:
    """While one side holds, the other times out; once it releases, the other gets the lock."""
    path = tmp_path / "app.lock"
    with PeerHolder(holder, path) as held:
        assert peer_try(contender, path, 0.3) == "timeout"
        held.release()
    assert peer_try(contender, path, 30) == "acquired"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and lockf apart: Linux")
@pytest.mark.parametrize(
    ("holder", "contender"),
    [
        ("fasteners", "compat.fasteners"),
        ("compat.fasteners", "fasteners"),
        ("filelock.ReadWriteLock", "compat.ReadWriteLock"),
        ("compat.ReadWriteLock", "filelock.ReadWriteLock"),
    ],
)
def test_peer_and_racefree_do_not_exclude(holder: str, contender: str, tmp_path: Path) -> None:
    """fasteners' lockf, or filelock's SQLite reader-writer lock, and racefree's flock on one
    file: both sides are granted the (write) lock at once.
    """
    path = tmp_path / "app.lock"
    with PeerHolder(holder, path) as held:
        assert peer_try(contender, path, 0.3) == "acquired"
        held.release()


def test_filelock_soft_lock_takes_over_a_racefree_lock_file(tmp_path: Path) -> None:
    """A racefree lock file held for longer than 2 s: filelock's SoftFileLock reads its owner
    record as malformed, and takes the lock over while racefree still holds it.
    """
    path = tmp_path / "app.lock"
    with PeerHolder("compat.SoftFileLock", path) as held:
        assert peer_try("filelock.SoftFileLock", path, 30) == "acquired"
        held.proc.kill()


def test_racefree_never_reclaims_a_filelock_marker(tmp_path: Path) -> None:
    """filelock's marker is not a racefree owner record: racefree's ``LockFile`` refuses to
    reclaim it (``FormatError``), long after ``stale_after`` (1 s here), and never deletes it;
    the compat ``SoftFileLock`` waits for it instead.
    """
    path = tmp_path / "app.lock"
    with PeerHolder("filelock.SoftFileLock", path) as held:
        marker = path.read_bytes()
        assert peer_try("racefree.LockFile-1s", path, 3) == "FormatError"
        assert peer_try("compat.SoftFileLock", path, 1.5) == "timeout"
        assert path.read_bytes() == marker
        held.release()
