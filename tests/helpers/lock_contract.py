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


# -- other processes: a holder, and a one-shot attempt ----------------------------

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

HOLDER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from lock_contract import make_lock
lock = make_lock(sys.argv[2], sys.argv[3], sys.argv[4] == "writer")
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""

TRY = r"""
import sys, racefree
sys.path.insert(0, sys.argv[1])
from lock_contract import make_lock
lock = make_lock(sys.argv[2], sys.argv[3], sys.argv[4] == "writer")
try:
    lock.acquire(timeout=float(sys.argv[5]))
except racefree.LockTimeout:
    print("timeout", flush=True)
else:
    print("acquired", flush=True)
    lock.release()
"""


def _spec_of(spec: str | None, shared: bool) -> tuple[str, bool]:
    """(spec, writer) from the keyword forms Holder and try_in_child accept."""
    if spec is None:
        return ("filelock-shared", False) if shared else ("filelock", True)
    return spec, not shared


class Holder:
    """A child process holding a lock of kind ``spec`` until told to release it."""

    def __init__(
        self, path: str | os.PathLike[str], shared: bool = False, spec: str | None = None
    ) -> None:
        kind, writer = _spec_of(spec, shared)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, _TESTS_DIR, kind, os.fspath(path),
             "writer" if writer else "reader"],
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


def try_in_child(
    path: str | os.PathLike[str], timeout: float, shared: bool = False, spec: str | None = None
) -> str:
    """"acquired" or "timeout": what a fresh process gets within ``timeout`` seconds."""
    kind, writer = _spec_of(spec, shared)
    out = subprocess.run(
        [sys.executable, "-c", TRY, _TESTS_DIR, kind, os.fspath(path),
         "writer" if writer else "reader", str(timeout)],
        capture_output=True, text=True, timeout=timeout + 60, check=True,
    )
    return out.stdout.strip()


# -- the API contract: what every lock kind promises besides exclusion ----------

def in_thread(fn: Any, *args: Any) -> Any:
    """Run ``fn`` in another thread (another owner); return its result or raise its error."""
    out: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            out.append(("ok", fn(*args)))
        except BaseException as exc:
            out.append(("err", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive()
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


def check_reentrancy(spec: str, path: str) -> None:
    """Three acquires need three releases; another thread is kept out until the last."""
    from racefree import WouldBlock

    lock = make_lock(spec, path, True)
    for _ in range(3):
        lock.acquire()
    for _ in range(2):
        lock.release()
        assert lock.held_by_me
        try:
            in_thread(make_lock(spec, path, True).acquire_nowait)
        except WouldBlock:
            pass
        else:
            raise AssertionError("another thread got a reentrantly held lock")
    lock.release()
    assert not lock.locked
    try:
        lock.release()
    except RuntimeError:
        pass
    else:
        raise AssertionError("release of an unheld lock did not raise")


def check_timeout_nowait_between_threads(spec: str, path: str) -> None:
    """Another thread gets WouldBlock / LockTimeout, and holds nothing afterwards."""
    from racefree import LockTimeout, WouldBlock

    lock = make_lock(spec, path, True)
    other = make_lock(spec, path, True)
    with lock:
        for call, exc in ((other.acquire_nowait, WouldBlock), (lambda: other.acquire(0.05),
                                                              LockTimeout)):
            try:
                in_thread(call)
            except exc:
                pass
            else:
                raise AssertionError(f"{exc.__name__} not raised")
    assert not lock.locked
    in_thread(lambda: (other.acquire_nowait(), other.release()))


def check_cancel_while_waiting(spec: str, path: str) -> None:
    """A task cancelled while waiting behind another task holds nothing afterwards (L9)."""
    lock = make_lock(spec, path, True)

    async def main() -> None:
        await lock.acquire_async()
        waiter = asyncio.create_task(lock.acquire_async())
        for _ in range(5):
            await asyncio.sleep(0)
        waiter.cancel()
        try:
            await waiter
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the cancelled waiter got the lock")
        lock.release()
        assert not lock.locked
        async with lock:
            assert lock.held_by_me

    asyncio.run(main())
    assert not lock.locked


def check_async_timeout(spec: str, path: str) -> None:
    """acquire_async(timeout) behind another task raises LockTimeout, holding nothing."""
    from racefree import LockTimeout

    lock = make_lock(spec, path, True)

    async def main() -> None:
        async with lock:
            try:
                await asyncio.create_task(lock.acquire_async(timeout=0.05))
            except LockTimeout:
                pass
            else:
                raise AssertionError("LockTimeout not raised")
        assert not lock.locked

    asyncio.run(main())


def check_two_instances(spec: str, path: str) -> None:
    """Two instances on one path exclude each other; one thread holding both nests (L2)."""
    from racefree import WouldBlock

    a, b = make_lock(spec, path, True), make_lock(spec, path, True)
    with a:
        try:
            in_thread(b.acquire_nowait)
        except WouldBlock:
            pass
        else:
            raise AssertionError("a second instance got the lock in another thread")
    a.acquire()
    b.acquire()
    b.release()
    assert try_in_child(path, 0, spec=spec) == "timeout"  # a's hold is intact
    a.release()
    assert try_in_child(path, 30, spec=spec) == "acquired"


def check_kill_9(spec: str, path: str, within: float) -> float:
    """SIGKILL of a holder process: a waiter here gets the lock; returns the seconds it took."""
    from racefree import WouldBlock

    lock = make_lock(spec, path, True)
    got: list[float] = []
    with Holder(path, spec=spec) as holder:
        try:
            lock.acquire_nowait()
        except WouldBlock:
            pass
        else:
            raise AssertionError("the holder process did not hold the lock")

        def wait() -> None:
            lock.acquire(timeout=within)
            got.append(time.monotonic())

        t = threading.Thread(target=wait, daemon=True)
        t.start()
        killed = time.monotonic()
        holder.proc.kill()
        # Reap it at once: an unreaped child is a zombie whose pid and start
        # time still exist, which a lock file cannot tell from a live owner.
        holder.proc.wait(30)
        t.join(within + 60)
    assert len(got) == 1, "the waiter did not get the lock of a killed holder"
    assert lock.held_by_me is False  # the owner is the waiter thread, not this one
    assert lock.locked
    return got[0] - killed


def check_cross_process_timeout(spec: str, path: str) -> None:
    """A timed-out wait on another process holds nothing, even after that process releases."""
    from racefree import LockTimeout

    lock = make_lock(spec, path, True)
    with Holder(path, spec=spec) as holder:
        try:
            lock.acquire(timeout=0.1)
        except LockTimeout:
            pass
        else:
            raise AssertionError("LockTimeout not raised")
        assert not lock.locked
        holder.release()
        assert try_in_child(path, 30, spec=spec) == "acquired"


API_CHECKS = {
    "reentrancy": check_reentrancy,
    "timeout-nowait-threads": check_timeout_nowait_between_threads,
    "cancel-while-waiting": check_cancel_while_waiting,
    "async-timeout": check_async_timeout,
    "two-instances": check_two_instances,
    "cross-process-timeout": check_cross_process_timeout,
}


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
