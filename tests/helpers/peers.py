"""Locks of racefree and of its peers in child processes, for the mixed-fleet and compat tests.

``KINDS`` names a lock and says, as code, how a child process makes it on the
path ``sys.argv[1]``, takes it, releases it, and tries it with a timeout
(setting ``ok``). :class:`PeerHolder` holds one in a child until told to
release; :func:`peer_try` reports what a fresh child gets within a timeout.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    setup: str  # imports
    make: str  # an expression: the lock on sys.argv[1]
    take: str  # statements: take it, waiting
    release: str
    attempt: str  # statements: try for ``timeout`` seconds, set ``ok``


_FILELOCK_TRY = """
try:
    lock.acquire(timeout=timeout)
    ok = True
except mod.Timeout:
    ok = False
"""
_RACEFREE_TRY = """
try:
    lock.acquire(timeout=timeout)
    ok = True
except racefree.LockTimeout:
    ok = False
except racefree.FormatError:
    ok = "FormatError"
"""

KINDS: dict[str, Kind] = {
    "filelock.FileLock": Kind(
        "import filelock as mod", "mod.FileLock(sys.argv[1])", "lock.acquire()",
        "lock.release()", _FILELOCK_TRY,
    ),
    "compat.FileLock": Kind(
        "from racefree.compat import filelock as mod", "mod.FileLock(sys.argv[1])",
        "lock.acquire()", "lock.release()", _FILELOCK_TRY,
    ),
    "filelock.SoftFileLock": Kind(
        "import filelock as mod", "mod.SoftFileLock(sys.argv[1])", "lock.acquire()",
        "lock.release()", _FILELOCK_TRY,
    ),
    "compat.SoftFileLock": Kind(
        "from racefree.compat import filelock as mod", "mod.SoftFileLock(sys.argv[1])",
        "lock.acquire()", "lock.release()", _FILELOCK_TRY,
    ),
    "filelock.ReadWriteLock": Kind(
        "import filelock as mod", "mod.ReadWriteLock(sys.argv[1])", "lock.acquire_write()",
        "lock.release()",
        """
try:
    lock.acquire_write(timeout=timeout)
    ok = True
except mod.Timeout:
    ok = False
""",
    ),
    "compat.ReadWriteLock": Kind(
        "from racefree.compat import filelock as mod", "mod.ReadWriteLock(sys.argv[1])",
        "lock.acquire_write()", "lock.release()",
        """
try:
    lock.acquire_write(timeout=timeout)
    ok = True
except mod.Timeout:
    ok = False
""",
    ),
    "racefree.FileLock": Kind(
        "import racefree", "racefree.FileLock(sys.argv[1])", "lock.acquire()",
        "lock.release()", _RACEFREE_TRY,
    ),
    "racefree.FileLock-shared": Kind(
        "import racefree", "racefree.FileLock(sys.argv[1], shared=True)", "lock.acquire()",
        "lock.release()", _RACEFREE_TRY,
    ),
    "racefree.LockFile-1s": Kind(
        "import racefree", "racefree.LockFile(sys.argv[1], stale_after=1.0)", "lock.acquire()",
        "lock.release()", _RACEFREE_TRY,
    ),
    "fasteners": Kind(
        "import fasteners as mod", "mod.InterProcessLock(sys.argv[1])",
        "assert lock.acquire()", "lock.release()", "ok = lock.acquire(timeout=timeout)",
    ),
    "compat.fasteners": Kind(
        "from racefree.compat import fasteners as mod", "mod.InterProcessLock(sys.argv[1])",
        "assert lock.acquire()", "lock.release()", "ok = lock.acquire(timeout=timeout)",
    ),
    "portalocker": Kind(
        "import portalocker", "portalocker.Lock(sys.argv[1], timeout=600)", "lock.acquire()",
        "lock.release()",
        """
lock = portalocker.Lock(sys.argv[1], timeout=timeout)
try:
    lock.acquire()
    ok = True
except portalocker.LockException:
    ok = False
""",
    ),
}

_HOLD = """
import sys
{setup}
lock = {make}
{take}
print("held", flush=True)
sys.stdin.readline()
{release}
print("released", flush=True)
"""

_TRY = """
import sys
{setup}
lock = {make}
timeout = float(sys.argv[2])
{attempt}
print(ok if isinstance(ok, str) else "acquired" if ok else "timeout", flush=True)
"""


def _code(template: str, kind: Kind) -> str:
    fields = {name: textwrap.dedent(getattr(kind, name)).strip() for name in
              ("setup", "make", "take", "release", "attempt")}
    return template.format(**fields)


class PeerHolder:
    """A child process holding a lock of ``kind`` on ``path`` until :meth:`release`."""

    def __init__(self, kind: str, path: str | os.PathLike[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _code(_HOLD, KINDS[kind]), os.fspath(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "held":
            self.close()
            raise AssertionError(f"{kind} holder did not start: {line!r}")

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        assert self.proc.wait(60) == 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> PeerHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def peer_try(kind: str, path: str | os.PathLike[str], timeout: float) -> str:
    """"acquired", "timeout" (or a racefree lock's "FormatError"): what a fresh child with a
    lock of ``kind`` gets in ``timeout``."""
    out = subprocess.run(
        [sys.executable, "-c", _code(_TRY, KINDS[kind]), os.fspath(path), str(timeout)],
        capture_output=True, text=True, timeout=timeout + 60, check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
