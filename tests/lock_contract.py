"""The lock contract: one generic check run against every way of locking.

A *workload* is a set of holders (threads, asyncio tasks, real processes, or
all of them at once) that repeatedly take one lock and, inside it:

- raise an "inside" flag: a writer creates ``inside.w`` with ``O_EXCL`` and
  looks for reader markers; a reader creates its own marker and looks for
  ``inside.w``. Every sighting of another holder is a recorded violation;
- a writer does a read-modify-write of a counter file (exact count at the end);
- record its interval ``(enter, exit)`` from ``time.monotonic()``, which is one
  clock for every process on Linux, so that :func:`check_intervals` can show
  that no writer's interval overlaps any other holder's.

Holders yield inside the critical section (``sleep(0)``, ``await
asyncio.sleep(0)``) so that the others get every chance to barge in.

Lock kinds (``spec``): ``"filelock"`` (exclusive FileLock), ``"filelock-shared"``
(FileLock, readers ``shared=True`` and writers exclusive), ``"lockfile"``
(``racefree.LockFile``). Run as a script, this module is one child process of
a workload: it reports ready on stdout, waits for "go" on stdin (the start
barrier), runs, and prints its intervals and violations as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SPECS = ("filelock", "filelock-shared", "lockfile")


@dataclasses.dataclass
class Workload:
    """Who takes the lock, and how often."""

    spec: str
    threads: int = 0  # holders that are threads, per process
    tasks: int = 0  # holders that are asyncio tasks (on one loop), per process
    iterations: int = 50  # acquisitions per holder
    share_instance: bool = True  # all holders of one process share one lock object (L3)
    writer_every: int = 3  # with filelock-shared: holder i is a writer if i % writer_every == 0


def make_lock(spec: str, path: str, writer: bool) -> Any:
    """A lock object of kind ``spec`` on ``path`` (a reader lock if not ``writer``)."""
    import racefree

    if spec == "filelock":
        return racefree.FileLock(path, timeout=60)
    if spec == "filelock-shared":
        return racefree.FileLock(path, shared=not writer, timeout=60)
    if spec == "lockfile":
        return racefree.LockFile(path, timeout=60)
    raise ValueError(spec)


def is_writer(wl: Workload, index: int) -> bool:
    return wl.spec != "filelock-shared" or index % wl.writer_every == 0


class _Body:
    """The critical section, shared by the holders of one process."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.counter = str(workdir / "counter")
        self.flag = str(workdir / "inside.w")
        self.violations: list[str] = []
        self.intervals: list[tuple[float, float, bool]] = []

    def enter(self, writer: bool, me: str) -> str | None:
        """Raise the inside flag; return the reader marker to remove at exit."""
        if writer:
            try:
                os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                self.violations.append(f"{me}: another writer inside")
            readers = [n for n in os.listdir(self.dir) if n.startswith("inside.r.")]
            if readers:
                self.violations.append(f"{me}: readers inside with a writer: {readers}")
            return None
        marker = str(self.dir / f"inside.r.{me}")
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        if os.path.exists(self.flag):
            self.violations.append(f"{me}: a writer inside with a reader")
        return marker

    def bump(self) -> None:
        """Read-modify-write the counter (lost if two writers interleave)."""
        try:
            with open(self.counter) as f:
                n = int(f.read() or "0")
        except FileNotFoundError:
            n = 0
        with open(self.counter, "w") as f:
            f.write(str(n + 1))

    def leave(self, writer: bool, marker: str | None) -> None:
        if writer:
            os.unlink(self.flag)
        elif marker is not None:
            os.unlink(marker)


def _thread_holder(body: _Body, lock: Any, writer: bool, me: str, n: int) -> None:
    try:
        _thread_rounds(body, lock, writer, me, n)
    except BaseException as exc:  # reported by run_contract, with the holder's name
        body.violations.append(f"{me}: {type(exc).__name__}: {exc}")


def _thread_rounds(body: _Body, lock: Any, writer: bool, me: str, n: int) -> None:
    for _ in range(n):
        with lock:
            t0 = time.monotonic()
            marker = body.enter(writer, me)
            time.sleep(0)
            if writer:
                body.bump()
            body.leave(writer, marker)
            t1 = time.monotonic()
        body.intervals.append((t0, t1, writer))


async def _task_holder(body: _Body, lock: Any, writer: bool, me: str, n: int) -> None:
    try:
        await _task_rounds(body, lock, writer, me, n)
    except Exception as exc:  # reported by run_contract, with the holder's name
        body.violations.append(f"{me}: {type(exc).__name__}: {exc}")


async def _task_rounds(body: _Body, lock: Any, writer: bool, me: str, n: int) -> None:
    for _ in range(n):
        async with lock:
            t0 = time.monotonic()
            marker = body.enter(writer, me)
            await asyncio.sleep(0)
            if writer:
                body.bump()
            await asyncio.sleep(0)
            body.leave(writer, marker)
            t1 = time.monotonic()
        body.intervals.append((t0, t1, writer))


