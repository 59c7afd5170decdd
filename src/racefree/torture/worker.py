"""One worker process of ``racefree torture``: random operations, each one recorded.

A worker runs until its deadline, picking operations at random and writing
to its own acknowledgement file, through the seam, one line before each
operation starts and one after it returns::

    B <kind> <seq> [<detail>]     the operation began
    A <kind> <seq> [<detail>]     it returned (acknowledged)
    V <message>                   the worker saw a violation itself
    X <message>                   an unexpected exception (the worker then exits 3)

``seq`` grows across the worker's incarnations (a killed worker is restarted
under the same id and continues the numbering), so the verifier can tell, for
every counter and every key, which operations were acknowledged and which
were in flight when a SIGKILL came: the final state must contain every
acknowledged one and may contain the in-flight ones, nothing else.

The lock critical sections record the monotonic clock (one clock for every
process of the machine) when the lock is held (``B``) and just before it is
released (``A``): two intervals of different holders must never overlap. Inside,
the worker also checks an "inside" file naming the current holder and bumps a
counter file written in place (a second holder would lose an increment).
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

from racefree import _fs

KINDS = (
    "json", "store.update", "store.put", "store.delete", "store.batch", "store.compact",
    "log", "flock", "lockfile",
)
#: Relative frequencies: compaction is rare, everything else is equally likely.
WEIGHTS = {"store.compact": 0.05}
LOCK_TIMEOUT = 60.0


class Acks:
    """The worker's acknowledgement file (append-only, one line per event)."""

    def __init__(self, path: str) -> None:
        self.fd = _fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def line(self, text: str) -> None:
        # One write(2) per line on an O_APPEND descriptor: a SIGKILL cannot split it.
        _fs.write_all(self.fd, (text + "\n").encode())


def next_seq(ack_dir: str, wid: int) -> int:
    """The first sequence number for a new incarnation of worker ``wid``."""
    top = 0
    for name in _fs.listdir(ack_dir):
        if not name.startswith(f"w{wid}."):
            continue
        for line in _fs.read_file(os.path.join(ack_dir, name)).decode().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] in ("A", "B"):
                top = max(top, int(parts[2]))
    return top + 1


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = _fs.read_file(f"/proc/{pid}/stat").decode()
    except OSError:
        return True  # not Linux: kill(0) is all we know
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


