"""Tests of ``racefree.LockFile``: the O_EXCL-style lock file with stale-lock recovery.

Exclusion, stale detection (proof of death, PID reuse, leases from another
host, malformed records), concurrent reclaimers (L7), lost-lock detection
(L8), fencing tokens, fork (L5), cancellation and timeouts (L9). Processes are
real interpreters behind a start barrier (a line on stdin); every wait is
bounded; children are always reaped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.testkit import check_bad_timeouts

import racefree
from racefree import LockFile, LockLost, LockTimeout, WouldBlock, _fs
from racefree.lockfile import disk as _disk
from racefree.lockfile import owner as owner

LINUX = sys.platform.startswith("linux")
WAIT = 60.0  # generous bound for anything that must happen (a busy machine)


# -- helpers -----------------------------------------------------------------------

def record(**overrides: Any) -> dict[str, Any]:
    """An owner record of this process, with fields overridden."""
    rec = owner.own_record(token=1000)
    rec.update(overrides)
    return rec


def write_lock(path: Path, content: dict[str, Any] | bytes) -> bytes:
    """Put a lock file at ``path`` as another (fake) holder would; its bytes."""
    data = content if isinstance(content, bytes) else owner.encode(content)
    path.write_bytes(data)
    return data


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=WAIT)
    return proc.pid


def leftovers(directory: Path, lock: Path) -> list[str]:
    """Names in ``directory`` other than the lock file and its token file."""
    return sorted(n for n in os.listdir(directory) if n not in (lock.name, lock.name + ".token"))


class Child:
    """A real interpreter running ``code``; talks by lines on stdin/stdout; always reaped."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def line(self, timeout: float = WAIT) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise TimeoutError("child said nothing")
        finally:
            sel.close()
        text = self.proc.stdout.readline()
        if not text:
            raise EOFError(f"child exited with {self.proc.wait(timeout=WAIT)}")
        return text.strip()

    def finish(self) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.wait(timeout=WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """A list to put children in; each is killed (if still running) and reaped after the test."""
    kids: list[Child] = []
    try:
        yield kids
    finally:
        for kid in kids:
            kid.kill()


# -- basics ----------------------------------------------------------------------------

def test_record_token_and_cleanup(tmp_path: Path) -> None:
    """The lock file holds this process's full record while held, and is gone after release."""
    path = tmp_path / "app.pid"
    lock = LockFile(path)
    with lock:
        rec = json.loads(path.read_bytes())
        assert rec["pid"] == os.getpid()
        assert rec["host"] == socket.gethostname()
        assert rec["token"] == lock.token == 1
        assert rec["racefree"] == 1
        if LINUX:
            stat = Path(f"/proc/{os.getpid()}/stat").read_bytes()
            assert rec["start_time"] == int(stat[stat.rfind(b")") + 2 :].split()[19])
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            assert rec["boot_id"] == boot
        assert lock.locked and lock.held_by_me and not lock.lost
    assert not path.exists()
    assert lock.token is None and not lock.locked
    assert (tmp_path / "app.pid.token").read_bytes() == b"1\n"
    assert leftovers(tmp_path, path) == []


def test_reentrant_and_release_errors(tmp_path: Path) -> None:
    """Holds are reentrant per owner; releasing what one does not hold is a RuntimeError."""
    lock = LockFile(tmp_path / "l")
    other = LockFile(tmp_path / "l")  # same path, same state
    with lock:
        with other:
            assert lock.token == 1
        assert (tmp_path / "l").exists()
        errors: list[BaseException] = []

        def foreign_release() -> None:
            try:
                lock.release()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=foreign_release)
        t.start()
        t.join(WAIT)
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert not (tmp_path / "l").exists()
    with pytest.raises(RuntimeError):
        lock.release()


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan")])
def test_bad_timeouts(tmp_path: Path, bad: float) -> None:
    """Negative or NaN timeouts are a ValueError, in the constructor and in acquire."""
    lock = check_bad_timeouts(functools.partial(LockFile, tmp_path / "l"), bad)
    assert not lock.locked and not (tmp_path / "l").exists()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_stale_after(tmp_path: Path, bad: float) -> None:
    """stale_after must be positive and finite."""
    with pytest.raises(ValueError):
        LockFile(tmp_path / "l", stale_after=bad)


