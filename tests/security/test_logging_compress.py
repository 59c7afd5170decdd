"""Another local user against ``compress=True``: the compressor's temp file and the mode of a .gz.

racefree runs as root, the attacker as ``nobody`` (``helpers.hostile``). Each
test checks the attack is in place, then that racefree refused with the exact
error (or stayed safe), and that the attacker's file and the log's data are
byte for byte what they were.
"""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import pytest
from helpers import hostile
from helpers.logrecording import Recording
from helpers.logrecording import rec as _rec

from racefree import UnsafePathError
from racefree.logging import RotatingFileHandler


def test_a_0600_log_gets_0600_compressed_backups(tmp_path: Path) -> None:
    """compress=True on a 0600 log: the .gz is 0600 too (before, the umask's 0644 made the
    backup readable by every user), and the new log file after the rotation stays 0600."""
    log = tmp_path / "app.log"
    log.touch()
    log.chmod(0o600)
    h = RotatingFileHandler(log, maxBytes=10, backupCount=2, compress=True)
    try:
        for msg in ("aaaaaaaa", "bbbbbbbb"):
            h.handle(_rec(msg))
    finally:
        h.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".app.log.lock", "app.log",
                                                          "app.log.1.gz"]
    assert gzip.decompress((tmp_path / "app.log.1.gz").read_bytes()) == b"aaaaaaaa\n"
    assert stat.S_IMODE((tmp_path / "app.log.1.gz").stat().st_mode) == 0o600
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_planted_compressor_temp_file_is_never_written(tmp_path: Path, kind: str) -> None:
    """nobody pre-creates the temp file the compressor of the next backup will use (its
    name comes from the log's inode, which anyone can stat), as their own empty file or as
    a link to a root-only file. The rotation goes on, the compression is refused
    (UnsafePathError, reported through handleError), the backup stays plain and whole,
    and the planted file (or the link's target) is unchanged and holds none of root's data."""
    victim = tmp_path / "shadow"
    victim.write_bytes(b"root only\n")
    victim.chmod(0o600)
    with hostile.shared_dir("tmp") as shared:
        log = shared / "app.log"
        h = Recording(log, maxBytes=10, backupCount=2, compress=True)
        try:
            h.handle(_rec("aaaaaaaa"))
            tmp = shared / f".app.log.{os.stat(log).st_ino}.gz.tmp"
            if kind == "file":
                hostile.attacker("import sys; open(sys.argv[1], 'wb').write(b'mine')", str(tmp))
            else:
                hostile.attacker("import os, sys; os.symlink(sys.argv[2], sys.argv[1])",
                                 str(tmp), str(victim))
            assert hostile.owner(tmp) == hostile.NOBODY
            h.handle(_rec("bbbbbbbb"))  # rotates: app.log -> app.log.1, then compresses it
        finally:
            h.close()
        assert [type(e) for e in h.reported] == [UnsafePathError]
        assert sorted(p.name for p in shared.iterdir()) == sorted([
            ".app.log.lock", tmp.name, "app.log", "app.log.1"])
        assert (shared / "app.log.1").read_bytes() == b"aaaaaaaa\n"
        assert (shared / "app.log").read_bytes() == b"bbbbbbbb\n"
        assert hostile.owner(tmp) == hostile.NOBODY
        if kind == "file":
            assert tmp.read_bytes() == b"mine"
        else:
            assert hostile.is_link(tmp)
    assert victim.read_bytes() == b"root only\n"


