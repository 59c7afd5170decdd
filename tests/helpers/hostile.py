"""Another local user, for the hostile-co-tenant tests: directories they share, code they run.

The tests run racefree as root (as CI does) and the attacker as ``nobody``
(``setpriv --reuid=nobody --regid=nogroup --clear-groups``). Everything here
needs root; :func:`need_root` skips a test elsewhere with one line.

- :func:`shared_dir` makes a directory like the system's temporary directory
  (root's, mode ``1777``: sticky, world-writable), or a group-shared project
  directory (``nogroup``'s group, writable by the group, sticky or not), under
  ``/tmp`` (``tmp_path`` is not reachable by other users). It is removed after.
- :func:`attacker` runs Python code as ``nobody`` with the system interpreter
  (the test's own interpreter may live where ``nobody`` cannot read) and waits
  for it; :func:`attacker_process` starts it and returns the ``Popen`` (reap it
  with ``helpers.testkit.reap``).
- :func:`bounded` runs a call that must not block on a FIFO, and fails the test
  (after unblocking it) if it does.
- :func:`racefree_path` gives ``nobody`` a readable copy of the package under
  test, for an attacker (or a read-only user) that runs racefree itself.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import racefree

NOBODY = pwd.getpwnam("nobody").pw_uid if os.name == "posix" else -1
NOGROUP = grp.getgrnam("nogroup").gr_gid if os.name == "posix" else -1
#: The interpreter the attacker runs: readable and executable by every user.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin") or "python3"
HANG_LIMIT = 3.0  # seconds before a call that should fail at once counts as hung
SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def need_root() -> None:
    """Skip (one line) unless this process can act as another user."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another local user")


@contextlib.contextmanager
def shared_dir(kind: str = "tmp") -> Iterator[Path]:
    """A fresh directory other users may write, removed afterwards.

    ``kind``: ``"tmp"`` (root's, ``1777``, like ``/tmp``), ``"group-sticky"``
    (root's, group ``nogroup``, ``3775``), ``"group"`` (the same without the
    sticky bit: every group member may replace any entry, so racefree trusts them).
    """
    need_root()
    # Reachable by nobody: /tmp itself is world-searchable, pytest's tmp_path is not.
    path = Path(tempfile.mkdtemp(prefix="racefree-hostile-", dir="/tmp"))
    try:
        if kind == "tmp":
            os.chmod(path, 0o1777)
        elif kind == "group-sticky":
            os.chown(path, 0, NOGROUP)
            os.chmod(path, 0o3775)
        elif kind == "group":
            os.chown(path, 0, NOGROUP)
            os.chmod(path, 0o2775)
        else:
            raise ValueError(f"unknown shared directory kind {kind!r}")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def attacker(code: str, *args: str, timeout: float = 60.0, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (Python, ``sys.argv[1:]`` = ``args``) as ``nobody``; raise if it fails."""
    need_root()
    proc = subprocess.run(
        [*SETPRIV, SYSTEM_PYTHON, "-c", code, *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd="/",
        env=env if env is not None else _env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"the attacker failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def attacker_process(code: str, *args: str, env: dict[str, str] | None = None,
                     **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``code`` as ``nobody`` (stdin/stdout pipes, text) and return it unreaped."""
    need_root()
    return subprocess.Popen(
        [*SETPRIV, SYSTEM_PYTHON, "-c", code, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd="/", env=env if env is not None else _env(), **kwargs,
    )


def racefree_path(where: Path) -> str:
    """Copy the racefree under test into ``where`` (readable by all); returns a PYTHONPATH entry."""
    src = Path(racefree.__file__).resolve().parent
    dst = where / "racefree-src"
    shutil.copytree(src, dst / "racefree", ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, _dirnames, filenames in os.walk(dst):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return str(dst)


def _env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {k: v for k, v in os.environ.items() if k in keep}


def owner(path: Path) -> int:
    """The uid owning ``path`` itself (never a link's target)."""
    return os.lstat(path).st_uid


def is_link(path: Path) -> bool:
    return stat.S_ISLNK(os.lstat(path).st_mode)


def bounded(call: Callable[[], Any], fifo: Path) -> BaseException | None:
    """Run ``call``; what it raised (None if nothing). If it is still blocked after
    HANG_LIMIT (a FIFO opened or read without O_NONBLOCK), unblock it by opening the FIFO's
    other end, and fail: racefree must never block there."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # the outcome is what the test asserts on
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_LIMIT)
    hung = thread.is_alive()
    while thread.is_alive():
        for flags in (os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK):
            # Opening the other end unblocks it; ENXIO (no reader yet) is expected.
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, flags))
        thread.join(0.1)
    if hung:
        pytest.fail(f"blocked for more than {HANG_LIMIT}s on the FIFO {fifo}")
    return outcome[0]