def test_timeout_and_nowait_leave_nothing(tmp_path: Path) -> None:
    """While another thread holds it: nowait raises WouldBlock, a timeout LockTimeout; no trace."""
    path = tmp_path / "l"
    lock = LockFile(path)
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            done.wait(WAIT)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(WAIT)
        with pytest.raises(WouldBlock):
            lock.acquire_nowait()
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.05)
        with pytest.raises(LockTimeout):
            LockFile(path, timeout=0).acquire()
        assert not lock.held_by_me
    finally:
        done.set()
        t.join(WAIT)
    assert not path.exists()
    lock.acquire_nowait()  # nothing was left behind by the failed attempts
    assert lock.token == 2
    lock.release()
    assert leftovers(tmp_path, path) == []


def test_threads_exclusion(tmp_path: Path) -> None:
    """4 threads x 40 on one shared instance and on separate ones: exact count, never two inside."""
    path = tmp_path / "l"
    shared = LockFile(path)
    count = 0
    inside = 0
    violations = 0

    def work(lock: LockFile) -> None:
        nonlocal count, inside, violations
        for _ in range(40):
            with lock:
                inside += 1
                if inside != 1:
                    violations += 1
                v = count
                time.sleep(0)
                count = v + 1
                inside -= 1

    threads = [threading.Thread(target=work, args=(shared if i % 2 else LockFile(path),))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert (count, violations) == (160, 0)
    assert (tmp_path / "l.token").read_bytes() == b"160\n"


def test_async_tasks_exclusion_and_cancel(tmp_path: Path) -> None:
    """5 tasks x 20 sharing one instance: exact count; a cancelled waiter holds nothing."""
    path = tmp_path / "l"
    lock = LockFile(path)

    async def main() -> tuple[int, int]:
        count = 0
        inside = 0
        violations = 0

        async def work() -> None:
            nonlocal count, inside, violations
            for _ in range(20):
                async with lock:
                    inside += 1
                    violations += inside != 1
                    v = count
                    await asyncio.sleep(0)
                    count = v + 1
                    inside -= 1

        await asyncio.gather(*(work() for _ in range(5)))

        # Cancellation while waiting (in this process, and for the file).
        await lock.acquire_async()
        waiter = asyncio.ensure_future(lock.acquire_async())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        with pytest.raises(LockTimeout):
            await asyncio.ensure_future(lock.acquire_async(timeout=0.01))
        lock.release()
        return count, violations

    assert asyncio.run(main()) == (100, 0)
    assert not path.exists() and not lock.locked
    lock.acquire_nowait()
    lock.release()


def test_async_wait_for_process_does_not_block_loop(tmp_path: Path, children: list[Child]) -> None:
    """Waiting for a lock held by another process lets the loop run; cancel leaves nothing."""
    path = tmp_path / "l"
    kid = Child(
        """
        import sys
        from racefree import LockFile
        lock = LockFile(sys.argv[1])
        lock.acquire()
        print("held", flush=True)
        sys.stdin.readline()
        lock.release()
        print("released", flush=True)
        """,
        str(path),
    )
    children.append(kid)
    assert kid.line() == "held"
    lock = LockFile(path)

    async def main() -> int:
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.ensure_future(ticker())
        with pytest.raises(LockTimeout):
            await lock.acquire_async(timeout=0.2)
        waiter = asyncio.ensure_future(lock.acquire_async())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        stop = True
        await tick_task
        return ticks

    assert asyncio.run(main()) > 0
    assert not lock.locked
    kid.send("release")
    assert kid.line() == "released"
    assert kid.finish() == 0
    with lock:
        assert lock.token == 2


COUNTER_CHILD = """
import json, sys, threading, time
from racefree import LockFile
path, counter, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = LockFile(path, timeout=120)
print("ready", flush=True)
sys.stdin.readline()  # the start barrier
out = []
def work():
    for _ in range(n):
        with lock:
            t0 = time.monotonic()
            with open(counter) as f:
                v = int(f.read())
            time.sleep(0)
            with open(counter, "w") as f:
                f.write(str(v + 1))
            tok = lock.token
            out.append((t0, time.monotonic(), tok))
ts = [threading.Thread(target=work) for _ in range(2)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out), flush=True)
"""


@pytest.mark.slow
def test_processes_exclusion_and_tokens(tmp_path: Path, children: list[Child]) -> None:
    """3 processes x 2 threads x 12: exact counter, no overlapping holds, tokens strictly rise."""
    path, counter = tmp_path / "l", tmp_path / "counter"
    counter.write_text("0")
    for _ in range(3):
        children.append(Child(COUNTER_CHILD, str(path), str(counter), "12"))
    for kid in children:
        assert kid.line() == "ready"
    for kid in children:
        kid.send("go")
    holds = [tuple(h) for kid in children for h in json.loads(kid.line(120))]
    assert counter.read_text() == "72"
    holds.sort()
    for (_, end, _), (start, _, _) in itertools.pairwise(holds):
        assert end <= start  # one clock for all processes on Linux
    assert [h[2] for h in holds] == list(range(1, 73))


# -- stale locks -------------------------------------------------------------------------

HOLDER_CHILD = """
import sys
from racefree import LockFile
lock = LockFile(sys.argv[1], stale_after=float(sys.argv[2]))
lock.acquire()
print(lock.token, flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_kill9_holder_reclaimed_on_proof_of_death(tmp_path: Path, children: list[Child]) -> None:
    """A waiter gets the lock of a kill -9'd holder on proof of death, long before stale_after."""
    path = tmp_path / "l"
    kid = Child(HOLDER_CHILD, str(path), "3600")
    children.append(kid)
    token = int(kid.line())
    lock = LockFile(path, stale_after=3600)
    got: list[object] = []
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        lock.acquire(timeout=WAIT)  # far less than stale_after: only proof of death helps
        got.append(lock.token)
        got.append(json.loads(path.read_bytes())["pid"])
        lock.release()

    t = threading.Thread(target=waiter)
    t.start()
    assert waiting.wait(WAIT)
    kid.proc.send_signal(signal.SIGKILL)
    kid.proc.wait(WAIT)
    t.join(WAIT)
    assert got == [token + 1, os.getpid()]
    assert leftovers(tmp_path, path) == []


def test_dead_pid_and_pid_reuse(tmp_path: Path) -> None:
    """A record of a dead pid, or of a live pid with another start time (reuse): stale at once."""
    path = tmp_path / "l"
    lock = LockFile(path, stale_after=3600)
    write_lock(path, record(pid=dead_pid()))
    lock.acquire_nowait()
    lock.release()
    if not LINUX:
        pytest.skip("start times are read on Linux only")
    me = record()
    write_lock(path, record(start_time=me["start_time"] + 1))  # our pid, but "another" process
    lock.acquire_nowait()
    lock.release()
    data = write_lock(path, me)  # really alive: never stale, whatever stale_after says
    with pytest.raises(WouldBlock):
        LockFile(path, stale_after=0.001).acquire_nowait()
    with pytest.raises(LockTimeout):
        LockFile(path, stale_after=0.001).acquire(timeout=0.05)
    assert path.read_bytes() == data


@pytest.mark.skipif(not LINUX or not hasattr(os, "WNOWAIT"), reason="/proc and waitid: Linux")
def test_zombie_holder_is_dead(tmp_path: Path) -> None:
    """A holder that exited but is not reaped yet (a zombie) keeps its pid and start time: dead."""
    path = tmp_path / "l"
    code = "import sys, os, racefree; racefree.LockFile(sys.argv[1]).acquire(); os._exit(0)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    try:
        # Wait for the exit without reaping (WNOWAIT): the child stays a zombie.
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert info is not None and info.si_pid == proc.pid and info.si_status == 0
        rec = owner.decode(path.read_bytes())
        assert rec is not None and rec.pid == proc.pid and rec.token == 1
        assert owner.pid_alive(proc.pid)  # kill(pid, 0) still finds the zombie
        assert owner.start_time(proc.pid) == rec.start_time
        assert owner.judge(rec) is owner.Verdict.DEAD
        lock = LockFile(path, stale_after=3600)
        lock.acquire_nowait()  # proof of death: reclaimed at once, not after stale_after
        assert lock.token == 2
        lock.release()
    finally:
        proc.kill()
        proc.wait(WAIT)
    assert leftovers(tmp_path, path) == []
    assert not path.exists()


class ProcState(_fs.FileSystem):
    """Shows ``/proc/<pid>/stat`` of one pid with another process state (field 3)."""

    def __init__(self, pid: int, state: bytes, scratch: Path) -> None:
        super().__init__()
        real = _fs.read_file(f"/proc/{pid}/stat")
        cut = real.rfind(b")") + 2
        self.proc_path = f"/proc/{pid}/stat"
        self.fake = scratch / "stat"
        self.fake.write_bytes(real[:cut] + state + real[cut + 1 :])

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        if path == self.proc_path:
            path = str(self.fake)
        return super().open(path, flags, mode)


@pytest.mark.skipif(not LINUX, reason="start times and states are read on Linux only")
@pytest.mark.parametrize(("state", "verdict"), [
    (b"Z", owner.Verdict.DEAD), (b"X", owner.Verdict.DEAD), (b"S", owner.Verdict.ALIVE),
])
def test_exited_states_are_dead(tmp_path: Path, state: bytes, verdict: owner.Verdict) -> None:
    """Through the ``_fs`` seam: the record's own pid and start time in state Z or X is dead."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    path = tmp_path / "l"
    data = write_lock(path, record())  # this very process, so pid and start time match
    rec = owner.decode(data)
    assert rec is not None
    with _fs.use(ProcState(os.getpid(), state, scratch)):
        assert owner.start_time(os.getpid()) == rec.start_time
        assert owner.judge(rec) is verdict
        lock = LockFile(path, stale_after=3600)
        if verdict is owner.Verdict.DEAD:
            lock.acquire_nowait()
            assert lock.token == 1  # the first token handed out through the token file
            lock.release()
        else:
            with pytest.raises(WouldBlock):
                lock.acquire_nowait()
    assert path.exists() is (verdict is owner.Verdict.ALIVE)


@pytest.mark.parametrize("content", [b"", b"\0" * 170], ids=["empty", "nul-filled"])
def test_record_lost_to_a_power_loss_is_judged_by_age(tmp_path: Path, content: bytes) -> None:
    """What a power loss leaves of an unsynced record (its name without its data: empty or
    NUL bytes) beside the lock's token file is reclaimed once unchanged for stale_after."""
    path = tmp_path / "l"
    write_lock(path, content)
    (tmp_path / "l.token").write_bytes(b"4\n")
    lock = LockFile(path, stale_after=0.2)
    with pytest.raises(WouldBlock):
        lock.acquire_nowait()
    assert path.read_bytes() == content
    lock.acquire(timeout=WAIT)
    assert json.loads(path.read_bytes())["pid"] == os.getpid()
    assert lock.token == 5
    lock.release()
    assert leftovers(tmp_path, path) == []


def _own_with(**changes: object) -> bytes:
    record = owner.own_record(7)
    record.update(changes)
    return owner.encode(record)


@pytest.mark.parametrize(
    "content",
    [b"[" * 4000, _own_with(pid=2**31), _own_with(pid=2**63), _own_with(created=10**400)],
    ids=["deep", "pid-2**31", "pid-2**63", "created-overflows"],
)
def test_record_no_process_could_write_is_judged_by_age(tmp_path: Path, content: bytes) -> None:
    """Deeply nested JSON, a same-host pid no process can have, a time past any float:
    malformed, judged by age like any other (no RecursionError or OverflowError). The
    deep one is racefree's only beside the lock's token file (as every lock path has)."""
    assert owner.decode(content) is None
    path = tmp_path / "l"
    write_lock(path, content)
    if content.startswith(b"["):
        (tmp_path / "l.token").write_bytes(b"3\n")
    lock = LockFile(path, stale_after=0.2)
    with pytest.raises(WouldBlock):
        lock.acquire_nowait()
    assert path.read_bytes() == content
    lock.acquire(timeout=WAIT)
    assert json.loads(path.read_bytes())["pid"] == os.getpid()
    lock.release()


@pytest.mark.parametrize(
    "content",
    [b"", b"\0" * 170, b'{"pid": 12', b"\xff\xfe\x00", b'{"racefree": 1, "pid": -4, "host": "h"}',
     b"[]", b'{"rows": [' + b"1, " * 3000 + b"1]}", b"x" * 5000],
    ids=["empty", "nul-filled", "torn", "binary", "badpid", "notobject", "large", "larger"],
)
def test_file_that_is_not_an_owner_record_is_never_reclaimed(
    tmp_path: Path, content: bytes
) -> None:
    """A file that is not a racefree owner record (a data file passed as the lock path by
    mistake), of any size, is refused with FormatError and never deleted, however long one
    waits; an empty or NUL-filled one too, unless the lock's token file is beside it."""
    path = tmp_path / "data.json"
    write_lock(path, content)
    lock = LockFile(path, stale_after=0.05)
    for _ in range(3):
        with pytest.raises(racefree.FormatError, match="not a lock file"):
            lock.acquire(timeout=WAIT)
        time.sleep(0.06)  # past stale_after: the age of the file must not matter
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["data.json"]


def test_other_host_lease(tmp_path: Path) -> None:
    """Another host's lock: kept while refreshed, reclaimed once unrefreshed for stale_after."""
    path = tmp_path / "l"
    data = write_lock(path, record(host="elsewhere.example", pid=1))
    lock = LockFile(path, stale_after=0.3)
    with pytest.raises(WouldBlock):
        lock.acquire_nowait()  # first sighting of this version
    time.sleep(0.35)  # the lease runs out: a waiter may reclaim it now...
    os.utime(path)  # ...but the remote holder refreshes it: a new version, age starts again
    refreshed = time.monotonic()
    with pytest.raises(WouldBlock):
        lock.acquire_nowait()
    assert path.read_bytes() == data
    lock.acquire(timeout=WAIT)
    assert time.monotonic() - refreshed >= 0.3
    assert json.loads(path.read_bytes())["pid"] == os.getpid()
    lock.release()


def test_abandoned_claim_is_passed_over(tmp_path: Path) -> None:
    """A reclaimer that died holding its claim delays recovery by stale_after, no more."""
    path = tmp_path / "l"
    write_lock(path, record(pid=dead_pid()))
    ino = path.stat().st_ino
    os.link(path, tmp_path / f".l.{ino}.claim1")  # what a reclaimer killed mid-way leaves
    lock = LockFile(path, stale_after=0.2)
    with pytest.raises(WouldBlock):
        lock.acquire_nowait()
    lock.acquire(timeout=WAIT)
    assert json.loads(path.read_bytes())["pid"] == os.getpid()
    lock.release()
    assert leftovers(tmp_path, path) == []  # the abandoned claim was removed with its inode


RECLAIMER_CHILD = """
import os, sys
from racefree import LockFile
path, marker = sys.argv[1], sys.argv[2]
lock = LockFile(path, stale_after=3600, timeout=120)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "go":
        break
    lock.acquire()
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        print("overlap", flush=True)
        continue
    print("won", lock.token, flush=True)
    sys.stdin.readline()  # "release"
    os.unlink(marker)
    lock.release()
    print("released", flush=True)
"""


@pytest.mark.slow
def test_concurrent_reclaimers_one_winner(tmp_path: Path, children: list[Child]) -> None:
    """5 processes reclaim one dead holder's lock at once, 6 rounds: one holder at a time."""
    path, marker = tmp_path / "l", tmp_path / "inside"
    n, rounds = 5, 6
    for _ in range(n):
        children.append(Child(RECLAIMER_CHILD, str(path), str(marker)))
    for kid in children:
        assert kid.line() == "ready"
    by_fd = {kid.proc.stdout.fileno(): kid for kid in children}  # type: ignore[union-attr]
    tokens: list[int] = []
    for _ in range(rounds):
        write_lock(path, record(pid=dead_pid()))
        for kid in children:
            kid.send("go")  # the start barrier: all race for the stale lock
        for _ in range(n):
            ready = select_one(by_fd)
            word, token = ready.line().split()
            assert word == "won"
            tokens.append(int(token))
            ready.send("release")
            assert ready.line() == "released"
        assert not path.exists()
    assert tokens == list(range(1, n * rounds + 1))
    assert leftovers(tmp_path, path) == []


def select_one(by_fd: dict[int, Child]) -> Child:
    """The child whose next line is ready (bounded wait)."""
    sel = selectors.DefaultSelector()
    for fd in by_fd:
        sel.register(fd, selectors.EVENT_READ)
    try:
        events = sel.select(WAIT)
    finally:
        sel.close()
    assert events, "no child took the lock"
    return by_fd[events[0][0].fd]


# -- lost locks --------------------------------------------------------------------------

def test_lost_lock_is_reported_and_new_owner_kept(tmp_path: Path) -> None:
    """A holder whose file was replaced sees ``lost`` and gets LockLost; the new file stays."""
    path = tmp_path / "l"
    lock = LockFile(path, stale_after=0.3)
    lock.acquire()
    os.rename(path, tmp_path / "stolen")  # what a reclaimer that judged us stale does
    new = write_lock(path, record(host="elsewhere.example", pid=7, token=99))
    # The refresher notices in the background (every stale_after / 3).
    deadline = time.monotonic() + WAIT
    state = lock._get_state()
    while state.hold is not None and not state.hold.lost and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.hold is not None and state.hold.lost
    assert lock.lost
    with pytest.raises(LockLost):
        lock.release()
    assert path.read_bytes() == new
    assert lock.lost and not lock.locked
    os.unlink(path)
    with lock:  # a new hold starts clean
        assert not lock.lost


def test_refresher_refreshes_and_stops_at_release(tmp_path: Path) -> None:
    """The holder's file gets new times while held; after release nothing is touched any more.

    The refresher works through the holder's descriptor; once released, that
    descriptor number is free and the next open may get it: it must never be
    touched by a late refresh.
    """
    path, other = tmp_path / "l", tmp_path / "other"
    lock = LockFile(path, stale_after=0.15)  # refreshed every 0.05 s
    with lock:
        os.utime(path, ns=(0, 0))
        deadline = time.monotonic() + WAIT
        while path.stat().st_mtime_ns == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path.stat().st_mtime_ns != 0
    fd = os.open(other, os.O_CREAT | os.O_WRONLY)  # likely the holder's old number
    try:
        os.utime(other, ns=(0, 0))
        time.sleep(0.3)  # six refresh periods
        assert other.stat().st_mtime_ns == 0
    finally:
        os.close(fd)


LEASE_CHILD = """
import socket, sys
socket.gethostname = lambda: "elsewhere.example"  # a holder on another host
from racefree import LockFile, LockLost
lock = LockFile(sys.argv[1], stale_after=float(sys.argv[2]))
lock.acquire()
print(lock.token, flush=True)
sys.stdin.readline()
lost = lock.lost
try:
    lock.release()
except LockLost:
    print("LockLost", lost, flush=True)
else:
    print("released", lost, flush=True)
"""


@pytest.mark.slow
def test_lease_expiry_of_a_stopped_remote_holder(tmp_path: Path, children: list[Child]) -> None:
    """A refreshing remote holder keeps its lock; stopped, it loses it and is told (L8)."""
    path, stale = tmp_path / "l", 2.0
    kid = Child(LEASE_CHILD, str(path), str(stale))
    children.append(kid)
    token = int(kid.line())
    lock = LockFile(path, stale_after=stale)
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=2 * stale)  # refreshed every stale/3 meanwhile
    kid.proc.send_signal(signal.SIGSTOP)
    try:
        os.waitpid(kid.proc.pid, os.WUNTRACED)  # stopped for sure: no refresh from here on
        last_refresh = path.stat().st_mtime_ns / 1e9
        lock.acquire(timeout=WAIT)
        assert time.time() - last_refresh >= stale
        assert lock.token == token + 1
        mine = path.read_bytes()
    finally:
        kid.proc.send_signal(signal.SIGCONT)
    kid.send("release")
    assert kid.line() == "LockLost True"
    assert kid.finish() == 0
    assert path.read_bytes() == mine and not lock.lost
    lock.release()
    assert leftovers(tmp_path, path) == []