def test_a_hard_link_planted_at_a_backup_name_is_not_compressed(tmp_path: Path) -> None:
    """A root file hard-linked in as app.log.1 by someone is not one of the log's backups
    (two names in a shared directory: the trust rule refuses it): it is not shifted, not
    compressed, and the next backup takes its name (the file itself keeps its bytes), so
    its contents never end up in a .gz beside the log."""
    with hostile.shared_dir("tmp") as shared:
        secret = shared / "secret"
        secret.write_bytes(b"root only\n")
        secret.chmod(0o600)
        h = Recording(shared / "app.log", maxBytes=10, backupCount=5, compress=True)
        try:
            h.handle(_rec("aaaaaaaa"))
            os.link(secret, shared / "app.log.1")  # what an attacker's hard link leaves
            h.handle(_rec("bbbbbbbb"))  # rotates: app.log -> app.log.1 (over the link)
        finally:
            h.close()
        assert h.reported == []
        names = sorted(p.name for p in shared.iterdir())
        assert names == [".app.log.lock", "app.log", "app.log.1.gz", "secret"]
        assert secret.read_bytes() == b"root only\n" and secret.stat().st_nlink == 1
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert gzip.decompress((shared / "app.log.1.gz").read_bytes()) == b"aaaaaaaa\n"


def test_a_link_planted_at_an_older_backup_name_never_takes_a_backups_gz(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While backup A is compressed, two more rotations shift it to app.log.3 (B and C are
    compressed at once), and nobody plants ``app.log.1 -> app.log.3`` beside root's
    app.log.1.gz. A's .gz lands at app.log.3.gz: the link is not taken for A's backup
    (before, A's .gz replaced app.log.1.gz, B's records lost, and A stayed plain)."""
    from racefree.logging import compress

    with hostile.shared_dir("tmp") as shared:
        log = shared / "app.log"
        first = RotatingFileHandler(log, maxBytes=1000, backupCount=5, compress=True)
        other = RotatingFileHandler(log, maxBytes=1000, backupCount=5, compress=True)
        real = compress.compress_into
        calls = []

        def slow(job: compress.Claim, sync: object) -> None:
            calls.append(job.path)
            if len(calls) == 1:  # A's compression: meanwhile two more rotations
                other.handle(_rec("B" * 990))
                other.handle(_rec("C" * 990))
                hostile.attacker("import os, sys; os.symlink('app.log.3', sys.argv[1])",
                                 str(shared / "app.log.1"))
                assert hostile.is_link(shared / "app.log.1")
            real(job, sync)  # type: ignore[arg-type]

        monkeypatch.setattr(compress, "compress_into", slow)
        try:
            first.handle(_rec("A" * 990))
            first.handle(_rec("D" * 990))  # rotates A to app.log.1, then compresses it
        finally:
            first.close()
            other.close()
        names = sorted(p.name for p in shared.iterdir())
        assert names == [".app.log.lock", "app.log", "app.log.1", "app.log.1.gz",
                         "app.log.2.gz", "app.log.3.gz"]
        assert hostile.owner(shared / "app.log.1") == hostile.NOBODY
        got = {n: gzip.decompress((shared / n).read_bytes())[:1]
               for n in ("app.log.1.gz", "app.log.2.gz", "app.log.3.gz")}
        assert got == {"app.log.1.gz": b"B", "app.log.2.gz": b"D", "app.log.3.gz": b"A"}


@pytest.mark.parametrize("through_link", [False, True])
def test_a_gz_is_never_placed_at_a_second_name_of_the_backup(
    tmp_path: Path, through_link: bool
) -> None:
    """The backup being compressed has a second name in the sticky directory (a hard link
    planted at an older backup name): the .gz is not placed there, also when the log's
    directory is reached through a symbolic link (before, the link's own lstat, never
    "shared", let the check pass)."""
    from racefree.logging import compress

    with hostile.shared_dir("tmp") as shared:
        (shared / "app.log.1").write_bytes(b"backup")
        os.link(shared / "app.log.1", shared / "app.log.3")
        (shared / "tmp.gz").write_bytes(b"gz")
        where = shared
        if through_link:
            where = tmp_path / "logs"
            where.symlink_to(shared)
        job = compress.Claim(-1, str(where / "app.log.3"), os.stat(shared / "app.log.1").st_ino,
                             str(shared / "tmp.gz"), -1)
        assert compress.place_locked(job, [str(where / "app.log.3")]) is False
        assert sorted(p.name for p in shared.iterdir()) == ["app.log.1", "app.log.3"]
