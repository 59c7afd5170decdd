"""Another local user against the logging handlers' sidecar ``.NAME.lock`` and the log itself.

racefree runs as root, the attacker as ``nobody`` (``helpers.hostile``), in a
directory like ``/tmp`` (sticky, world-writable). Each test first checks that
the attack is in place, then that racefree refused with the exact error (or
stayed safe), and that the victim file is byte for byte what it was.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import hostile
from helpers.testkit import reap

from racefree import LockTimeout, UnsafePathError
from racefree.logging import RotatingFileHandler

SECRET = b"root:$6$not-for-logs:19000:0:99999:7:::\n"


def _victim(tmp_path: Path) -> Path:
    """A root-only file outside the shared directory: what a planted link points at."""
    victim = tmp_path / "shadow"
    victim.write_bytes(SECRET)
    victim.chmod(0o600)
    return victim


def test_a_symlink_planted_at_the_sidecar_is_refused(tmp_path: Path) -> None:
    """nobody plants .app.log.lock -> a root-only file: the handler refuses to open it
    (UnsafePathError) instead of truncating it to 64 bytes and mapping it writable."""
    victim = _victim(tmp_path)
    with hostile.shared_dir("tmp") as shared:
        hostile.attacker(
            "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
            str(victim), str(shared / ".app.log.lock"),
        )
        assert hostile.is_link(shared / ".app.log.lock")
        assert hostile.owner(shared / ".app.log.lock") == hostile.NOBODY
        with pytest.raises(UnsafePathError):
            RotatingFileHandler(shared / "app.log", maxBytes=100, backupCount=2)
        assert hostile.is_link(shared / ".app.log.lock")
    assert victim.read_bytes() == SECRET


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_file_or_fifo_planted_at_the_sidecar_is_refused(tmp_path: Path, kind: str) -> None:
    """nobody plants their own file (or a FIFO, which would block a plain open) at the
    sidecar's name: UnsafePathError at once, and their file is left as it was."""
    with hostile.shared_dir("tmp") as shared:
        planted = shared / ".app.log.lock"
        code = ("import os, sys; os.mkfifo(sys.argv[1], 0o666)" if kind == "fifo" else
                "import sys; open(sys.argv[1], 'wb').write(bytes(64))")
        hostile.attacker(code, str(planted))
        assert hostile.owner(planted) == hostile.NOBODY
        assert stat.S_ISFIFO(os.lstat(planted).st_mode) == (kind == "fifo")
        with pytest.raises(UnsafePathError):
            RotatingFileHandler(shared / "app.log", maxBytes=100, backupCount=2)
        if kind == "file":
            assert planted.read_bytes() == bytes(64)
        assert not (shared / "app.log").exists() or (shared / "app.log").read_bytes() == b""


def test_a_symlink_planted_at_the_log_name_is_not_followed(tmp_path: Path) -> None:
    """nobody plants app.log -> a root-only file in the shared directory: the handler does
    not append root's records to the link's target (UnsafePathError)."""
    victim = _victim(tmp_path)
    with hostile.shared_dir("tmp") as shared:
        hostile.attacker("import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
                         str(victim), str(shared / "app.log"))
        assert hostile.is_link(shared / "app.log")
        with pytest.raises(UnsafePathError):
            RotatingFileHandler(shared / "app.log", maxBytes=100, backupCount=2)
    assert victim.read_bytes() == SECRET


ROOT_LOGGER = r"""
import logging, sys
from racefree.logging import RotatingFileHandler
errors = []
class H(RotatingFileHandler):
    def handleError(self, record):
        errors.append(type(sys.exc_info()[1]).__name__)
h = H(sys.argv[1], maxBytes=1 << 20, backupCount=2, lock_timeout=0.5)
h.emit(logging.makeLogRecord({"msg": "first"}))
print("ready", flush=True)
sys.stdin.readline()
h.emit(logging.makeLogRecord({"msg": "second"}))
h.emit(logging.makeLogRecord({"msg": "third"}))
print(",".join(errors), flush=True)
"""