# -- fork, tokens, faults ------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_holding(tmp_path: Path) -> None:
    """A forked child holds nothing, cannot take the lock, and never removes the parent's file."""
    path = tmp_path / "l"
    lock = LockFile(path)
    lock.acquire()
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with the refresher running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 0
        try:
            code |= 1 if lock.locked else 0
            code |= 2 if lock.held_by_me else 0
            try:
                lock.acquire_nowait()
                code |= 4
            except WouldBlock:
                pass
            lock.release()  # the parent's hold, inherited: forgotten, not released
            code |= 8 if path.read_bytes() != data else 0
        except BaseException:
            code |= 16
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.read_bytes() == data
    assert lock.locked and lock.held_by_me and not lock.lost
    lock.release()
    assert not path.exists()


def test_corrupt_token_file_raises_and_is_kept(tmp_path: Path) -> None:
    """A damaged token counter raises CorruptFileError and is kept: tokens never go back."""
    path = tmp_path / "l"
    (tmp_path / "l.token").write_bytes(b"12x\n")
    with pytest.raises(racefree.CorruptFileError):
        LockFile(path).acquire(timeout=1)
    assert (tmp_path / "l.token").read_bytes() == b"12x\n"
    assert leftovers(tmp_path, path) == []


class FailingReplace(_fs.FileSystem):
    """Fails the ``replace`` that publishes a fencing token with EIO."""

    def replace(self, src: str, dst: str) -> None:
        if dst.endswith(".token"):
            raise OSError(errno.EIO, "injected", dst)
        super().replace(src, dst)


