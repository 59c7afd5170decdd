"""Lock benchmark: racefree.FileLock against the raw flock floor and the peers.

Prints one markdown table: uncontended acquire+release (us), a 2-process
contended counter (ops/s, lost updates), and handoff latency from a release to
the waiter's acquire (us, median), then the ratios the targets are stated in.

    python benchmarks/bench_lock.py           # full run (about 2 minutes)
    python benchmarks/bench_lock.py --quick   # smoke run (seconds)

Peers run with their default settings (their polling intervals included), as
a user gets them. Rows:

- ``raw flock pair``: ``flock(LOCK_EX)`` / ``flock(LOCK_UN)`` on a descriptor kept open;
- ``raw open+flock``: ``open``, ``flock(LOCK_EX)``, ``flock(LOCK_UN)``, ``close`` per cycle;
- ``racefree.FileLock``;
- the peers: ``filelock.FileLock``, ``portalocker.Lock``, ``fasteners.InterProcessLock``.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

KINDS = ("bare", "open", "racefree", "filelock", "portalocker", "fasteners")
LABELS = {
    "bare": "raw flock pair (open fd)",
    "open": "raw open+flock+unlock+close",
    "racefree": "racefree.FileLock",
    "filelock": "filelock.FileLock",
    "portalocker": "portalocker.Lock",
    "fasteners": "fasteners.InterProcessLock",
}


def make(kind: str, path: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """(acquire, release) for one lock of ``kind`` on ``path``; both block as needed."""
    if kind == "bare":
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        # functools.partial adds no Python frame: this is the bare system-call pair.
        return (functools.partial(fcntl.flock, fd, fcntl.LOCK_EX),
                functools.partial(fcntl.flock, fd, fcntl.LOCK_UN))
    if kind == "open":
        box: list[int] = []

        def acquire() -> None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
            box.append(fd)

        def release() -> None:
            fd = box.pop()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        return acquire, release
    if kind == "racefree":
        import racefree

        lock = racefree.FileLock(path)
        return lock.acquire, lock.release
    if kind == "filelock":
        import filelock

        fl = filelock.FileLock(path)
        return fl.acquire, fl.release
    if kind == "portalocker":
        import portalocker

        pl = portalocker.Lock(path, timeout=120)
        return pl.acquire, pl.release
    if kind == "fasteners":
        import fasteners

        il = fasteners.InterProcessLock(path)
        return il.acquire, il.release
    raise ValueError(kind)


# -- uncontended ---------------------------------------------------------------

def uncontended(kind: str, path: str, slice_s: float, repeats: int) -> float:
    """Best of ``repeats`` runs of about ``slice_s`` seconds each: us per acquire+release."""
    acquire, release = make(kind, path)
    t0 = time.perf_counter()
    for _ in range(200):  # warm up (and create the file), and calibrate
        acquire()
        release()
    per_op = (time.perf_counter() - t0) / 200
    n = max(200, int(slice_s / per_op))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            acquire()
            release()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


# -- the child side of the multi-process measurements ---------------------------

def _counter_worker(kind: str, path: str, counter: str, seconds: float) -> None:
    acquire, release = make(kind, path)
    cfd = os.open(counter, os.O_RDWR | os.O_CLOEXEC)
    print("ready", flush=True)
    sys.stdin.readline()  # start barrier
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        acquire()
        value = int.from_bytes(os.pread(cfd, 8, 0), "little")
        os.pwrite(cfd, (value + 1).to_bytes(8, "little"), 0)
        release()
        done += 1
    print(done, flush=True)


def _handoff_worker(kind: str, path: str) -> None:
    """On each "go" line: acquire (waiting), stamp the time, release, report the stamp."""
    acquire, release = make(kind, path)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        acquire()
        stamp = time.monotonic()
        release()
        print(repr(stamp), flush=True)


def _spawn(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"worker {args} did not start")
    return proc


def contended(kind: str, workdir: str, seconds: float) -> tuple[float, int, float]:
    """2 processes incrementing one counter under the lock.

    Returns (ops/s, lost updates, the smaller process's share of the ops): a
    lock that lets one process run alone for long stretches scores ops but
    starves the other.
    """
    path = os.path.join(workdir, f"{kind}.counter.lock")
    counter = os.path.join(workdir, f"{kind}.counter")
    with open(counter, "wb") as f:
        f.write(bytes(8))
    procs = [_spawn("counter", kind, path, counter, str(seconds)) for _ in range(2)]
    try:
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        counts = []
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 120)
            counts.append(int(out.strip()))
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with open(counter, "rb") as f:
        final = int.from_bytes(f.read(8), "little")
    share = min(counts) / sum(counts) if sum(counts) else 0.0
    return sum(counts) / elapsed, sum(counts) - final, share


def handoff(kind: str, workdir: str, rounds: int, budget_s: float) -> tuple[float, int]:
    """Median microseconds from the holder's release to the waiting process's acquire.

    At most ``rounds`` samples, and no new sample after ``budget_s`` seconds
    (a polling peer takes up to its poll interval per sample). Returns (median, samples).
    """
    path = os.path.join(workdir, f"{kind}.handoff.lock")
    acquire, release = make(kind, path)
    child = _spawn("handoff", kind, path)
    assert child.stdin is not None and child.stdout is not None
    samples: list[float] = []
    start = time.monotonic()
    try:
        while len(samples) < rounds and (len(samples) < 5 or time.monotonic() - start < budget_s):
            acquire()
            child.stdin.write("go\n")
            child.stdin.flush()
            time.sleep(0.003)  # let the child reach its blocking acquire (a benchmark, not a test)
            t0 = time.monotonic()
            release()
            stamp = float(child.stdout.readline())
            samples.append(stamp - t0)
        child.stdin.write("stop\n")
        child.stdin.flush()
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return statistics.median(samples) * 1e6, len(samples)


# -- the table -------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated rows")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        role, *rest = args.worker
        if role == "counter":
            _counter_worker(rest[0], rest[1], rest[2], float(rest[3]))
        else:
            _handoff_worker(rest[0], rest[1])
        return 0

    # (seconds per uncontended run, runs, contended seconds, handoff samples, handoff budget)
    slice_s, repeats, seconds, rounds, budget = (
        (0.05, 2, 0.5, 10, 1.0) if args.quick else (0.3, 5, 4.0, 200, 8.0)
    )
    kinds = [k for k in args.kinds.split(",") if k]
    rows: dict[str, tuple[float, float, int, float, float]] = {}
    samples: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench_lock.") as workdir:
        for kind in kinds:
            un = uncontended(kind, os.path.join(workdir, f"{kind}.lock"), slice_s, repeats)
            ops, lost, share = contended(kind, workdir, seconds)
            lat, samples[kind] = handoff(kind, workdir, rounds, budget)
            rows[kind] = (un, ops, lost, share, lat)
            print(f"  measured {kind}", file=sys.stderr, flush=True)

    print(f"Python {sys.version.split()[0]}, {sys.platform}, {os.cpu_count()} CPUs"
          f"{' (--quick smoke run)' if args.quick else ''}; contended: 2 processes x {seconds}s;"
          f" handoff: median of up to {rounds} samples in {budget}s per row\n")
    print("| lock | uncontended acquire+release (us) | 2-process counter (ops/s) "
          "| lost updates | smaller process's share | handoff latency (us, median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, (un, ops, lost, share, lat) in rows.items():
        print(f"| {LABELS[kind]} | {un:.2f} | {ops:,.0f} | {lost} | {100 * share:.0f}% "
              f"| {lat:,.0f} (n={samples[kind]}) |")
    if "racefree" in rows:
        un, ops, _, _, lat = rows["racefree"]
        print()
        if "bare" in rows:
            print(f"- uncontended vs raw flock pair: {un / rows['bare'][0]:.2f}x (target <= 2.5x)")
        if "open" in rows:
            print(f"- uncontended vs raw open+flock cycle: {un / rows['open'][0]:.2f}x"
                  " (target <= 1.0x)")
            print(f"- contended vs raw open+flock loop: {ops / rows['open'][1]:.2f}x"
                  " (target >= 1.0x)")
        peers = [k for k in ("filelock", "portalocker", "fasteners") if k in rows]
        if peers:
            best = max(peers, key=lambda k: rows[k][1])
            print(f"- contended vs best peer ({best}): {ops / rows[best][1]:.2f}x (target >= 3x)")
            fastest = min(peers, key=lambda k: rows[k][4])
            print(f"- handoff vs best peer ({fastest}): {rows[fastest][4] / lat:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