class Worker:
    def __init__(
        self, root: str, wid: int, incarnation: int, seed: int, kinds: list[str], url: str = ""
    ) -> None:
        self.root = root
        self.url = url  # a postgresql:// URL: the store and FileLock kinds run there
        self.wid = wid
        self.rng = random.Random(seed * 1_000_003 + wid * 1009 + incarnation)
        self.kinds = kinds
        self.weights = [WEIGHTS.get(k, 1.0) for k in kinds]
        ack_dir = os.path.join(root, "acks")
        self.seq = next_seq(ack_dir, wid)
        self.acks = Acks(os.path.join(ack_dir, f"w{wid}.{incarnation:05d}"))
        self._objects: dict[str, Any] = {}

    # Objects are opened on first use, so that a run limited to some kinds
    # (--only) does not need the others.
    def obj(self, name: str) -> Any:
        found = self._objects.get(name)
        if found is not None:
            return found
        import racefree

        p = os.path.join
        if self.url and name in ("store", "flock"):
            found = pg_object(self.url, name, self.root)
        elif name == "json":
            found = racefree.JsonFile(p(self.root, "counter.json"), default={})
        elif name == "store":
            found = racefree.Store(p(self.root, "store"))
        elif name == "log":
            found = racefree.AppendLog(p(self.root, "log.rfl"))
        elif name == "flock":
            found = racefree.FileLock(p(self.root, "flock.lock"), timeout=LOCK_TIMEOUT)
        elif name == "lockfile":
            found = racefree.LockFile(
                p(self.root, "lockfile.lock"), stale_after=10.0, timeout=LOCK_TIMEOUT
            )
        else:  # pragma: no cover
            raise ValueError(name)
        self._objects[name] = found
        return found

    def run(self, deadline: float) -> None:
        while time.time() < deadline:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            seq = self.seq
            self.seq += 1
            getattr(self, "op_" + kind.replace(".", "_"))(seq)

    # -- the operations ---------------------------------------------------------
    def op_json(self, seq: int) -> None:
        key = f"w{self.wid}"
        self.acks.line(f"B json {seq}")
        self.obj("json").update(lambda d: {**d, key: d.get(key, 0) + 1})
        self.acks.line(f"A json {seq}")

    def op_store_update(self, seq: int) -> None:
        self.acks.line(f"B store.update {seq}")
        self.obj("store").update(
            f"c{self.wid}", lambda d: {**d, "n": d["n"] + 1}, default={"n": 0}
        )
        self.acks.line(f"A store.update {seq}")

    def op_store_put(self, seq: int) -> None:
        # Put and delete share one key per worker: the final state is the result of
        # the last acknowledged one, or of one begun after it.
        self.acks.line(f"B store.put {seq}")
        pad = "x" * self.rng.choice((0, 10, 300, 3000))
        self.obj("store").put(f"k{self.wid}", {"s": seq, "pad": pad})
        self.acks.line(f"A store.put {seq}")

    def op_store_delete(self, seq: int) -> None:
        self.acks.line(f"B store.delete {seq}")
        self.obj("store").delete(f"k{self.wid}")
        self.acks.line(f"A store.delete {seq}")

    def op_store_batch(self, seq: int) -> None:
        self.acks.line(f"B store.batch {seq}")
        with self.obj("store").batch() as b:
            b.put(f"ba{self.wid}", {"s": seq})
            b.put(f"bb{self.wid}", {"s": seq})
        self.acks.line(f"A store.batch {seq}")

    def op_store_compact(self, seq: int) -> None:
        self.acks.line(f"B store.compact {seq}")
        self.obj("store").compact()
        self.acks.line(f"A store.compact {seq}")

    def op_log(self, seq: int) -> None:
        self.acks.line(f"B log {seq}")
        self.obj("log").append({"w": self.wid, "s": seq})
        self.acks.line(f"A log {seq}")

    def op_flock(self, seq: int) -> None:
        with self.obj("flock"):
            self._critical("flock", seq, "")

    def op_lockfile(self, seq: int) -> None:
        lock = self.obj("lockfile")
        with lock:
            self._critical("lockfile", seq, f" {lock.token}")

    def _critical(self, kind: str, seq: int, extra: str) -> None:
        p = os.path.join(self.root, kind)
        self.acks.line(f"B {kind} {seq} {time.monotonic_ns()}{extra}")
        # Fixed-width fields written with one pwrite each: a SIGKILL cannot leave half of one.
        fd = _fs.open(p + ".inside", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            other = _fs.pread(fd, 16, 0).decode().strip("\0 ")
            if other and int(other) != os.getpid() and _pid_alive(int(other)):
                self.acks.line(f"V {kind}: process {other} is inside too (seq {seq})")
            _fs.pwrite_all(fd, b"%16d" % os.getpid(), 0)
            # A counter written in place: of two holders at once, one increment is lost.
            cfd = _fs.open(p + ".count", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                raw = _fs.pread(cfd, 20, 0).decode().strip("\0 ")
                _fs.pwrite_all(cfd, b"%20d" % ((int(raw) if raw else 0) + 1), 0)
            finally:
                _fs.close(cfd)
            _fs.pwrite_all(fd, b" " * 16, 0)
        finally:
            _fs.close(fd)
        self.acks.line(f"A {kind} {seq} {time.monotonic_ns()}")


def run_name(root: str) -> str:
    """The name of a run's PostgreSQL store and lock: its directory's name."""
    return os.path.basename(os.path.normpath(root))


def pg_object(url: str, name: str, root: str) -> Any:
    """The PostgreSQL store, or the lock that stands in for FileLock, of the run in ``root``."""
    from racefree.backends.dispatch import open_lock, open_store

    if name == "store":
        return open_store(url, name=run_name(root))
    return open_lock(url, run_name(root), timeout=LOCK_TIMEOUT)


#: The environment variable that carries the PostgreSQL URL to a worker: never its
#: command line, which every local user can read (``ps``, ``/proc/PID/cmdline``), while a
#: process's environment is readable by its own user only.
URL_ENV = "RACEFREE_TORTURE_URL"


def main(argv: list[str]) -> int:
    root, wid, incarnation, deadline, seed, kinds = argv
    url = os.environ.get(URL_ENV, "")
    worker = Worker(root, int(wid), int(incarnation), int(seed), kinds.split(","), url)
    try:
        worker.run(float(deadline))
    except BaseException as exc:
        worker.acks.line(f"X {type(exc).__name__}: {exc}".replace("\n", " "))
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover - started by racefree.torture.run
    sys.exit(main(sys.argv[1:]))