def run_in_process(wl: Workload, lock_path: str, workdir: Path, tag: str) -> dict[str, Any]:
    """Run this process's share of the workload: threads and tasks at once."""
    body = _Body(workdir)
    holders = wl.threads + wl.tasks
    shared: dict[bool, Any] = {}

    def lock_for(index: int) -> tuple[Any, bool]:
        writer = is_writer(wl, index)
        if not wl.share_instance:
            return make_lock(wl.spec, lock_path, writer), writer
        if writer not in shared:
            shared[writer] = make_lock(wl.spec, lock_path, writer)
        return shared[writer], writer

    threads = []
    for i in range(wl.threads):
        lock, writer = lock_for(i)
        threads.append(threading.Thread(
            target=_thread_holder, args=(body, lock, writer, f"{tag}-t{i}", wl.iterations),
            daemon=True,
        ))

    async def tasks() -> None:
        coros = []
        for i in range(wl.threads, holders):
            lock, writer = lock_for(i)
            coros.append(_task_holder(body, lock, writer, f"{tag}-a{i}", wl.iterations))
        await asyncio.gather(*coros)

    for t in threads:
        t.start()
    try:
        if wl.tasks:
            asyncio.run(tasks())
    finally:
        for t in threads:
            t.join(300)
    return {"intervals": body.intervals, "violations": body.violations}


def check_intervals(intervals: list[tuple[float, float, bool]]) -> list[str]:
    """Every pair where a writer's interval overlaps another holder's interval."""
    bad = []
    end_any = end_writer = float("-inf")
    for start, end, writer in sorted(intervals):
        if start < end_writer or (writer and start < end_any):
            bad.append(f"overlap at {start:.6f} (writer={writer})")
        end_any = max(end_any, end)
        if writer:
            end_writer = max(end_writer, end)
    return bad


def expected_writes(wl: Workload, processes: int, in_parent: bool) -> int:
    per_process = sum(is_writer(wl, i) for i in range(wl.threads + wl.tasks)) * wl.iterations
    return per_process * (processes + (1 if in_parent else 0))


def run_contract(
    wl: Workload, tmp_path: Path, *, processes: int = 0, in_parent: bool = True,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Run the workload in this process and in ``processes`` children; assert the contract.

    Returns the merged results (intervals, counter) for extra checks.
    """
    lock_path = str(tmp_path / "the.lock")
    workdir = tmp_path / "work"
    workdir.mkdir()
    children: list[subprocess.Popen[str]] = []
    results: list[dict[str, Any]] = []
    try:
        for p in range(processes):
            children.append(subprocess.Popen(
                [sys.executable, __file__, json.dumps(dataclasses.asdict(wl)), lock_path,
                 str(workdir), f"p{p}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            ))
        for child in children:  # the start barrier: every child imported and ready
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.close()
            child.stdin = None  # communicate() must not flush it again
        if in_parent:
            results.append(run_in_process(wl, lock_path, workdir, "main"))
        for child in children:
            out, _ = child.communicate(timeout=timeout)
            assert child.returncode == 0, out
            results.append(json.loads(out))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    violations = [v for r in results for v in r["violations"]]
    intervals = [tuple(i) for r in results for i in r["intervals"]]
    assert violations == []
    assert check_intervals(intervals) == []  # type: ignore[arg-type]
    writes = expected_writes(wl, processes, in_parent)
    counter = workdir / "counter"
    assert (int(counter.read_text()) if writes else 0) == writes
    holders = (wl.threads + wl.tasks) * (processes + (1 if in_parent else 0))
    assert len(intervals) == holders * wl.iterations
    return {"intervals": intervals, "writes": writes}


def _child_main(argv: list[str]) -> int:
    wl = Workload(**json.loads(argv[0]))
    lock_path, workdir, tag = argv[1], Path(argv[2]), argv[3]
    import racefree  # noqa: F401 - imported before "ready", so the barrier covers start-up

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    result = run_in_process(wl, lock_path, workdir, tag)
    print(json.dumps(result), flush=True)
    return 0


# -- helpers for the process tests -------------------------------------------

HOLDER = r"""
import sys, racefree
lock = racefree.FileLock(sys.argv[1], shared=sys.argv[2] == "shared")
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""

TRY = r"""
import sys, racefree
lock = racefree.FileLock(sys.argv[1], shared=sys.argv[2] == "shared")
try:
    lock.acquire(timeout=float(sys.argv[3]))
except racefree.LockTimeout:
    print("timeout", flush=True)
else:
    print("acquired", flush=True)
"""


class Holder:
    """A child process holding a FileLock until told to release it."""

    def __init__(self, path: str | os.PathLike[str], shared: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, os.fspath(path), "shared" if shared else "excl"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "held":
            self.close()
            raise AssertionError(f"holder did not start: {line!r}")

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def try_in_child(path: str | os.PathLike[str], timeout: float, shared: bool = False) -> str:
    """"acquired" or "timeout": what a fresh process gets within ``timeout`` seconds."""
    out = subprocess.run(
        [sys.executable, "-c", TRY, os.fspath(path), "shared" if shared else "excl", str(timeout)],
        capture_output=True, text=True, timeout=timeout + 60, check=True,
    )
    return out.stdout.strip()


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
