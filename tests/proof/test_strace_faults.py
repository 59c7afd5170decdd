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
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from helpers.testkit import mounted_tmpfs

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

SRC = str(Path(__file__).resolve().parents[2] / "src")


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
def _replace_in_child(tmp_path: Path, data: str, inject: str) -> tuple[int, dict[str, Any] | None]:
    """``f`` holds b"old contents"; a child replaces it with ``data`` under strace ``inject``."""
    from racefree import atomic_write

    atomic_write(tmp_path / "f", b"old contents")
    return run_child(f"racefree.atomic_write('f', {data})", [inject], tmp_path)


@needs_strace
def test_atomic_write_fsync_eio(tmp_path: Path) -> None:
    """fsync fails with EIO in a real process: DurabilityError, old file byte-for-byte, no temp."""
    rc, result = _replace_in_child(
        tmp_path, "b'new contents' * 100", f"inject={FSYNC}:error=EIO:when=1"
    )
    assert rc == 0
    _expect_error(result, "EIO", "DurabilityError")
    assert (tmp_path / "f").read_bytes() == b"old contents"
    assert temps(tmp_path) == []


@needs_strace
def test_atomic_write_rename_enospc(tmp_path: Path) -> None:
    """rename fails with ENOSPC: the OSError reaches the caller, old file kept, temp removed."""
    rc, result = _replace_in_child(
        tmp_path, "b'new contents'", f"inject={RENAME}:error=ENOSPC:when=1"
    )
    assert rc == 0
    _expect_error(result, "ENOSPC", "OSError")
    assert (tmp_path / "f").read_bytes() == b"old contents"
    assert temps(tmp_path) == []


@needs_strace
def test_atomic_write_sigkill_at_rename(tmp_path: Path) -> None:
    """SIGKILL at the rename: the old file stays; the dead writer's temp is removed by sweep."""
    from racefree import sweep

    rc, result = _replace_in_child(
        tmp_path, "b'new contents'", f"inject={RENAME}:signal=SIGKILL:when=1"
    )
    assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL) and result is None, (rc, result)
    assert (tmp_path / "f").read_bytes() == b"old contents"
    left = temps(tmp_path)
    assert len(left) == 1, left
    assert sweep(tmp_path) == left
    assert temps(tmp_path) == []


