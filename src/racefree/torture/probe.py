"""What a file system offers, measured before ``racefree torture`` trusts it.

Each probe runs real processes against the directory under test:

- ``flock`` across processes: a child must be refused a lock the parent holds
  and granted it once the parent lets go (pitfall L10: network mounts may
  emulate flock locally or not at all);
- ``O_EXCL`` across processes: a child's exclusive create of an existing file
  must fail (old NFS clients got this wrong; :class:`~racefree.LockFile` relies on it);
- rename atomicity for readers: a child replaces a file in a loop with
  :func:`~racefree.atomic_write` while this process reads it; every read must
  be one whole version;
- fsync timing: a sync that returns in microseconds did not reach stable
  storage (tmpfs, a write-back cache, disabled barriers): durability after a
  power loss cannot hold there, whatever the software does.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import time

from racefree import _fs

#: File-system types whose kernel locks may be emulated, local-only or absent.
NETWORK_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre",
                 "afs", "gpfs", "beegfs", "fuse", "virtiofs", "vboxsf", "vmhgfs")

_CHILD_TIMEOUT = 60.0


@dataclasses.dataclass
class Probe:
    """One measured property: a name, what was found, and whether it is good (None: info)."""

    name: str
    result: str
    ok: bool | None


@dataclasses.dataclass
class ProbeReport:
    probes: list[Probe]
    warnings: list[str]

    @property
    def flock_ok(self) -> bool:
        return all(p.ok is not False for p in self.probes if p.name.startswith("flock"))


def fs_type(path: str) -> str | None:
    """The type of the file system holding ``path`` (Linux, from /proc/mounts), or None."""
    try:
        text = _fs.read_file("/proc/self/mounts").decode(errors="replace")
    except OSError:
        return None
    real = _fs.realpath(path)
    best, kind = "", None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mnt = fields[1].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, fields[2]
    return kind


def child_env() -> dict[str, str]:
    """This environment, with the directory that holds this racefree first on PYTHONPATH."""
    # src/racefree/torture/probe.py -> src (not src/racefree: its logging/ would
    # then shadow the standard library's).
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _child(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter (racefree importable) and return its stdout."""
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=_CHILD_TIMEOUT, env=env, check=False,
    )
    if proc.returncode != 0:
        return "error: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return proc.stdout.strip()


_TRY_FLOCK = """
import fcntl, os, sys
from racefree import _fs
fd = _fs.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
try:
    _fs.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("acquired")
except BlockingIOError:
    print("refused")
"""

_TRY_EXCL = """
import os, sys
from racefree import _fs
try:
    _fs.close(_fs.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    print("created")
except FileExistsError:
    print("exists")
"""

_REWRITE = """
import sys, time
import racefree
path, size, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
blobs = [b"A" * size, b"B" * size]
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    racefree.atomic_write(path, blobs[n % 2], durable=False)
    n += 1
print(n)
"""


def probe_flock(root: str) -> list[Probe]:
    import fcntl

    path = os.path.join(root, "probe.flock")
    fd = _fs.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _fs.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            return [Probe("flock across processes", f"flock fails: {exc}", False)]
        held = _child(_TRY_FLOCK, path)
        _fs.flock(fd, fcntl.LOCK_UN)
        free = _child(_TRY_FLOCK, path)
    finally:
        _fs.close(fd)
        _fs.unlink(path)
    ok = held == "refused" and free == "acquired"
    detail = "excludes other processes" if ok else (
        f"while held another process got: {held!r}; once free: {free!r}")
    return [Probe("flock across processes", detail, ok)]


def probe_excl(root: str) -> Probe:
    path = os.path.join(root, "probe.excl")
    _fs.close(_fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    other = _child(_TRY_EXCL, path)
    _fs.unlink(path)
    ok = other == "exists"
    return Probe("O_EXCL create across processes",
                 "exclusive" if ok else f"a second create said {other!r}", ok)


def probe_rename(root: str, seconds: float = 0.5, size: int = 65536) -> Probe:
    import racefree

    path = os.path.join(root, "probe.rename")
    racefree.atomic_write(path, b"A" * size, durable=False)
    proc = subprocess.Popen(
        [sys.executable, "-c", _REWRITE, path, str(size), str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=child_env(),
    )
    reads = bad = 0
    try:
        end = time.monotonic() + seconds
        good = (b"A" * size, b"B" * size)
        while time.monotonic() < end and proc.poll() is None:
            if _fs.read_file(path) not in good:
                bad += 1
            reads += 1
        out, _ = proc.communicate(timeout=_CHILD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _fs.unlink(path)
    writes = out.strip() or "?"
    return Probe("rename atomic for readers",
                 f"{reads} reads during {writes} replacements, {bad} mixed or partial", bad == 0)


def probe_fsync(root: str, rounds: int = 15) -> tuple[Probe, float]:
    path = os.path.join(root, "probe.sync")
    fd = _fs.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    times: list[float] = []
    dir_times: list[float] = []
    try:
        for i in range(rounds):
            _fs.pwrite_all(fd, bytes([i]) * 4096, 4096 * i)
            t = time.perf_counter()
            _fs.fsync(fd)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            _fs.fsync_dir(root)
            dir_times.append(time.perf_counter() - t)
    finally:
        _fs.close(fd)
        _fs.unlink(path)
    med = statistics.median(times)
    result = (f"file {med * 1e3:.3f} ms, directory {statistics.median(dir_times) * 1e3:.3f} ms "
              f"(median of {rounds})")
    return Probe("fsync latency", result, None), med


def probe(root: str) -> ProbeReport:
    """Run every probe in ``root`` (an empty directory) and say what to watch out for."""
    warnings: list[str] = []
    kind = fs_type(root)
    probes = [Probe("file system type", kind or "unknown", None)]
    if kind is not None and any(kind == t or kind.startswith(t + ".") for t in NETWORK_TYPES):
        warnings.append(
            f"{kind} is a network or FUSE file system: kernel locks there may be emulated, "
            "local to one client or absent. Use racefree.LockFile (an O_EXCL lock file with "
            "leases) for locks shared across machines."
        )
    probes += probe_flock(root)
    if not probes[-1].ok:
        warnings.append(
            "flock does not exclude other processes here: FileLock (and the JSON file, log and "
            "store built on it) cannot be trusted on this file system. Use racefree.LockFile."
        )
    probes.append(probe_excl(root))
    if not probes[-1].ok:
        warnings.append("O_EXCL creates are not exclusive here: LockFile cannot be trusted either.")
    probes.append(probe_rename(root))
    if not probes[-1].ok:
        warnings.append("rename is not atomic for readers here: atomic_write cannot hold.")
    sync, med = probe_fsync(root)
    probes.append(sync)
    if med < 20e-6:
        what = "tmpfs keeps everything in memory" if kind == "tmpfs" else (
            "the device or mount likely does not flush to stable storage (a write-back cache, "
            "barriers off, or an in-memory file system)")
        warnings.append(
            f"fsync returns in {med * 1e6:.1f} µs: {what}. Process crashes are survived; "
            "a power loss may lose writes racefree reported durable."
        )
    return ProbeReport(probes, warnings)
