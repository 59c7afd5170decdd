"""Case 8, the store's half: a FIFO or a device at one of the store's own names.

Opening a FIFO for reading blocks until a writer comes; reading the zero device never
ends. The store opens its files with ``O_NOFOLLOW | O_NONBLOCK`` and checks the type
with ``fstat`` before it reads one: each case is ``UnsafePathError`` at once. Every
store is opened in a child interpreter with a time bound, so that a store that hangs
fails its test instead of hanging the suite.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hostile import NOBODY, attacker, need_root, owner, shared_dir

from racefree import Store

NAMES = ("MANIFEST", "store.lock", "sync.lock", "store.shm", "seg-00000001.rfs", "POISONED")

_OPEN = """
import sys
from racefree import Store
try:
    with Store(sys.argv[1], **({"readonly": True} if sys.argv[2] == "ro" else {})) as s:
        s.get("a")
    print("opened")
except Exception as exc:
    print(type(exc).__name__, getattr(exc, "path", None))
"""


def _open_in_child(d: Path, readonly: bool) -> str:
    """What opening the store in a child says (bounded: a hang is a failure)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _OPEN, str(d), "ro" if readonly else "rw"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"opening {d} hung (a FIFO or device was read)") from None
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _special(path: Path, kind: str) -> None:
    """Replace ``path`` with a FIFO, or with a character device like /dev/zero."""
    if path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path, 0o666)
    else:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    need_root()  # the device nodes need root (mknod)
    d = tmp_path / "store"
    with Store(d, durable=False) as s:
        s.put("a", {"n": 1})
    yield d


@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
@pytest.mark.parametrize("kind", ["fifo", "zero-device"])
@pytest.mark.parametrize("name", NAMES)
def test_special_file_at_a_store_name_is_refused_at_once(
    store: Path, name: str, kind: str, readonly: bool
) -> None:
    """Case 8: a FIFO or the zero device at MANIFEST, a lock file, the shared header, a
    segment or the POISONED marker: UnsafePathError naming it, never a hang or an
    endless read (a read-only handle never looks at sync.lock or POISONED: it opens)."""
    _special(store / name, kind)
    mode = os.lstat(store / name).st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)
    said = _open_in_child(store, readonly)
    if readonly and name in ("sync.lock", "POISONED"):
        assert said == "opened"
    else:
        assert said == f"UnsafePathError {store / name}"
    assert stat.S_IFMT(os.lstat(store / name).st_mode) == stat.S_IFMT(mode)  # left alone


@pytest.mark.parametrize("name", ["MANIFEST", "store.lock", "store.shm", "seg-00000001.rfs"])
def test_fifo_planted_by_another_user_in_a_new_store_is_refused(name: str) -> None:
    """Case 8 in a shared directory: ``nobody`` plants a FIFO at a store name before root
    creates the store there: UnsafePathError at once, and the FIFO is left as it was."""
    with shared_dir("tmp") as d:
        attacker("import os, sys; os.mkfifo(sys.argv[1], 0o666)", str(d / name))
        assert stat.S_ISFIFO(os.lstat(d / name).st_mode) and owner(d / name) == NOBODY
        assert _open_in_child(d, readonly=False) == f"UnsafePathError {d / name}"
        assert stat.S_ISFIFO(os.lstat(d / name).st_mode) and owner(d / name) == NOBODY
        assert "MANIFEST" not in os.listdir(d) or name == "MANIFEST"  # no store was made
