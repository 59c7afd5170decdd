"""No SIGBUS: a store file cut short while processes have it open.

A shared mapping of a file that someone truncates kills the process that touches it
(SIGBUS). Another member of a store's group may write its files; the store must report
a file cut short as ``CorruptFileError`` at the next call and keep the process alive.
The store runs as root in a child interpreter (a SIGBUS kills the child, not the suite);
the attacker is ``nobody`` in the store's group.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hostile import NOGROUP, attacker, shared_dir
from helpers.testkit import reap

from racefree import Store

_HOLDER = """
import json, sys
from racefree import CorruptFileError, Store
s = Store(sys.argv[1], durable=False)
assert s.version("a") == 1  # not get: a document read before the cut is cached
print("ready", flush=True)
sys.stdin.readline()
out = []
for op in (lambda: s.get("a"), lambda: s.put("b", {"n": 2})):
    try:
        out.append(repr(op()))
    except CorruptFileError as exc:
        out.append("CorruptFileError " + exc.path)
print(json.dumps(out), flush=True)
s.close()
"""

_TRUNCATE = "import os, sys; os.truncate(sys.argv[1], int(sys.argv[2]))"


@pytest.fixture
def group_store() -> Iterator[Path]:
    """A store whose group (``nogroup``, the attacker's) may write its files: mode 0664."""
    with shared_dir("group") as d:
        old = os.umask(0o002)
        try:
            store = d / "store"
            with Store(store, durable=False) as s:
                s.put("filler", {"pad": "f" * 8192})  # "a" lands past the first page
                s.put("a", {"n": 1})
        finally:
            os.umask(old)
        yield store


def _readline(stream: Any) -> str:
    """One line from a child, bounded in time (a child that hangs fails the test)."""
    ready, _, _ = select.select([stream], [], [], 60)
    assert ready, "the child did not answer in time"
    line: str = stream.readline()
    return line


def _hold_then_cut(store: Path, name: str, size: int) -> tuple[int, list[str]]:
    """A root process with the store open; ``nobody`` cuts ``name`` to ``size`` bytes;
    the process then calls get and put. Returns its exit status and what it saw."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert _readline(proc.stdout) == "ready\n"
        attacker(_TRUNCATE, str(store / name), str(size))
        assert os.stat(store / name).st_size == size  # the attack happened
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = _readline(proc.stdout)
        status = proc.wait(timeout=60)
        return status, json.loads(line) if line else []
    finally:
        reap([proc])


def test_shared_header_cut_short_is_an_error_not_a_sigbus(group_store: Path) -> None:
    """A group-writable store.shm truncated to 0 by another group member: the process's
    next get and put raise CorruptFileError (it read the header with pread, never a
    mapping); no SIGBUS. Reopened, the store rebuilds the header: nothing was lost."""
    shm = group_store / "store.shm"
    st = os.stat(shm)
    assert st.st_gid == NOGROUP and st.st_mode & 0o020  # the attacker's group may write it
    status, seen = _hold_then_cut(group_store, "store.shm", 0)
    assert status != -signal.SIGBUS
    assert (status, seen) == (0, [f"CorruptFileError {shm}"] * 2)
    with Store(group_store, durable=False) as s:
        assert s.items() == [("a", {"n": 1}), ("filler", {"pad": "f" * 8192})]


def test_segment_cut_short_is_an_error_not_a_sigbus(group_store: Path) -> None:
    """A segment cut to its header by another group member: the next get of a document
    it held and the next put raise CorruptFileError naming the segment; no SIGBUS."""
    seg = group_store / "seg-00000001.rfs"
    assert os.stat(seg).st_mode & 0o020
    status, seen = _hold_then_cut(group_store, "seg-00000001.rfs", 16)
    assert status != -signal.SIGBUS
    assert (status, seen) == (0, [f"CorruptFileError {seg}"] * 2)


def test_header_only_its_owner_may_write_is_mapped_and_cannot_be_cut(tmp_path: Path) -> None:
    """Where the header is mapped (owned by the store's user, 0644), no other user can
    truncate it: the attempt is refused and the store keeps working. (Why mapping it
    is safe: only its owner or root could cut it, and they could kill the process.)"""
    with shared_dir("tmp") as d:
        store = d / "store"
        with Store(store, durable=False) as s:
            s.put("a", {"n": 1})
            assert s._core.hdr is not None and s._core.hdr.mapped
            assert os.stat(store / "store.shm").st_mode & 0o022 == 0
            proc = attacker(_TRUNCATE, str(store / "store.shm"), "0", check=False)
            assert proc.returncode != 0 and "PermissionError" in proc.stderr
            assert os.stat(store / "store.shm").st_size == 4096
            assert s.get("a") == {"n": 1}
            assert s.put("a", {"n": 2}) == 2