# --------------------------------------------------------------------------- a tmpfs that fills up
def small_tmpfs(path: Path, size: str = "64k") -> contextlib.AbstractContextManager[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (root only); unmounted afterwards."""
    return mounted_tmpfs(path, size, "mounting a tmpfs needs root (CI runs as root)")


def test_atomic_write_on_full_tmpfs(tmp_path: Path) -> None:
    """A write bigger than the free space: ENOSPC, old file intact, no temp left, space reusable."""
    from racefree import atomic_write

    with small_tmpfs(tmp_path / "mnt") as mnt:
        atomic_write(mnt / "f", b"o" * 20_000)
        with pytest.raises(OSError) as info:
            atomic_write(mnt / "f", b"n" * 60_000)
        assert info.value.errno == errno.ENOSPC
        assert (mnt / "f").read_bytes() == b"o" * 20_000
        assert temps(mnt) == []
        atomic_write(mnt / "f", b"n" * 30_000)  # the temp's space was given back
        assert (mnt / "f").read_bytes() == b"n" * 30_000


# --------------------------------------------------------------------------- JsonFile
@needs_strace
@pytest.mark.parametrize(
    ("inject", "errno_name", "type_name"),
    [(f"inject={FSYNC}:error=EIO:when=1", "EIO", "DurabilityError"),
     (f"inject={RENAME}:error=ENOSPC:when=1", "ENOSPC", "OSError")],
    ids=["fsync-EIO", "rename-ENOSPC"],
)
def test_jsonfile_update_faults(
    tmp_path: Path, inject: str, errno_name: str, type_name: str
) -> None:
    """JsonFile.update in a real process with a failing syscall: typed error, document intact."""
    from racefree import JsonFile

    JsonFile(tmp_path / "doc.json").write({"n": 1})
    rc, result = run_child(
        "racefree.JsonFile('doc.json').update(lambda d: {'n': d['n'] + 1})", [inject], tmp_path
    )
    assert rc == 0
    _expect_error(result, errno_name, type_name)
    assert JsonFile(tmp_path / "doc.json").read() == {"n": 1}
    assert temps(tmp_path) == []


@needs_strace
def test_jsonfile_sigkill_at_rename(tmp_path: Path) -> None:
    """SIGKILL at the rename of JsonFile.update: the old document, the lock free for the next one.
    """
    from racefree import JsonFile, sweep

    JsonFile(tmp_path / "doc.json").write({"n": 1})
    rc, _ = run_child(
        "racefree.JsonFile('doc.json').update(lambda d: {'n': d['n'] + 1})",
        [f"inject={RENAME}:signal=SIGKILL:when=1"], tmp_path,
    )
    assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL), rc
    jf = JsonFile(tmp_path / "doc.json", timeout=30)
    assert jf.read() == {"n": 1}
    assert len(sweep(tmp_path)) == 1
    assert jf.update(lambda d: {"n": d["n"] + 1}) == {"n": 2}  # the lock died with its holder


# --------------------------------------------------------------------------- AppendLog
def _log_records(path: Path) -> list[Any]:
    from racefree import AppendLog

    with AppendLog(path) as log:
        log.check()
        return list(log.read(0))


@needs_strace
def test_log_fdatasync_eio(tmp_path: Path) -> None:
    """fdatasync EIO on append: DurabilityError (never retried), the log opens, old records intact.
    """
    from racefree import AppendLog

    with AppendLog(tmp_path / "l.log") as log:
        log.append({"i": 0})
    rc, result = run_child(
        """
        log = racefree.AppendLog('l.log')
        try:
            log.append({'i': 1})
        except racefree.DurabilityError:
            try:
                log.append({'i': 2})
            except racefree.DurabilityError as again:
                raise again
            raise AssertionError('the handle wrote again after a failed fsync')
        """,
        [f"inject={FSYNC}:error=EIO:when=1"], tmp_path,
    )
    assert rc == 0
    _expect_error(result, "EIO", "DurabilityError")
    assert _log_records(tmp_path / "l.log") in ([{"i": 0}], [{"i": 0}, {"i": 1}])


@needs_strace
def test_log_compact_rename_enospc(tmp_path: Path) -> None:
    """rename ENOSPC during compaction: OSError, and the log means exactly what it meant."""
    from racefree import AppendLog

    with AppendLog(tmp_path / "l.log") as log:
        for i in range(5):
            log.append({"i": i})
    rc, result = run_child(
        "racefree.AppendLog('l.log').compact(lambda s, r: s + r['i'], 0)",
        [f"inject={RENAME}:error=ENOSPC:when=1"], tmp_path,
    )
    assert rc == 0
    _expect_error(result, "ENOSPC", "OSError")
    with AppendLog(tmp_path / "l.log") as log:
        assert log.replay(lambda s, r: s + r["i"], 0) == 10 and len(log) == 5
    assert temps(tmp_path) == []


@needs_strace
def test_log_sigkill_at_append(tmp_path: Path) -> None:
    """SIGKILL at an append's write: every earlier record there, the log opens and takes appends."""
    from racefree import AppendLog

    with AppendLog(tmp_path / "l.log") as log:
        log.append({"i": 0})
    rc, _ = run_child(
        "racefree.AppendLog('l.log').append({'i': 1, 'pad': 'x' * 5000})",
        ["inject=pwrite64:signal=SIGKILL:when=1"], tmp_path,
    )
    assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL), rc
    assert _log_records(tmp_path / "l.log") == [{"i": 0}]
    with AppendLog(tmp_path / "l.log") as log:
        log.append({"i": 2})
    assert _log_records(tmp_path / "l.log") == [{"i": 0}, {"i": 2}]


# --------------------------------------------------------------------------- Store
STORE = "racefree.Store('s', _segment_size=8192)"


def _store_docs(path: Path) -> dict[str, Any]:
    from racefree import Store

    with Store(path, _segment_size=8192) as s:
        s.check()
        return dict(s.items())


@needs_strace
def test_store_fdatasync_eio(tmp_path: Path) -> None:
    """fdatasync EIO on put: DurabilityError, the store refuses writes, reopens with old data."""
    from racefree import Store

    with Store(tmp_path / "s", _segment_size=8192) as s:
        s.put("a", {"n": 1})
    rc, result = run_child(
        f"""
        s = {STORE}
        try:
            s.put('b', {{'n': 2}})
        except racefree.DurabilityError:
            try:
                s.put('c', {{'n': 3}})
            except racefree.DurabilityError as again:
                raise again
            raise AssertionError('the store wrote again after a failed fsync')
        """,
        [f"inject={FSYNC}:error=EIO:when=1"], tmp_path,
    )
    assert rc == 0
    _expect_error(result, "EIO", "DurabilityError")
    assert _store_docs(tmp_path / "s") in ({"a": {"n": 1}}, {"a": {"n": 1}, "b": {"n": 2}})


@needs_strace
def test_store_compact_rename_enospc(tmp_path: Path) -> None:
    """rename ENOSPC while compaction publishes its MANIFEST: OSError, every document intact."""
    from racefree import Store

    with Store(tmp_path / "s", _segment_size=8192) as s:
        for i in range(6):
            s.put(f"k{i % 3}", {"i": i})
        s.delete("k0")
    rc, result = run_child(f"{STORE}.compact()", [f"inject={RENAME}:error=ENOSPC:when=1"],
                           tmp_path)
    assert rc == 0
    _expect_error(result, "ENOSPC", "OSError")
    assert _store_docs(tmp_path / "s") == {"k1": {"i": 4}, "k2": {"i": 5}}
    assert temps(tmp_path) == []