def test_failed_token_publish_leaves_nothing_held(tmp_path: Path) -> None:
    """If the token cannot be published the error is raised and no lock file stays behind."""
    path = tmp_path / "l"
    lock = LockFile(path)
    with _fs.use(FailingReplace()), pytest.raises(OSError) as info:
        lock.acquire(timeout=1)
    assert info.value.errno == errno.EIO
    assert not lock.locked
    assert os.listdir(tmp_path) == []
    with lock:
        assert lock.token == 1


# -- the removal protocol, one interleaving at a time ---------------------------------------

def stale_seen(path: Path) -> _disk.Seen:
    """Put a dead holder's lock file at ``path`` and look at it as a reclaimer does."""
    write_lock(path, record(pid=dead_pid()))
    seen = _disk.inspect(str(path))
    assert seen is not None and seen.record is not None
    return seen


def test_reclaim_of_a_replaced_file_takes_nothing(tmp_path: Path) -> None:
    """Judged stale, then replaced by a new owner's file before the claim: the new file stays."""
    path = tmp_path / "l"
    seen = stale_seen(path)
    os.unlink(path)  # another reclaimer removed it...
    new = write_lock(path, record(token=5))  # ...and a new owner created its own
    assert not _disk.remove_stale(str(path), seen, 3600, _disk.Observer())
    assert path.read_bytes() == new
    assert leftovers(tmp_path, path) == []


