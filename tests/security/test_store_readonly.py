"""Case 11: another user who may only read a store's directory can still read the store.

Root owns the store (directory 0755, files 0644); ``nobody`` runs racefree's own copy
(``racefree_path``) with the system interpreter. ``racefree store DIR ls | get | check``
and ``Store(DIR, readonly=True)`` work for them, see every write acknowledged before each
read began, change no byte of the store, and refuse writes with ``ReadOnlyError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hostile import SETPRIV, SYSTEM_PYTHON, attacker, attacker_process, racefree_path
from helpers.hostile import shared_dir as hostile_dir
from helpers.testkit import reap

from racefree import Store


@pytest.fixture
def where() -> Iterator[tuple[Path, dict[str, str]]]:
    """A root-owned store under a shared directory, and an environment for ``nobody``
    that imports the racefree under test."""
    with hostile_dir("tmp") as d:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": racefree_path(d)}
        yield d / "store", env


def _files(store: Path) -> dict[str, str]:
    """Every file of the store and a hash of its bytes (what "changed nothing" compares)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.iterdir())}


_CANNOT_WRITE = """
import os, sys
for name in sys.argv[2:]:
    try:
        os.close(os.open(os.path.join(sys.argv[1], name), os.O_WRONLY))
        print(name, "writable")
    except PermissionError:
        print(name, "read-only")
"""


def _assert_read_only_for_nobody(store: Path, env: dict[str, str]) -> None:
    names = ["store.lock", "sync.lock", "store.shm", "MANIFEST", "seg-00000001.rfs"]
    out = attacker(_CANNOT_WRITE, str(store), *names, env=env).stdout.split("\n")
    assert out[:-1] == [f"{name} read-only" for name in names]


def test_cli_read_commands_work_for_a_user_who_may_only_read(
    where: tuple[Path, dict[str, str]],
) -> None:
    """Case 11: ``racefree store DIR ls``, ``get ID`` and ``check`` as ``nobody`` (no write
    access to any file of the store): exact output, exit 0, no byte of the store changed."""
    import subprocess

    store, env = where
    with Store(store) as s:
        s.put("a", {"n": 1})
        s.put("b", {"text": "two"})
        s.delete("b")
        s.put("c", {"n": 3})
    _assert_read_only_for_nobody(store, env)
    before = _files(store)

    def cli(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SETPRIV, SYSTEM_PYTHON, "-m", "racefree", "store", str(store),
                               *words], capture_output=True, text=True, timeout=60,
                              check=False, cwd="/", env=env)

    ls, get, check = cli("ls"), cli("get", "c"), cli("check")
    assert (ls.returncode, ls.stdout, ls.stderr) == (0, '"a"\tv1\t8 bytes\n"c"\tv1\t8 bytes\n', "")
    assert (get.returncode, json.loads(get.stdout)) == (0, {"n": 3})
    assert check.returncode == 0 and check.stdout.startswith("ok: documents=2 tombstones=1 ")
    assert _files(store) == before


_READER = """
import json, sys
from racefree import ReadOnlyError, Store
s = Store(sys.argv[1], readonly=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "get":
        out = s.get(arg)
    elif cmd == "keys":
        out = s.keys()
    elif cmd == "attached":
        out = s._core.attached
    elif cmd == "put":
        try:
            s.put(arg, {"x": 1})
            out = "wrote"
        except ReadOnlyError as exc:
            out = type(exc).__name__
    else:
        break
    print(json.dumps(out), flush=True)
s.close()
"""


class _Reader:
    """``nobody``'s read-only store, asked one command at a time."""

    def __init__(self, store: Path, env: dict[str, str]) -> None:
        self.proc = attacker_process(_READER, str(store), env=env)

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert ready, f"no answer to {command!r} in time"
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else "no answer"
        return json.loads(line)

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=60)


def test_readonly_store_follows_every_acknowledged_write(
    where: tuple[Path, dict[str, str]],
) -> None:
    """Case 11: ``Store(DIR, readonly=True)`` as ``nobody`` while root writes: the shared
    header and the lock files are closed to it (their mode: only those who may write the
    store may open them, case 16), so it indexes the files itself and follows them (the
    MANIFEST and the bytes after its last frame): it sees every write root acknowledged
    before each read, across a compaction and writers coming and going; its put raises
    ReadOnlyError; it changes no byte of the store."""
    store, env = where
    with Store(store) as s:
        s.put("a", {"n": 1})
    _assert_read_only_for_nobody(store, env)
    before = _files(store)
    reader = _Reader(store, env)
    try:
        assert reader.ask("get a") == {"n": 1}
        assert reader.ask("attached") is False  # no live writer: the header is not trusted
        assert reader.ask("put z") == "ReadOnlyError"
        assert _files(store) == before
        with Store(store) as s:
            assert s.put("a", {"n": 2}) == 2
            assert reader.ask("get a") == {"n": 2}
            assert reader.ask("attached") is False  # the header is closed to nobody
            s.put("b", {"n": 1})
            assert reader.ask("keys") == ["a", "b"]
            s.delete("a")
            assert reader.ask("keys") == ["b"]
            s.compact()
            assert reader.ask("get b") == {"n": 1}
            assert reader.ask("keys") == ["b"]
            for i in range(300):  # past the first segment: a roll, then appends after it
                s.put(f"k{i}", {"pad": "p" * 4000})
            assert len(list(store.glob("seg-*.rfs"))) >= 2
            assert reader.ask("get k299") == {"pad": "p" * 4000}
            s.put("b", {"n": 2})
            assert reader.ask("get b") == {"n": 2}
        with Store(store) as s:  # a new first opener: it rebuilds the header
            s.put("c", {"n": 3})
        assert reader.ask("get c") == {"n": 3}
        assert len(reader.ask("keys")) == 302
        assert reader.ask("put z") == "ReadOnlyError"
        assert reader.close() == 0
    finally:
        reap([reader.proc])
