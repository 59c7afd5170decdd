"""Faults injected into real processes, outside the seam: strace's syscall tampering, a full tmpfs.

Each test runs the operation in a fresh interpreter under
``strace -f -e inject=SYSCALL:error=ERRNO`` (or ``:signal=SIGKILL``), so the
fault reaches racefree exactly as the kernel would deliver it, then checks from
the parent: the child got a typed error (or died, for SIGKILL), the old data is
intact and readable with the public API, and no temp file is left (a SIGKILLed
writer's temp is removed by ``sweep``). The tmpfs tests mount a 64 KiB tmpfs and
fill it for real.

Skipped, with the reason, where strace is missing or ptrace is not permitted, or
where mounting a tmpfs is not possible (not root); CI installs strace and runs as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

TIMEOUT = 120


@cache
def _strace_problem() -> str | None:
    exe = shutil.which("strace")
    if exe is None:
        return "strace is not installed"
    try:
        proc = subprocess.run(
            [exe, "-f", "-qq", "-e", "trace=none", "true"],
            capture_output=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"strace does not run: {exc}"
    if proc.returncode != 0:
        return f"strace cannot trace here (ptrace not permitted?): {proc.stderr.decode()[:200]}"
    return None


needs_strace = pytest.mark.skipif(
    _strace_problem() is not None, reason=str(_strace_problem())
)

_PRELUDE = """
import json, os, sys
sys.path.insert(0, {src!r})
import racefree
def report(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n"); sys.stdout.flush()
try:
{body}
    report(ok=True)
except BaseException as exc:
    report(ok=False, type=type(exc).__name__, errno=getattr(exc, "errno", None),
           mro=[c.__name__ for c in type(exc).__mro__], msg=str(exc))
"""

SRC = str(Path(__file__).resolve().parent.parent / "src")


def run_child(body: str, inject: list[str] | None, cwd: Path) -> tuple[int, dict[str, Any] | None]:
    """Run ``body`` (indented into a try block) in a fresh interpreter, under strace if asked."""
    code = _PRELUDE.format(src=SRC, body=textwrap.indent(textwrap.dedent(body), "    "))
    cmd = [sys.executable, "-c", code]
    if inject is not None:
        strace = shutil.which("strace")
        assert strace is not None
        cmd = [strace, "-f", "-qq", "-o", os.devnull, *[a for i in inject for a in ("-e", i)], *cmd]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    if result is None and proc.returncode == 0:
        raise AssertionError(f"child printed nothing: {err.decode()[-2000:]}")
    return proc.returncode, result


def temps(directory: Path) -> list[str]:
    return sorted(
        os.path.join(dp, f) for dp, _d, fs in os.walk(directory) for f in fs if f.endswith(".rftmp")
    )


RENAME = "rename,renameat,renameat2"
FSYNC = "fsync,fdatasync"


def _expect_error(result: dict[str, Any] | None, errno_name: str, type_name: str) -> None:
    import errno as errno_mod

    assert result is not None and result["ok"] is False, result
    assert result["errno"] == getattr(errno_mod, errno_name), result
    assert type_name in result["mro"], result


# --------------------------------------------------------------------------- atomic_write
@needs_strace
def test_atomic_write_fsync_eio(tmp_path: Path) -> None:
    """fsync fails with EIO in a real process: DurabilityError, old file byte-for-byte, no temp."""
    from racefree import atomic_write

    atomic_write(tmp_path / "f", b"old contents")
    rc, result = run_child(
        "racefree.atomic_write('f', b'new contents' * 100)",
        [f"inject={FSYNC}:error=EIO:when=1"],
        tmp_path,
    )
    assert rc == 0
    _expect_error(result, "EIO", "DurabilityError")
    assert (tmp_path / "f").read_bytes() == b"old contents"
    assert temps(tmp_path) == []


@needs_strace
def test_atomic_write_rename_enospc(tmp_path: Path) -> None:
    """rename fails with ENOSPC: the OSError reaches the caller, old file kept, temp removed."""
    from racefree import atomic_write

    atomic_write(tmp_path / "f", b"old contents")
    rc, result = run_child(
        "racefree.atomic_write('f', b'new contents')",
        [f"inject={RENAME}:error=ENOSPC:when=1"],
        tmp_path,
    )
    assert rc == 0
    _expect_error(result, "ENOSPC", "OSError")
    assert (tmp_path / "f").read_bytes() == b"old contents"
    assert temps(tmp_path) == []


@needs_strace
def test_atomic_write_sigkill_at_rename(tmp_path: Path) -> None:
    """SIGKILL at the rename: the old file stays; the dead writer's temp is removed by sweep."""
    from racefree import atomic_write, sweep

    atomic_write(tmp_path / "f", b"old contents")
    rc, result = run_child(
        "racefree.atomic_write('f', b'new contents')",
        [f"inject={RENAME}:signal=SIGKILL:when=1"],
        tmp_path,
    )
    assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL) and result is None, (rc, result)
    assert (tmp_path / "f").read_bytes() == b"old contents"
    left = temps(tmp_path)
    assert len(left) == 1, left
    assert sweep(tmp_path) == left
    assert temps(tmp_path) == []


# --------------------------------------------------------------------------- a tmpfs that fills up
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (root only); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, timeout=30, check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def test_atomic_write_on_full_tmpfs(tmp_path: Path) -> None:
    """A write bigger than the free space: ENOSPC, old file intact, no temp left, space reusable."""
    from racefree import atomic_write

    with small_tmpfs(tmp_path / "mnt") as mnt:
        atomic_write(mnt / "f", b"o" * 20_000)
        with pytest.raises(OSError) as info:
            atomic_write(mnt / "f", b"n" * 60_000)
        assert info.value.errno == 28  # ENOSPC
        assert (mnt / "f").read_bytes() == b"o" * 20_000
        assert temps(mnt) == []
        atomic_write(mnt / "f", b"n" * 30_000)  # the temp's space was given back
        assert (mnt / "f").read_bytes() == b"n" * 30_000