def test_reclaim_checks_the_record_bytes(tmp_path: Path) -> None:
    """A new file with the judged file's inode number (ABA) is told apart by its record."""
    path = tmp_path / "l"
    seen = stale_seen(path)
    other = dataclasses.replace(seen, data=seen.data + b" ")  # type: ignore[operator]
    assert not _disk.remove_stale(str(path), other, 3600, _disk.Observer())
    assert path.exists() and leftovers(tmp_path, path) == []
    assert _disk.remove_stale(str(path), seen, 3600, _disk.Observer())
    assert not path.exists() and leftovers(tmp_path, path) == []


def test_reclaim_gives_up_when_refreshed(tmp_path: Path) -> None:
    """Judged stale by age, then refreshed by its holder before the claim: kept."""
    path = tmp_path / "l"
    data = write_lock(path, record(host="elsewhere.example"))
    seen = _disk.inspect(str(path))
    assert seen is not None
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not _disk.remove_stale(str(path), seen, 3600, _disk.Observer())
    assert path.read_bytes() == data and leftovers(tmp_path, path) == []


def test_reclaim_waits_for_a_fresh_claim(tmp_path: Path) -> None:
    """Another reclaimer's claim (fresh) makes this one back off; the file stays."""
    path = tmp_path / "l"
    seen = stale_seen(path)
    claim = tmp_path / f".l.{seen.ino}.claim1"
    os.link(path, claim)
    assert not _disk.remove_stale(str(path), seen, 3600, _disk.Observer())
    assert path.exists() and claim.exists()


