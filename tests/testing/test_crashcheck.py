"""``racefree crashcheck``: any program's crash states, found from an strace recording.

The programs under ``programs/`` are the acceptance cases: a Node.js save that
renames a temp file over the target without any fsync (the usual advice) and a
Python save that fsyncs the file but not the directory must be caught; the same
saves with the whole fsync sequence, or with ``racefree.atomic_write``, and the
``sqlite3`` shell inserting rows in WAL mode with ``synchronous=FULL`` must pass.
Each run is bounded with ``--limit``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parent / "programs"
PY = sys.executable
CHECK_SAVED = f"{PY} {PROGRAMS / 'check_saved.py'} {{}}"

needs_strace = pytest.mark.skipif(shutil.which("strace") is None,
                                  reason="strace is not installed (CI installs it)")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (CI installs it)")
    return path


def crashcheck(tmp_path: Path, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "racefree", "crashcheck", "--plain", *args], cwd=tmp_path,
        capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL,
        check=False,
    )


def _data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    d.mkdir()
    (d / "data.json").write_text('{"version": 0, "items": []}')
    return d


def _states(out: str) -> int:
    m = re.search(r"(?:PASS: (\d+) crash states|FAIL: \d+ of (\d+) crash states)", out)
    assert m is not None, out
    return int(m[1] or m[2])


@needs_strace
def test_node_rename_without_fsync_is_caught(tmp_path: Path) -> None:
    node = _tool("node")
    _data_dir(tmp_path)
    done = crashcheck(tmp_path, "--dir", "d", "--limit", "300", "--check", CHECK_SAVED,
                      "--", node, str(PROGRAMS / "save_naive.js"), "d", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "data.json is damaged" in done.stdout  # an empty or NUL-filled file after rename
    assert re.search(r"power lost after #\d+ rename\(data.json.tmp, data.json\)", done.stdout)
    kept = re.findall(r"  state:     (\S+)", done.stdout)
    assert kept and all(Path(k, "data.json").exists() for k in kept)
    assert "reproduce: RACEFREE_CRASH_STATE=" in done.stdout


@needs_strace
def test_node_rename_without_fsync_is_caught_by_the_default_check(tmp_path: Path) -> None:
    """Without --check, racefree's checker finds the damaged JSON file."""
    node = _tool("node")
    _data_dir(tmp_path)
    done = crashcheck(tmp_path, "--dir", "d", "--limit", "300", "--", node,
                      str(PROGRAMS / "save_naive.js"), "d", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DAMAGED json data.json" in done.stdout


@needs_strace
def test_node_with_the_fsync_sequence_passes(tmp_path: Path) -> None:
    node = _tool("node")
    _data_dir(tmp_path)
    done = crashcheck(tmp_path, "--dir", "d", "--limit", "300", "--check", CHECK_SAVED,
                      "--", node, str(PROGRAMS / "save_fsync.js"), "d", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _states(done.stdout) >= 10 and "PASS" in done.stdout


@needs_strace
def test_python_without_the_directory_fsync_is_caught(tmp_path: Path) -> None:
    """The file is fsynced, the directory is not: after "saved N" was printed the rename
    can still be lost, and the older version comes back."""
    _data_dir(tmp_path)
    done = crashcheck(tmp_path, "--dir", "d", "--limit", "300", "--check", CHECK_SAVED,
                      "--", PY, str(PROGRAMS / "save_no_dirsync.py"), "d", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"version \d found, but version \d had been saved", done.stdout)
    assert "data.json is damaged" not in done.stdout  # the file itself was synced


@needs_strace
def test_python_with_atomic_write_passes(tmp_path: Path) -> None:
    _data_dir(tmp_path)
    done = crashcheck(tmp_path, "--dir", "d", "--limit", "300", "--check", CHECK_SAVED,
                      "--", PY, str(PROGRAMS / "save_atomic.py"), "d", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _states(done.stdout) >= 10


@needs_strace
def test_sqlite_wal_with_synchronous_full_passes(tmp_path: Path) -> None:
    sqlite3 = _tool("sqlite3")
    d = tmp_path / "d"
    d.mkdir()
    subprocess.run([sqlite3, str(d / "rows.db"), "PRAGMA journal_mode=WAL; "
                    "CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT);"], check=True,
                   capture_output=True, timeout=60)
    rows = 5
    sql = "PRAGMA synchronous=FULL;" + "".join(
        f" INSERT INTO t VALUES({i}, printf('%.3000c', char(96 + {i})));"
        f" SELECT 'committed {i}';" for i in range(1, rows + 1))
    check = f"{PY} {PROGRAMS / 'check_sqlite.py'} {{}} {rows}"
    done = crashcheck(tmp_path, "--dir", "d", "--limit", "150", "--check", check,
                      "--", sqlite3, "d/rows.db", sql)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 50 <= _states(done.stdout) <= 150
    assert "rows.db-shm is written through a shared mmap" in done.stdout


@needs_strace
def test_limit_bounds_the_states(tmp_path: Path) -> None:
    _data_dir(tmp_path)
    done = crashcheck(tmp_path, "--dir", "d", "--limit", "7", "--check", CHECK_SAVED,
                      "--", PY, str(PROGRAMS / "save_atomic.py"), "d", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _states(done.stdout) <= 7


def test_without_strace_one_line_says_how_to_install_it(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    done = crashcheck(tmp_path, "--", "true", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "needs strace" in done.stderr and "apt-get install strace" in done.stderr


def test_everything_else_works_without_strace(tmp_path: Path) -> None:
    """race, crash_states and faults need no tool: run them with an empty PATH."""
    code = (
        "import errno, sys\n"
        "from racefree import atomic_write\n"
        "from racefree.testing import crash_states, faults\n"
        "r = crash_states(lambda d: atomic_write(d / 'f', b'x' * 9000),\n"
        "                 lambda d, ack: (not ack) or (d / 'f').read_bytes() == b'x' * 9000)\n"
        "assert r.violations == [] and r.states > 3, r.summary()\n"
        "with faults('fsync', errno.EIO) as fs:\n"
        "    try:\n"
        "        atomic_write(sys.argv[1] + '/g', b'y')\n"
        "    except OSError:\n"
        "        pass\n"
        "assert fs.fired == 1\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run([PY, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_a_missing_program_is_reported(tmp_path: Path) -> None:
    done = crashcheck(tmp_path, "--dir", ".")
    assert done.returncode == 2 and "give the program" in done.stderr
