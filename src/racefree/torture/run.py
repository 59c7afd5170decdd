"""``racefree torture DIR``: do racefree's guarantees hold on this file system?

For a user with a network mount, a container volume or a laptop: probe what
the file system offers (:mod:`racefree.torture.probe`), then run worker
processes (:mod:`racefree.torture.worker`) that mix JSON-file updates, store
updates/puts/deletes/batches/compactions, log appends and FileLock and
LockFile critical sections in one fresh directory under DIR, SIGKILL one of
them at random every ``kill_interval`` seconds (on average) and restart it,
and at the end check the final state against every acknowledged operation
(:mod:`racefree.torture.verify`). The verdict is "pass" only if every check
holds; the run's directory is removed on a pass and kept (for a look) on a fail.

This checks crash safety against process kills, exclusion and atomicity on a
real mount. It cannot check power loss: see the crash-state enumeration in
the test suite (``docs/proof.md``).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

from racefree import _fs, _trust
from racefree.torture.probe import ProbeReport, child_env, probe
from racefree.torture.verify import Row, verify
from racefree.torture.worker import KINDS, LOCK_TIMEOUT, URL_ENV

#: After the end and a full lock wait (``LOCK_TIMEOUT``), how long a worker may still
#: take to finish its operation; one still in it then hangs, and the run fails.
FINISH_GRACE = 30.0


@dataclasses.dataclass
class Options:
    directory: str
    processes: int = 8
    seconds: float = 60.0
    kill_interval: float = 1.0  # mean seconds between two SIGKILLs; 0: no kills
    seed: int | None = None
    kinds: tuple[str, ...] = KINDS
    keep: bool = False
    url: str | None = None  # postgresql://: the store and lock kinds run against it


@dataclasses.dataclass
class Progress:
    """What the run has done so far (for the progress display)."""

    elapsed: float
    seconds: float
    acked: Counter[str]
    kills: int
    restarts: int


@dataclasses.dataclass
class Result:
    root: str
    probe: ProbeReport
    rows: list[Row]
    kills: int
    seconds: float
    seed: int

    @property
    def ok(self) -> bool:
        return all(not r.problems for r in self.rows)


class _Proc:
    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.incarnation = -1
        self.popen: subprocess.Popen[bytes] | None = None


class _AckCounter:
    """Counts acknowledgements by reading only what the workers appended since last time."""

    def __init__(self, ack_dir: str) -> None:
        self.ack_dir = ack_dir
        self.offsets: dict[str, int] = {}
        self.partial: dict[str, bytes] = {}
        self.acked: Counter[str] = Counter()

    def poll(self) -> Counter[str]:
        for name in _fs.listdir(self.ack_dir):
            if name.endswith(".err"):
                continue
            path = os.path.join(self.ack_dir, name)
            fd = _fs.open(path, os.O_RDONLY)
            try:
                at = self.offsets.get(name, 0)
                chunk = _fs.pread(fd, 1 << 20, at)
            finally:
                _fs.close(fd)
            self.offsets[name] = at + len(chunk)
            data = self.partial.pop(name, b"") + chunk
            lines = data.split(b"\n")
            if lines[-1]:
                self.partial[name] = lines[-1]
            for line in lines[:-1]:
                if line.startswith(b"A "):
                    self.acked[line.split()[1].decode()] += 1
        return self.acked


def _start(proc: _Proc, root: str, deadline: float, seed: int, kinds: str, url: str) -> None:
    proc.incarnation += 1
    err_path = os.path.join(root, "acks", f"w{proc.wid}.{proc.incarnation:05d}.err")
    err = _fs.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    # The URL (it may hold a password) goes through the environment, not the command line.
    env = {**child_env(), URL_ENV: url}
    try:
        proc.popen = subprocess.Popen(
            [sys.executable, "-m", "racefree.torture.worker", root, str(proc.wid),
             str(proc.incarnation), repr(deadline), str(seed), kinds],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
        )
    finally:
        _fs.close(err)


def run(opts: Options, show: Callable[[Progress], None] | None = None) -> Result:
    """Probe, torture and verify (see the module doc). Blocks for about ``opts.seconds``."""
    if opts.processes < 1:
        raise ValueError("--processes must be at least 1")
    if not opts.seconds > 0:
        raise ValueError("--seconds must be > 0")
    if not opts.kill_interval >= 0:
        raise ValueError("--kill-interval must be >= 0")
    unknown = [k for k in opts.kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown operation kinds {unknown}; known: {', '.join(KINDS)}")
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    # Links on the way are followed under racefree's rule: one that another user planted
    # in a shared directory is refused (UnsafePathError), not followed. Strictly: the
    # files torture makes are racefree's own, never made below a directory another user
    # made in a shared directory (they could swap torture's directory for a link).
    where = _trust.resolve(os.fspath(opts.directory), strict=True)
    if where.st is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), where.path)
    base = where.path
    if not stat.S_ISDIR(where.st.st_mode):
        raise NotADirectoryError(f"{base} is not a directory")
    root = os.path.join(base, f"racefree-torture-{os.getpid()}-{int(time.time())}")
    _fs.mkdir(root, 0o755)
    _fs.mkdir(os.path.join(root, "acks"), 0o755)
    probe_dir = os.path.join(root, "probe")
    _fs.mkdir(probe_dir, 0o755)
    report = probe(probe_dir)
    _remove_tree(probe_dir)

    kinds = ",".join(opts.kinds)
    url = opts.url or ""
    if url:
        from racefree.pg.driver import is_pg_url

        if not is_pg_url(url):
            from racefree.pg.driver import redact, secrets_in

            raise ValueError(
                f"--url must be a postgresql:// URL, not {redact(repr(url), secrets_in(url))}"
            )
    start = time.monotonic()
    deadline_wall = time.time() + opts.seconds
    procs = [_Proc(w) for w in range(opts.processes)]
    counter = _AckCounter(os.path.join(root, "acks"))
    kills = restarts = hung = 0
    try:
        for p in procs:
            _start(p, root, deadline_wall, seed, kinds, url)
        next_kill = _next(rng, opts.kill_interval)
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= opts.seconds:
                break
            for p in procs:  # a worker that died on its own (an exception) is restarted
                died = p.popen is not None and p.popen.poll() is not None
                if died and time.time() < deadline_wall:
                    restarts += 1
                    _start(p, root, deadline_wall, seed, kinds, url)
            if elapsed >= next_kill:
                victim = rng.choice(procs)
                assert victim.popen is not None
                if victim.popen.poll() is None:
                    victim.popen.send_signal(signal.SIGKILL)
                    victim.popen.wait()
                    kills += 1
                else:
                    restarts += 1  # it had exited on its own since the loop above looked
                _start(victim, root, deadline_wall, seed, kinds, url)
                next_kill = elapsed + _next(rng, opts.kill_interval)
            if show is not None:
                show(Progress(elapsed, opts.seconds, counter.poll(), kills, restarts))
            time.sleep(min(0.25, max(0.0, next_kill - elapsed)))
        # Let every worker finish the operation it is in (a lock wait is bounded).
        end_by = time.monotonic() + LOCK_TIMEOUT + FINISH_GRACE
        for p in procs:
            assert p.popen is not None
            try:
                code = p.popen.wait(timeout=max(0.1, end_by - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
                kills += 1
                hung += 1  # no operation may hang (a lock wait gives up after LOCK_TIMEOUT)
                continue
            if code != 0:
                # A worker exits 0 at the deadline; anything else (an exception, or a
                # signal we did not send: a crash, the OOM killer) is a worker that
                # died on its own, even one that left no traceback.
                restarts += 1
    finally:
        for p in procs:
            if p.popen is not None and p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()
    if show is not None:
        show(Progress(opts.seconds, opts.seconds, counter.poll(), kills, restarts))
    rows = verify(root, list(opts.kinds), opts.processes, url)
    rows.insert(0, _check_files(root))
    if restarts:
        rows[-1].problems.append(f"{restarts} workers exited on their own (see acks/*.err)")
    if hung:
        rows[-1].problems.append(f"{hung} workers were still in an operation "
                                 f"{LOCK_TIMEOUT + FINISH_GRACE:.0f} s after the end: hung, killed")
    result = Result(root, report, rows, kills, time.monotonic() - start, seed)
    if result.ok and not opts.keep:
        _remove_tree(root)
    return result


def _remove_tree(path: str) -> None:
    """Remove the run's directory (through the seam; it holds no symlinks of ours)."""
    for name in _fs.listdir(path):
        full = os.path.join(path, name)
        if stat.S_ISDIR(_fs.stat(full, follow_symlinks=False).st_mode):
            _remove_tree(full)
        else:
            _fs.unlink(full)
    _fs.rmdir(path)


def _next(rng: random.Random, mean: float) -> float:
    return rng.expovariate(1.0 / mean) if mean > 0 else float("inf")


def _check_files(root: str) -> Row:
    """Every racefree file in the run's directory passes ``racefree check``."""
    from racefree.check.checker import check_path

    row = Row("every file passes racefree check")
    try:
        for found in check_path(root):
            if not found.ok:
                row.problems.append(f"{found.path}: {found.detail}")
            else:
                row.acked += 1
    except Exception as exc:  # an error while checking is itself a finding
        row.problems.append(f"{type(exc).__name__}: {exc}")
    return row