class SwapBeforeRename(_fs.FileSystem):
    """Replaces the lock file (outside the protocol) just before a remover renames it away."""

    def __init__(self, lock: Path, intruder: bytes) -> None:
        self.lock, self.intruder, self.done = str(lock), intruder, False

    def replace(self, src: str, dst: str) -> None:
        if src == self.lock and not self.done:
            self.done = True
            os.rename(self.lock, self.lock + ".aside")
            Path(self.lock).write_bytes(self.intruder)
        super().replace(src, dst)


def test_remover_puts_back_a_file_it_did_not_claim(tmp_path: Path) -> None:
    """If the renamed file is not the claimed one, it is linked back and nothing is removed."""
    path = tmp_path / "l"
    seen = stale_seen(path)
    intruder = owner.encode(record(host="elsewhere.example", token=7))
    with _fs.use(SwapBeforeRename(path, intruder)):
        assert not _disk.remove_stale(str(path), seen, 3600, _disk.Observer())
    assert path.read_bytes() == intruder
    assert leftovers(tmp_path, path) == ["l.aside"]


def test_refresher_failure_is_reported_and_other_holds_keep_refreshing(tmp_path: Path) -> None:
    """An unexpected (non-OSError) error while refreshing a hold marks that hold lost and is
    raised at release as LockLost with the reason; the lock file is removed (it was still
    ours), and the refresher thread survives to serve other holds."""
    from racefree.lockfile import state as _lockfile_state

    failing = str(tmp_path / "failing.lock")

    class BrokenTouch(_fs.FileSystem):
        def utime(self, path_or_fd: Any, ns: Any = None) -> None:
            raise RuntimeError("touch broke")

    lock = LockFile(failing, stale_after=0.3)
    with _fs.use(BrokenTouch()):
        lock.acquire()
        deadline = time.monotonic() + 10
        while not lock.lost and time.monotonic() < deadline:
            threading.Event().wait(0.01)  # waits for the refresher's first tick (0.1 s)
        assert lock.lost
        with pytest.raises(LockLost, match="refreshing it failed: RuntimeError"):
            lock.release()
    assert not os.path.exists(failing)
    ticker = _lockfile_state._ticker.thread
    assert ticker is not None and ticker.is_alive()

    # The same thread still refreshes another hold: its lock file's mtime moves.
    other = LockFile(str(tmp_path / "other.lock"), stale_after=0.3)
    with other:
        before = os.stat(other.path).st_mtime_ns
        deadline = time.monotonic() + 10
        while os.stat(other.path).st_mtime_ns == before and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert os.stat(other.path).st_mtime_ns != before
        assert not other.lost
