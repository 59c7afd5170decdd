"""Races on demand: :func:`race` calls a function from many processes, threads and tasks at once.

The usual concurrency test runs two threads once and passes by luck: races
depend on timing. :func:`race` starts real interpreters (``spawn``: nothing is
inherited but what is passed), runs ``threads`` threads in each and, for a
coroutine function, ``tasks`` asyncio tasks on each thread's own event loop.
Before every round all callers wait at one barrier and are released together,
so every round is a fresh race. The whole run is bounded by ``timeout``:
past it every process is killed, and every process is always reaped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import multiprocessing
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["Call", "RaceResult", "race"]


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of the raced function.

    ``start`` and ``end`` are ``time.monotonic()`` seconds, a clock every process of
    the machine shares; ``value`` is what the call returned, ``error`` what it raised
    (an exception that cannot be pickled arrives as a ``RuntimeError`` naming it),
    ``traceback`` the formatted traceback of ``error``.
    """

    process: int
    thread: int
    task: int
    round: int
    start: float
    end: float
    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass
class RaceResult:
    """Every call of a :func:`race`, ordered by round, process, thread and task."""

    calls: list[Call]

    @property
    def errors(self) -> list[BaseException]:
        """What the calls that failed raised, in the order they started."""
        failed = sorted((c for c in self.calls if c.error is not None), key=lambda c: c.start)
        return [c.error for c in failed if c.error is not None]

    @property
    def values(self) -> list[Any]:
        """What the calls that succeeded returned (in ``calls`` order)."""
        return [c.value for c in self.calls if c.error is None]

    def raise_errors(self) -> None:
        """Raise the error of the first call (by start time) that failed, if any."""
        if self.errors:
            raise self.errors[0]

    def max_overlap(self) -> int:
        """The most calls that were running at one instant (how much the race overlapped)."""
        edges = sorted([(c.start, 1) for c in self.calls] + [(c.end, -1) for c in self.calls])
        running = best = 0
        for _, step in edges:
            running += step
            best = max(best, running)
        return best


def race(
    fn: Callable[..., Any],
    *args: Any,
    processes: int = 4,
    threads: int = 1,
    tasks: int = 1,
    rounds: int = 1,
    timeout: float = 60.0,
    **kwargs: Any,
) -> RaceResult:
    """Call ``fn(*args, **kwargs)`` from ``processes x threads x tasks`` callers at once.

    Each caller calls it ``rounds`` times; before each round every caller waits at
    one barrier. ``fn`` must be importable by name in a fresh interpreter (a
    module-level function; ``functools.partial`` of one works), and ``args``,
    ``kwargs`` and what it returns must pickle. ``tasks > 1`` needs a coroutine
    function: each thread then runs ``tasks`` tasks on its own event loop (a
    coroutine function with ``tasks=1`` runs one task per thread).

    Returns a :class:`RaceResult` with one :class:`Call` per call: an exception
    raised by ``fn`` is recorded there, not raised (``raise_errors()`` re-raises the
    first). A process that dies before it reports gives a ``ChildProcessError`` for
    each of its calls. Raises ``TimeoutError`` when the calls have not all finished
    after ``timeout`` seconds (every process is killed first); every process is
    reaped before this returns or raises.
    """
    for name, value in (("processes", processes), ("threads", threads), ("tasks", tasks),
                        ("rounds", rounds)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"race: {name} must be an int >= 1, not {value!r}")
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"race: timeout must be a positive number of seconds, not {timeout!r}")
    is_async = inspect.iscoroutinefunction(fn)
    if tasks > 1 and not is_async:
        raise ValueError("race: tasks > 1 needs a coroutine function (async def)")
    try:
        payload = pickle.dumps((fn, args, kwargs))
    except Exception as exc:
        raise TypeError(
            f"race: {fn!r} and its arguments must pickle, so that a fresh interpreter can "
            f"call it (a module-level function, not a lambda or a local function): {exc}"
        ) from exc

    ctx = multiprocessing.get_context("spawn")
    deadline = time.monotonic() + timeout
    barrier = ctx.Barrier(processes * threads)
    procs: list[Any] = []
    conns: dict[Connection, int] = {}
    reports: dict[int, list[Call]] = {}
    try:
        for p in range(processes):
            mine, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child, name=f"race-{p}", daemon=True,
                args=(payload, barrier, theirs, p, threads, tasks, rounds, is_async),
            )
            proc.start()
            theirs.close()  # the child holds the only write end: EOF when it dies
            procs.append(proc)
            conns[mine] = p
        while conns:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"race: {len(conns)} of {processes} processes had not finished after "
                    f"{timeout} s; every process was killed"
                )
            for conn in wait(list(conns), timeout=left):
                assert isinstance(conn, Connection)
                p = conns.pop(conn)
                reports[p] = _receive(conn, p, procs[p], threads, tasks, rounds)
                conn.close()
                if any(isinstance(c.error, ChildProcessError) for c in reports[p]):
                    # A dead process never reaches the next barrier: break it, so that
                    # the others record that instead of waiting until the timeout.
                    barrier.abort()
    finally:
        for conn in conns:
            conn.close()
        _reap(procs, deadline)
    calls = [c for p in sorted(reports) for c in reports[p]]
    calls.sort(key=lambda c: (c.round, c.process, c.thread, c.task))
    return RaceResult(calls)


