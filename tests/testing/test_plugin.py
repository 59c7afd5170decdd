"""The pytest plugin: its fixtures in a test file run by a fresh pytest, and what it imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

USER_TESTS = '''
import errno
from pathlib import Path

import pytest

from racefree import Store, _fs, atomic_write


def put_twice(d: Path) -> None:
    with Store(d / "s") as s:
        s.put("a", {"n": 1})
        s.put("a", {"n": 2})


def check(d: Path, acknowledged: bool) -> None:
    with Store(d / "s") as s:
        got = s.get("a")
    assert got == {"n": 2} if acknowledged else got in (None, {"n": 1}, {"n": 2})


def put_not_durably(d: Path) -> None:
    with Store(d / "s", durable=False) as s:
        s.put("a", {"n": 2})


def double(x):
    return 2 * x


def test_crash_states_fixture(crash_states):
    report = crash_states(put_twice, check)
    assert report.violations == [] and report.states > 3


def test_crash_states_fixture_fails_with_the_state(crash_states):
    crash_states(put_not_durably, check)


def test_crash_states_fixture_can_return_the_report(crash_states):
    assert crash_states(put_not_durably, check, fail=False).violations


def test_race_fixture(race):
    assert race(double, 21, processes=2).values == [42, 42]


def test_faults_fixture(faults, tmp_path):
    with faults("fsync", errno.EIO) as fs, pytest.raises(OSError):
        atomic_write(tmp_path / "f", b"x")
    assert fs.fired == 1


LEFT_OPEN = []


def test_faults_left_open(faults, tmp_path):
    LEFT_OPEN.append(faults("rename", errno.ENOSPC, times=None))  # still referenced after
    LEFT_OPEN[-1].__enter__()


def test_the_seam_was_restored(tmp_path):
    assert type(_fs.current()) is _fs.FileSystem
    atomic_write(tmp_path / "f", b"x")
'''


def test_the_fixtures_in_a_fresh_pytest(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "--rootdir", str(tmp_path), str(tmp_path / "test_user.py")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )
    out = done.stdout
    assert "1 failed, 6 passed" in out, out + done.stderr
    assert "FAILED test_user.py::test_crash_states_fixture_fails_with_the_state" in out
    failure = out[out.index("test_crash_states_fixture_fails_with_the_state ___"):]
    assert "power lost after: pwrite" in failure and "state kept in: " in failure
    assert "Traceback" not in failure  # the violation, not the plugin's own frames


def test_importing_racefree_testing_does_not_import_pytest() -> None:
    code = ("import sys, racefree, racefree.testing\n"
            "from racefree.testing import race, crash_states, faults, Recorder\n"
            "import racefree.testing.crashcheck, racefree.testing.strace\n"
            "print('pytest' in sys.modules, 'racefree.testing' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout == "False True\n"
    done = subprocess.run([sys.executable, "-c", "import sys, racefree; "
                           "print(sorted(m for m in sys.modules if m.startswith('racefree')))"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == "['racefree', 'racefree._errors']\n"
