"""Case 10: two Store objects on one directory in one process, and fork inside update(fn).

Each scenario runs in a child interpreter with a time bound: before the fix, a write
through a second handle inside the first's ``update(fn)`` waited forever for an flock
its own process held, and a forked child wrote without the lock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def _run(code: str, *args: str) -> Any:
    """Run ``code`` in a child interpreter (bounded: a hang is a failure); its JSON line."""
    try:
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("the store hung (a lock its own process held)") from None
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


_NESTED = """
import json, sys
from racefree import Store
a = Store(sys.argv[1], durable=sys.argv[2] == "durable")
b = Store(sys.argv[1], durable=sys.argv[2] == "durable")
a.put("n", {"v": 0})

def fn(doc):
    b.put("inner", {"from": "b"})          # a write through the other handle, same thread
    with b.batch() as batch:
        batch.put("batch", {"k": 1})
    b.update("inner", lambda d: {**d, "updated": True})
    return {"v": doc["v"] + 1, "saw": b.get("inner")}

out = a.update("n", fn)
print(json.dumps([out, b.get("n"), a.get("inner"), a.get("batch"), a.version("n"),
                  b.version("inner"), sorted(a.keys())]))
"""


def test_write_through_a_second_handle_inside_update_is_reentrant(tmp_path: Path) -> None:
    """Case 10: inside ``a.update(fn)``, ``fn`` writes through ``b`` (same directory, same
    process, same thread): reentrant, never a hang; every write lands exactly once."""
    for durable in ("durable", "not-durable"):
        d = tmp_path / durable
        out = _run(_NESTED, str(d), durable)
        inner = {"from": "b", "updated": True}
        assert out == [{"v": 1, "saw": inner}, {"v": 1, "saw": inner}, inner, {"k": 1}, 2, 2,
                       ["batch", "inner", "n"]]


_THREADS = """
import json, sys, threading
from racefree import Store
a = Store(sys.argv[1], durable=False)
b = Store(sys.argv[1], durable=False)
a.put("n", {"v": 0})
start = threading.Barrier(2)

def work(store):
    start.wait(30)
    for _ in range(300):
        store.update("n", lambda d: {"v": d["v"] + 1})

threads = [threading.Thread(target=work, args=(s,)) for s in (a, b)]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
print(json.dumps([a.get("n"), b.get("n"), a.version("n"), any(t.is_alive() for t in threads)]))
"""


def test_two_handles_in_two_threads_exclude_each_other(tmp_path: Path) -> None:
    """Case 10: two threads, each updating through its own handle on one directory: they
    take turns (no lost update, no deadlock): exactly 600 increments."""
    assert _run(_THREADS, str(tmp_path / "s")) == [{"v": 600}, {"v": 600}, 601, False]


_FORK = """
import json, os, sys
from racefree import InheritedLockError, Store
s = Store(sys.argv[1], durable=False)
other = Store(sys.argv[1], durable=False)
s.put("n", {"v": 0})
parent = os.getpid()
r, w = os.pipe()
said = []

def fn(doc):
    global pipe
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for name, store in (("same handle", s), ("other handle", other)):
            try:
                store.put("child", {"x": 1})
                os.write(w, f"{name}: wrote\\n".encode())
            except InheritedLockError:
                os.write(w, f"{name}: InheritedLockError\\n".encode())
        return {"v": -1}  # the child goes on with its parent's update: that write must fail too
    os.close(w)
    pipe = os.fdopen(r)
    said.extend(pipe.readline().strip() for _ in range(3))  # the child's three attempts
    return {"v": doc["v"] + 1}

try:
    out = s.update("n", fn)
except InheritedLockError:
    if os.getpid() == parent:
        raise
    os.write(w, b"update: InheritedLockError\\n")
    # Out of the locked call, the child takes a lock of its own (once the parent lets go).
    os.write(w, f"after: {s.put('after', {'y': 1})}\\n".encode())
    os._exit(0)
said.extend(line.strip() for line in pipe)
said.append(f"exit {os.waitpid(-1, 0)[1]}")
print(json.dumps([out, s.get("n"), s.version("n"), "child" in s, said, s.get("after")]))
"""


def test_child_forked_inside_update_raises_before_writing(tmp_path: Path) -> None:
    """Case 10: a child forked inside ``update(fn)`` holds no lock (its parent does): any
    write in it (through the same or another handle, and the rest of the update it was
    forked in) raises InheritedLockError before writing; the parent's update lands alone.
    Out of that call, the child writes again under a lock of its own."""
    out = _run(_FORK, str(tmp_path / "s"))
    assert out == [
        {"v": 1}, {"v": 1}, 2, False,
        ["same handle: InheritedLockError", "other handle: InheritedLockError",
         "update: InheritedLockError", "after: 1", "exit 0"],
        {"y": 1},
    ]