def _root_logger(log: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-c", ROOT_LOGGER, str(log)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_a_truncated_sidecar_is_an_error_not_sigbus(tmp_path: Path) -> None:
    """A world-writable log (so its sidecar is too): nobody truncates the sidecar to 0
    bytes while root's process logs. The process lives: its records fail with
    UnsafePathError (reported, not written); before, a mapped control block killed it
    with SIGBUS."""
    with hostile.shared_dir("tmp") as shared:
        log = shared / "app.log"
        log.touch()
        log.chmod(0o666)
        proc = _root_logger(log)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline() == "ready\n"
            sidecar = shared / ".app.log.lock"
            assert stat.S_IMODE(sidecar.stat().st_mode) == 0o666  # writable by the attacker
            hostile.attacker("import os, sys; os.truncate(sys.argv[1], 0)", str(sidecar))
            assert sidecar.stat().st_size == 0
            out, err = proc.communicate("go\n", timeout=60)
        finally:
            reap([proc])
        assert proc.returncode == 0, (proc.returncode, err[-2000:])
        assert out == "UnsafePathError,UnsafePathError\n"
        assert log.read_bytes() == b"first\n"


HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_lock_held_by_another_user_does_not_block_logging_forever(tmp_path: Path) -> None:
    """A world-writable log: nobody (who may write it) holds the sidecar's lock and never
    lets go. root's logging calls return: each record fails with LockTimeout after at most
    lock_timeout (here 0.5 s), is not written, and the process goes on."""
    with hostile.shared_dir("tmp") as shared:
        log = shared / "app.log"
        log.touch()
        log.chmod(0o666)
        proc = _root_logger(log)
        holder = None
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline() == "ready\n"
            holder = hostile.attacker_process(HOLDER, str(shared / ".app.log.lock"))
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"
            out, err = proc.communicate("go\n", timeout=60)
        finally:
            reap([p for p in (proc, holder) if p is not None])
        assert proc.returncode == 0, err[-2000:]
        assert out == "LockTimeout,LockTimeout\n"
        assert log.read_bytes() == b"first\n"
    assert issubclass(LockTimeout, TimeoutError)


def test_an_old_world_readable_sidecar_is_closed_to_those_who_cannot_write_the_log(
    tmp_path: Path,
) -> None:
    """A root-owned 0644 sidecar (as older versions made it) beside a 0644 log: flock needs
    only read access, so nobody could hold it. Opening the log tightens it to 0600, and
    nobody can no longer open it at all."""
    with hostile.shared_dir("tmp") as shared:
        sidecar = shared / ".app.log.lock"
        sidecar.write_bytes(bytes(64))
        sidecar.chmod(0o644)
        (shared / "app.log").write_bytes(b"")
        (shared / "app.log").chmod(0o644)
        probe = "import os, sys\ntry:\n    os.open(sys.argv[1], os.O_RDONLY)\n" \
                "    print('opened')\nexcept PermissionError:\n    print('denied')\n"
        assert hostile.attacker(probe, str(sidecar)).stdout == "opened\n"
        h = RotatingFileHandler(shared / "app.log", maxBytes=100, backupCount=2)
        h.close()
        assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600
        assert hostile.attacker(probe, str(sidecar)).stdout == "denied\n"


def test_the_handler_logs_normally_in_a_shared_directory(tmp_path: Path) -> None:
    """The refusals above are not all the handler does in /tmp: alone there, it logs and
    rotates, its sidecar 0600 for a 0644 log."""
    with hostile.shared_dir("tmp") as shared:
        (shared / "app.log").touch()
        (shared / "app.log").chmod(0o644)
        h = RotatingFileHandler(shared / "app.log", maxBytes=10, backupCount=2)
        try:
            for msg in ("aaaaaaaa", "bbbbbbbb"):
                h.emit(logging.makeLogRecord({"msg": msg}))
        finally:
            h.close()
        assert (shared / "app.log.1").read_bytes() == b"aaaaaaaa\n"
        assert (shared / "app.log").read_bytes() == b"bbbbbbbb\n"
        assert stat.S_IMODE((shared / ".app.log.lock").stat().st_mode) == 0o600
        assert stat.S_IMODE((shared / "app.log").stat().st_mode) == 0o644  # as it was


@pytest.mark.parametrize(("log_mode", "mapped"), [(0o644, True), (0o600, True), (0o664, False),
                                                   (0o666, False)])
def test_the_control_block_is_mapped_only_where_its_owner_alone_may_write_it(
    tmp_path: Path, log_mode: int, mapped: bool
) -> None:
    """The writers' hot path reads the control words from a read-only mapping only when no
    one but this user may write the sidecar (only they, or root, could then cut it short
    under the mapping); a log its group or others may write is read with pread."""
    from racefree.logging import RotatingFileHandler

    log = tmp_path / "app.log"
    log.touch()
    log.chmod(log_mode)
    handler = RotatingFileHandler(log, maxBytes=1 << 20, backupCount=2)
    try:
        handler.emit(logging.LogRecord("t", logging.INFO, __file__, 1, "one", None, None))
        side = handler._side
        assert side is not None and (side.words is not None) == mapped
        sidecar_mode = stat.S_IMODE((tmp_path / ".app.log.lock").stat().st_mode)
        assert bool(sidecar_mode & 0o022) != mapped
    finally:
        handler.close()
    assert log.read_bytes() == b"one\n"