@needs_strace
def test_store_sigkill_at_fdatasync(tmp_path: Path) -> None:
    """SIGKILL at a put's fdatasync: the store reopens, old documents intact, the new one maybe."""
    from racefree import Store

    with Store(tmp_path / "s", _segment_size=8192) as s:
        s.put("a", {"n": 1})
    rc, _ = run_child(f"{STORE}.put('b', {{'n': 2}})",
                      [f"inject={FSYNC}:signal=SIGKILL:when=1"], tmp_path)
    assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL), rc
    assert _store_docs(tmp_path / "s") in ({"a": {"n": 1}}, {"a": {"n": 1}, "b": {"n": 2}})
    with Store(tmp_path / "s", _segment_size=8192) as s:
        s.put("c", {"n": 3})
        assert s.get("c") == {"n": 3}


# --------------------------------------------------------------------------- full tmpfs: log, store
def test_log_on_full_tmpfs(tmp_path: Path) -> None:
    """Appends until the tmpfs is full: ENOSPC reaches the caller, every acked record stays."""
    from racefree import AppendLog

    with small_tmpfs(tmp_path / "mnt") as mnt:
        acked = []
        with AppendLog(mnt / "l.log") as log:
            with pytest.raises(OSError) as info:
                for i in range(10_000):
                    log.append({"i": i, "pad": "z" * 1000})
                    acked.append(i)
            assert info.value.errno == errno.ENOSPC
        assert len(acked) > 10
        assert [r["i"] for r in _log_records(mnt / "l.log")] == acked
        assert temps(mnt) == []


def test_store_on_full_tmpfs(tmp_path: Path) -> None:
    """Puts until the tmpfs is full: a typed ENOSPC, every acked document stays, reads work."""
    from racefree import Store

    with small_tmpfs(tmp_path / "mnt") as mnt:
        acked: dict[str, Any] = {}
        with Store(mnt / "s", _segment_size=8192) as s:
            with pytest.raises(OSError) as info:
                for i in range(10_000):
                    s.put(f"k{i}", {"pad": "z" * 1000})
                    acked[f"k{i}"] = {"pad": "z" * 1000}
            assert info.value.errno == errno.ENOSPC
            assert s.get("k0") == {"pad": "z" * 1000}
        assert len(acked) > 10
        assert _store_docs(mnt / "s") == acked
        assert temps(mnt) == []


# --------------------------------------------------------------------------- FileLock, LockFile
_HOLD_THEN_WRITE = """
lock = racefree.{cls}('x.lock')
lock.acquire()
os.close(os.open('inside', os.O_WRONLY | os.O_CREAT, 0o644))
os.rmdir('marker')  # SIGKILLed here, inside the critical section
"""


@needs_strace
@pytest.mark.parametrize("cls", ["FileLock", "LockFile"])
def test_lock_holder_killed_inside(tmp_path: Path, cls: str) -> None:
    """A holder SIGKILLed inside its critical section: the next acquirer gets the lock at once."""
    import racefree

    (tmp_path / "marker").mkdir()
    rc, result = run_child(_HOLD_THEN_WRITE.format(cls=cls),
                           ["inject=rmdir:signal=SIGKILL:when=1"], tmp_path)
    assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL), (rc, result)
    assert (tmp_path / "inside").exists()  # it was killed while it held the lock
    lock = getattr(racefree, cls)(tmp_path / "x.lock", timeout=10)
    lock.acquire()  # LockTimeout here: the dead holder's lock was never released or reclaimed
    try:
        if cls == "LockFile":
            assert lock.token == 2  # the dead holder had 1: fencing tokens keep growing
    finally:
        lock.release()


@needs_strace
def test_lockfile_fsync_eio_while_acquiring(tmp_path: Path) -> None:
    """fsync EIO while a LockFile writes its owner record: an OSError, nothing held or left."""
    rc, result = run_child(
        "racefree.LockFile('x.lock', timeout=2).acquire()",
        [f"inject={FSYNC}:error=EIO:when=1"], tmp_path,
    )
    assert rc == 0
    _expect_error(result, "EIO", "OSError")
    assert not (tmp_path / "x.lock").exists()
    from racefree import LockFile

    with LockFile(tmp_path / "x.lock", timeout=5):
        pass


@needs_strace
def test_store_creation_killed_at_manifest_rename_can_be_opened(tmp_path: Path) -> None:
    """SIGKILL while a new store writes its first MANIFEST: the next open must succeed.

    The killed creator leaves seg-00000001.rfs, the lock files and a MANIFEST temp,
    but no MANIFEST. Nothing was ever stored there, so opening must finish the
    creation, not refuse the directory as "not a racefree store" for ever.
    """
    from racefree import Store

    rc, _ = run_child("racefree.Store('s')", [f"inject={RENAME}:signal=SIGKILL:when=1"], tmp_path)
    assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL), rc
    assert not (tmp_path / "s" / "MANIFEST").exists()
    with Store(tmp_path / "s") as s:  # FormatError here: the directory is locked out for good
        s.put("a", {"n": 1})
        assert s.get("a") == {"n": 1}
