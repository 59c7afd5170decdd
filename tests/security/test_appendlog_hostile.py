"""Cases 12, 13 and 17: another local user against ``AppendLog`` and what reads its files.

racefree runs as root, the attacker as ``nobody`` (``helpers.hostile``) in a directory
like ``/tmp`` (sticky, world-writable). The log used to be opened by path (links
followed, FIFOs blocking, anyone's file adopted): root appended into another user's
file, through a link to a root-only file, and hung on a FIFO at the log's name or its
snapshot's. The log is the caller's file now (``_trust.open_followed``), its snapshot
racefree's own (``_trust.open_own``). Each test checks that its attack is in place.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import hostile

from racefree import AppendLog, JsonFile, UnsafePathError, _fs
from racefree.log.scan import header

SECRET = b"root:$6$not-for-logs:19000:0:99999:7:::\n"
OPS: dict[str, Callable[[AppendLog], Any]] = {
    "append": lambda log: log.append({"secret": "root-data"}),
    "len": len,
    "list": list,
    "check": lambda log: log.check(),
    "compact": lambda log: log.compact(lambda n, r: n + 1, 0),
}
PLANT_LOG = (
    "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666);"
    " os.write(fd, bytes.fromhex(sys.argv[2])); os.close(fd); os.chmod(sys.argv[1], 0o666)"
)


@pytest.fixture
def shared() -> Iterator[Path]:
    with hostile.shared_dir("tmp") as d:
        yield d


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    """A root-only log outside the shared directory: what a planted link points at."""
    path = tmp_path / "audit.log"
    with AppendLog(path) as log:
        log.append("audit-1")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("op", list(OPS))
def test_case12_another_users_log_file_is_never_adopted(shared: Path, op: str) -> None:
    """nobody's own app.log (a valid empty log, mode 0666) in the shared directory: every
    call raises UnsafePathError; the file keeps nobody's bytes and owner (before: root
    appended its records into it, readable by nobody)."""
    log_path = shared / "app.log"
    hostile.attacker(PLANT_LOG, str(log_path), header(0, 0).hex())
    assert hostile.owner(log_path) == hostile.NOBODY
    with pytest.raises(UnsafePathError, match="refusing to use a regular file owned by uid"), \
            AppendLog(log_path) as log:
        OPS[op](log)
    assert log_path.read_bytes() == header(0, 0)
    assert hostile.owner(log_path) == hostile.NOBODY


@pytest.mark.parametrize("op", list(OPS))
def test_case12_a_planted_link_at_the_log_is_never_followed(
    shared: Path, audit: Path, op: str
) -> None:
    """nobody plants app.log -> root's 0600 audit.log: UnsafePathError, the audit log byte
    for byte unchanged (before: root's records were appended to it)."""
    before = audit.read_bytes()
    hostile.attacker("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(audit),
                     str(shared / "app.log"))
    assert hostile.is_link(shared / "app.log")
    with pytest.raises(UnsafePathError, match="symbolic link"), \
            AppendLog(shared / "app.log") as log:
        OPS[op](log)
    assert audit.read_bytes() == before


# Which calls read the snapshot: those must refuse its FIFO; the others never open it.
READS_SNAPSHOT = {"list", "check", "compact"}


@pytest.mark.parametrize("where", ["log", "snapshot of a new log", "snapshot"])
@pytest.mark.parametrize("op", list(OPS))
def test_case12_a_fifo_at_the_log_or_its_snapshot_never_blocks(
    shared: Path, where: str, op: str
) -> None:
    """nobody's FIFO at the log's name, or at its snapshot's (with no log yet, or next to
    root's log): no call blocks (before: open(2) hung, or a bare OSError "Illegal seek");
    every call that opens the FIFO raises UnsafePathError at once, the others work."""
    log_path = shared / "app.log"
    if where == "snapshot":
        with AppendLog(log_path) as log:
            log.append(1)
    fifo = log_path if where == "log" else shared / "app.log.snapshot"
    hostile.attacker("import os, sys; os.mkfifo(sys.argv[1], 0o666)", str(fifo))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    def call() -> None:
        with AppendLog(log_path) as log:
            OPS[op](log)

    err = hostile.bounded(call, fifo)
    opens_it = (where == "log" or op in READS_SNAPSHOT
                or (where == "snapshot of a new log" and op == "append"))
    if opens_it:
        assert isinstance(err, UnsafePathError), repr(err)
        assert "FIFO" in str(err)
    else:
        assert err is None, repr(err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_fifo_of_the_callers_own_at_the_snapshot_is_refused_too(tmp_path: Path) -> None:
    """The snapshot is racefree's own file: a FIFO there is refused whoever made it (and a
    link there is never followed, even the caller's own)."""
    log_path = tmp_path / "app.log"
    with AppendLog(log_path) as log:
        log.append(1)
    os.mkfifo(tmp_path / "app.log.snapshot")
    err = hostile.bounded(lambda: AppendLog(log_path).snapshot(), tmp_path / "app.log.snapshot")
    assert isinstance(err, UnsafePathError), repr(err)
    os.unlink(tmp_path / "app.log.snapshot")
    (tmp_path / "elsewhere").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", tmp_path / "app.log.snapshot")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        AppendLog(log_path).snapshot()


class SwapsLogForLink(_fs.FileSystem):
    """The swap at the exact call: the log is root's regular file when it is resolved, a
    link nobody owns to the audit log when it is opened."""

    def __init__(self, log: Path, audit: Path) -> None:
        self.log, self.audit, self.swaps = log, audit, 0

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        if path == str(self.log) and not self.swaps:
            self.swaps += 1
            os.rename(self.log, self.log.with_name("aside"))
            os.symlink(self.audit, self.log)
            os.lchown(self.log, hostile.NOBODY, -1)
        return super().open(path, flags, mode)


def test_case12_a_link_swapped_in_after_the_resolution_is_not_followed(
    shared: Path, audit: Path
) -> None:
    """Deterministic (through the seam): the log turns into nobody's link between its
    resolution and its open: the open does not follow it (O_NOFOLLOW), the path is
    resolved again and the link refused; the audit log is unchanged."""
    before = audit.read_bytes()
    log_path = shared / "app.log"
    with AppendLog(log_path) as log:
        log.append(0)
    fs = SwapsLogForLink(log_path, audit)
    with _fs.use(fs), pytest.raises(UnsafePathError), AppendLog(log_path) as log:
        log.append({"secret": "root-data"})
    assert fs.swaps == 1
    assert audit.read_bytes() == before


def test_trusted_links_and_group_directories_keep_working(tmp_path: Path, audit: Path) -> None:
    """The caller's own symlinked log is written through; in a group directory (not
    sticky) a member's log is used: the rule refuses only what it must."""
    os.symlink(audit, tmp_path / "mine.log")
    with AppendLog(tmp_path / "mine.log") as log:
        assert log.append("through my link") == 1
    with AppendLog(audit) as log:
        assert list(log) == ["audit-1", "through my link"]
    with hostile.shared_dir("group") as group:
        hostile.attacker(PLANT_LOG, str(group / "team.log"), header(0, 0).hex())
        with AppendLog(group / "team.log") as log:
            assert log.append("root's record") == 0
        assert hostile.owner(group / "team.log") == hostile.NOBODY


def test_case17_another_users_json_file_is_not_read(shared: Path) -> None:
    """nobody plants config.json in the shared directory: root's JsonFile.read refuses it
    (UnsafePathError) instead of returning nobody's JSON (write() was refused already)."""
    path = shared / "config.json"
    hostile.attacker(PLANT_LOG, str(path), b'{"admin": true}'.hex())
    with pytest.raises(UnsafePathError, match="owned by uid"):
        JsonFile(path, default={}).read()
    assert path.read_bytes() == b'{"admin": true}'


CLI = [sys.executable, "-m", "racefree"]


def test_case13_check_and_log_commands_never_hang_on_a_fifo_snapshot(shared: Path) -> None:
    """A FIFO (nobody's) at a.log.snapshot next to root's log: ``racefree check DIR``,
    ``check --repair DIR``, ``log FILE tail`` and ``log FILE check`` end at once: the log
    cannot be used (exit 1, one line naming the FIFO); nothing is written."""
    log_path = shared / "a.log"
    with AppendLog(log_path) as log:
        log.append(1)
    before = log_path.read_bytes()
    hostile.attacker("import os, sys; os.mkfifo(sys.argv[1], 0o666)",
                     str(shared / "a.log.snapshot"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for args in (["check", str(shared)], ["check", "--repair", str(shared)],
                 ["log", str(log_path), "tail"], ["log", str(log_path), "check"]):
        proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30,
                              env=env, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, (args, out)
        assert "is a FIFO, not a regular file" in out, (args, out)
        assert "Traceback" not in out
    assert log_path.read_bytes() == before
    assert sorted(os.listdir(shared)) == ["a.log", "a.log.lock", "a.log.snapshot"]
