"""The file store across real processes: SIGKILL at random points, compaction racing
writers, cross-process coherence, fork, and a compactor that dies at its commit point."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.testkit import reap

from racefree import Store

# One worker: runs ops start..count-1 of its deterministic schedule, appending the
# op's number to its ack file after each op returns (one O_APPEND write: it survives
# the worker being killed right after).
WORKER = textwrap.dedent(
    """
    import os, sys
    from racefree import Store
    path, w, start, count, durable, ack, extra = sys.argv[1:8]
    w, start, count = int(w), int(start), int(count)
    opts = {"_segment_size": 64 << 10, "_compact_min": 48 << 10} if extra == "small" else {}
    s = Store(path, durable=durable == "1", **opts)
    keys = [f"w{w}-{k}" for k in range(7)]
    fd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(start, count):
        kind = i % 4
        if kind == 0:
            key = keys[i % 7]
            s.put(key, {"w": w, "i": i, "pad": "x" * 200}, expect_version=s.version(key) or 0)
        elif kind == 1:
            s.update("shared", lambda d: {"n": d["n"] + 1}, default={"n": 0})
        elif kind == 2:
            key = keys[(i * 3) % 7]
            v = s.version(key)
            s.delete(key, expect_version=v)
        else:
            with s.batch() as b:
                b.put(keys[(i + 1) % 7], {"w": w, "i": i, "b": 1})
                b.delete(keys[(i + 4) % 7])
                b.put(f"w{w}-log", {"last": i})
        os.write(fd, f"{i}\\n".encode())
    s.close()
    """
)


def _apply(model: dict[str, Any], w: int, i: int) -> None:
    """Apply op ``i`` of worker ``w`` to ``model``: id -> [version, doc or None]."""
    keys = [f"w{w}-{k}" for k in range(7)]

    def put(key: str, doc: dict[str, Any]) -> None:
        entry = model.setdefault(key, [0, None])
        entry[0] += 1
        entry[1] = doc

    def delete(key: str) -> None:
        entry = model.get(key)
        if entry is not None and entry[1] is not None:
            entry[0] += 1
            entry[1] = None

    kind = i % 4
    if kind == 0:
        put(keys[i % 7], {"w": w, "i": i, "pad": "x" * 200})
    elif kind == 1:
        cur = model.get("shared", [0, {"n": 0}])[1] or {"n": 0}
        put("shared", {"n": cur["n"] + 1})
    elif kind == 2:
        delete(keys[(i * 3) % 7])
    else:
        put(keys[(i + 1) % 7], {"w": w, "i": i, "b": 1})
        delete(keys[(i + 4) % 7])
        put(f"w{w}-log", {"last": i})


def _state(store: Store) -> dict[str, tuple[int | None, Any]]:
    return {key: (store.version(key), doc) for key, doc in store.items()}


def _model_state(model: dict[str, Any]) -> dict[str, tuple[int | None, Any]]:
    return {k: (v, d) for k, (v, d) in model.items() if d is not None}


def _spawn(path: Path, w: int, start: int, count: int, durable: bool, ack: Path,
           extra: str = "") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), str(w), str(start), str(count),
         "1" if durable else "0", str(ack), extra or "-"],
        stderr=subprocess.PIPE,
    )


def _acks(ack: Path) -> list[int]:
    return [int(x) for x in ack.read_text().split()] if ack.exists() else []


def _finish(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()


@pytest.mark.slow
def test_sigkill_at_random_points_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """4 writers (small segments: rolls and automatic compactions happen); one is SIGKILLed
    5 times mid-run: the store equals the acknowledged ops plus some subset of the killed
    ops that were in flight, and check() passes."""
    rng = random.Random(os.getpid())
    path = tmp_path / "s"
    count = 240
    acks = [tmp_path / f"ack{w}" for w in range(4)]
    procs = [_spawn(path, w, 0, count, w < 2, acks[w], "small") for w in range(1, 4)]
    in_flight: list[int] = []
    victim_start = 0
    try:
        for _ in range(5):
            victim = _spawn(path, 0, victim_start, count, True, acks[0], "small")
            target = len(_acks(acks[0])) + rng.randint(1, 30)
            deadline = time.monotonic() + 60
            while len(_acks(acks[0])) < target and victim.poll() is None:
                assert time.monotonic() < deadline, "the victim made no progress"
                time.sleep(0.001)
            victim.send_signal(signal.SIGKILL)
            _, err = victim.communicate(timeout=30)
            # Killed, or (rarely) done before the kill: never failed on its own.
            assert victim.returncode in (-signal.SIGKILL, 0), err.decode()
            done = _acks(acks[0])
            nxt = (max(done) + 1) if done else victim_start
            if nxt < count:
                in_flight.append(nxt)  # may or may not have happened
            victim_start = nxt + 1
        procs.append(_spawn(path, 0, victim_start, count, True, acks[0], "small"))
        _finish(procs)
    finally:
        reap(procs)
    acked = {w: _acks(acks[w]) for w in range(4)}
    for w in range(1, 4):
        assert acked[w] == list(range(count))
    assert not set(acked[0]) & set(in_flight)
    with Store(path, durable=False) as s:
        report = s.check()
        actual = _state(s)
    matches = []
    for n in range(len(in_flight) + 1):
        for chosen in itertools.combinations(in_flight, n):
            model: dict[str, Any] = {}
            # Worker 0's ops in their order; the other workers' keys are disjoint and
            # their "shared" increments commute, so they are applied after.
            for i in sorted(acked[0] + list(chosen)):
                _apply(model, 0, i)
            for w in range(1, 4):
                for i in acked[w]:
                    _apply(model, w, i)
            if _model_state(model) == actual:
                matches.append(chosen)
    assert len(matches) >= 1, "the store matches no outcome of the acknowledged operations"
    assert report.documents == len(actual)


@pytest.mark.slow
def test_compaction_racing_writers_loses_nothing(tmp_path: Path) -> None:
    """3 writers with automatic compaction and small segments, and a process compacting
    in a loop: afterwards the store is exactly the model of all operations."""
    path = tmp_path / "s"
    count = 160
    acks = [tmp_path / f"ack{w}" for w in range(3)]
    Store(path, durable=False).close()
    compactor = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import sys
            from racefree import Store
            s = Store(sys.argv[1], durable=False, _segment_size=64 << 10)
            for _ in range(15):
                s.compact()
                s.check()  # every record checks, and the index matches the segments
            s.close()
            """
        ), str(path)],
        stderr=subprocess.PIPE,
    )
    procs = [_spawn(path, w, 0, count, w == 0, acks[w], "small") for w in range(3)]
    try:
        _finish([*procs, compactor])
    finally:
        reap([*procs, compactor])
    model: dict[str, Any] = {}
    for w in range(3):
        assert _acks(acks[w]) == list(range(count))
        for i in range(count):
            _apply(model, w, i)
    with Store(path, durable=False) as s:
        assert _state(s) == _model_state(model)
        assert s.get("shared") == {"n": 3 * (count // 4)}
        s.check()
    manifest = json.loads((path / "MANIFEST").read_text())
    assert manifest["gen"] >= 15  # the compactor's 15, plus the automatic ones


def test_write_in_one_process_is_seen_by_another_at_once(tmp_path: Path) -> None:
    """A handle opened before another process writes sees the write once that put returns."""
    path = tmp_path / "s"
    with Store(path, durable=False) as mine:
        mine.put("seed", {})
        code = "import sys\nfrom racefree import Store\n" \
               "s = Store(sys.argv[1]); print(s.put('x', {'from': 'child'})); s.close()"
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             timeout=60, check=True)
        assert out.stdout == b"1\n"
        assert mine.get("x") == {"from": "child"}
        assert mine.keys() == ["seed", "x"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_reopens_and_never_releases_parents_lock(tmp_path: Path) -> None:
    """A forked child reads and writes through the parent's Store object; while the parent
    holds the write lock (inside update), a child exiting does not release it (L5)."""
    path = tmp_path / "s"
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
        "    sys.exit(7)\nsys.exit(0)\n"
    )
    with Store(path, durable=False) as s:
        s.put("a", {"n": 1})
        codes: list[int] = []

        def fn(doc: dict[str, Any]) -> dict[str, Any]:
            pid = os.fork()
            if pid == 0:  # child: use the store (reopens), then exit, closing its copies
                try:
                    ok = s.get("a") == {"n": 1}
                    os._exit(0 if ok else 3)
                except BaseException:
                    os._exit(4)
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
            held = subprocess.run([sys.executable, "-c", probe, str(path / "store.lock")],
                                  timeout=60)
            codes.append(held.returncode)
            return {"n": doc["n"] + 1}

        s.update("a", fn)
        assert codes == [0, 7]
        pid = os.fork()
        if pid == 0:
            try:
                s.put("from-child", {"pid": os.getpid()})
                os._exit(0)
            except BaseException:
                os._exit(5)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert s.get("from-child") == {"pid": pid}
        assert s.get("a") == {"n": 2}
        s.put("parent", {})
        assert s.check().documents == 3


def test_compactor_dying_at_its_commit_point(tmp_path: Path) -> None:
    """A compactor killed right after replacing the MANIFEST (before publishing): the next
    writer in a live process completes the switch; nothing is lost or resurrected."""
    path = tmp_path / "s"
    code = textwrap.dedent(
        """
        import os, sys
        from racefree import Store
        from racefree.store import compact as _store_compact
        real = _store_compact.write_manifest
        def write_then_die(*args):
            real(*args)
            os._exit(9)
        _store_compact.write_manifest = write_then_die
        Store(sys.argv[1], durable=False).compact()
        """
    )
    with Store(path, durable=False) as s:
        for i in range(30):
            s.put(f"k{i}", {"i": i})
        for i in range(0, 30, 4):
            s.delete(f"k{i}")
        before = _state(s)
        proc = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60)
        assert proc.returncode == 9
        assert _state(s) == before
        s.put("after", {"x": 1})
        before["after"] = (1, {"x": 1})
        assert _state(s) == before
        assert s.put("k0", {}) == 3  # the deleted id's version survived the compaction
        before["k0"] = (3, {})
    with Store(path, durable=False) as s:
        assert _state(s) == before
        assert s.check().documents == len(before)


def test_many_processes_create_one_store_at_once(tmp_path: Path) -> None:
    """6 processes open a store that does not exist yet, at once: one creates it, all use it."""
    path = tmp_path / "s"
    code = textwrap.dedent(
        """
        import sys
        from racefree import Store
        with Store(sys.argv[1], durable=False) as s:
            s.put(sys.argv[2], {"by": sys.argv[2]})
            s.update("n", lambda d: {"n": d["n"] + 1}, default={"n": 0})
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), f"p{i}"],
                              stderr=subprocess.PIPE) for i in range(6)]
    try:
        _finish(procs)
    finally:
        reap(procs)
    with Store(path, durable=False) as s:
        assert s.keys() == ["n", "p0", "p1", "p2", "p3", "p4", "p5"]
        assert s.get("n") == {"n": 6}