def _receive(
    conn: Connection, p: int, proc: Any, threads: int, tasks: int, rounds: int
) -> list[Call]:
    try:
        return list(conn.recv())
    except (EOFError, OSError):
        proc.join(5)
        err = ChildProcessError(
            f"race: process {p} ended (exit code {proc.exitcode}) before it reported its calls"
        )
        now = time.monotonic()
        return [Call(p, t, k, r, now, now, error=err)
                for r in range(rounds) for t in range(threads) for k in range(tasks)]


def _reap(procs: list[Any], deadline: float) -> None:
    """Wait for every process until ``deadline`` (at least a moment); kill what still runs."""
    for proc in procs:
        if proc.pid is None:
            continue
        proc.join(max(0.0, deadline - time.monotonic()) if proc.is_alive() else None)
        if proc.is_alive():
            proc.kill()
            proc.join()


# --------------------------------------------------------------------------- in the child
def _child(
    payload: bytes, barrier: Any, conn: Connection, process: int, threads: int, tasks: int,
    rounds: int, is_async: bool,
) -> None:
    fn, args, kwargs = pickle.loads(payload)
    calls: list[Call] = []
    lock = threading.Lock()

    def record(call: Call) -> None:
        with lock:
            calls.append(_sendable(call))

    def one_call(thread: int, task: int, rnd: int) -> None:
        start = time.monotonic()
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:  # recorded for the parent, which decides
            record(Call(process, thread, task, rnd, start, time.monotonic(), error=exc,
                        traceback=traceback.format_exc()))
        else:
            record(Call(process, thread, task, rnd, start, time.monotonic(), value=value))

    async def one_task(thread: int, task: int, rnd: int, go: asyncio.Event) -> None:
        await go.wait()
        start = time.monotonic()
        try:
            value = await fn(*args, **kwargs)
        except BaseException as exc:  # recorded for the parent, which decides
            record(Call(process, thread, task, rnd, start, time.monotonic(), error=exc,
                        traceback=traceback.format_exc()))
        else:
            record(Call(process, thread, task, rnd, start, time.monotonic(), value=value))

    def broken(thread: int, rnd: int) -> None:
        """The barrier broke (another process died): this caller's remaining calls fail."""
        now = time.monotonic()
        err = ChildProcessError("race: another process died, so this round never started")
        for r in range(rnd, rounds):
            for k in range(tasks):
                record(Call(process, thread, k, r, now, now, error=err))

    async def loop_rounds(thread: int) -> None:
        loop = asyncio.get_running_loop()
        for rnd in range(rounds):
            # The tasks are created first and wait on one event, so that the barrier
            # releases them all in the same turn of the loop.
            go = asyncio.Event()
            pending = [asyncio.create_task(one_task(thread, k, rnd, go)) for k in range(tasks)]
            try:
                await loop.run_in_executor(None, barrier.wait)
            except threading.BrokenBarrierError:
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                broken(thread, rnd)
                return
            go.set()
            await asyncio.gather(*pending)

    def run_thread(thread: int) -> None:
        if is_async:
            asyncio.run(loop_rounds(thread))
            return
        for rnd in range(rounds):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                broken(thread, rnd)
                return
            one_call(thread, 0, rnd)

    workers = [threading.Thread(target=run_thread, args=(t,), daemon=True)
               for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    conn.send(calls)
    conn.close()


def _sendable(call: Call) -> Call:
    """``call`` with what cannot be pickled replaced by an error that names it."""
    try:
        pickle.dumps((call.value, call.error))
    except Exception as exc:
        what = "error" if call.error is not None else "return value"
        shown = call.error if call.error is not None else call.value
        return dataclasses.replace(call, value=None, error=RuntimeError(
            f"race: the {what} {type(shown).__name__}: {shown!r:.200} cannot be pickled "
            f"({exc})"), traceback=call.traceback)
    return call
