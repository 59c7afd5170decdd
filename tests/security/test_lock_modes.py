"""Case 16: a user who may only read cannot hold racefree's own locks (the class of case 4).

``flock`` works on a descriptor opened for reading only, so a lock file that a user
may read is a lock that user can hold for ever: root's ``Store`` writers,
``AppendLog.append`` and ``JsonFile.update`` (default timeout: none) then wait without
bound. The lock files racefree keeps beside its data (``X.json.lock``, ``X.log.lock``,
a store's ``store.lock``, ``sync.lock`` and ``store.shm``) now give read and write only
to the classes (owner, group, others) that may write the data, as the logging
handlers' sidecar does; an older, more open one the caller owns is narrowed at its
next use. Root runs racefree, ``nobody`` attacks (``helpers.hostile``).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import hostile
from helpers.testkit import reap

from racefree import AppendLog, JsonFile, Store

LOCKS = ["s/store.lock", "s/sync.lock", "s/store.shm", "l.log.lock", "j.json.lock"]

HOLDER = r"""
import fcntl, os, sys
held = []
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        print(os.path.basename(path), "denied", flush=True)
        continue
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.append(fd)
    print(os.path.basename(path), "held", flush=True)
print("ready", flush=True)
sys.stdin.readline()
"""

ROOT_WRITES = r"""
import sys
from racefree import AppendLog, JsonFile, Store
d = sys.argv[1]
with Store(d + "/s") as s:
    s.put("b", {"y": 2})
with AppendLog(d + "/l.log") as log:
    log.append(2)
JsonFile(d + "/j.json").update(lambda doc: {**doc, "n": doc["n"] + 1})
print("written", flush=True)
"""


@pytest.fixture
def data() -> Iterator[Path]:
    """Root's store, log and JSON file in a directory nobody may read and search (0755)."""
    with hostile.shared_dir("tmp") as top:
        d = top / "data"
        d.mkdir(mode=0o755)
        with Store(d / "s") as s:
            s.put("a", {"x": 1})
        with AppendLog(d / "l.log") as log:
            log.append(1)
        JsonFile(d / "j.json").write({"n": 1})
        yield d


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_case16_a_user_who_may_only_read_can_neither_open_nor_hold_the_locks(data: Path) -> None:
    """nobody may read the data (0644) but not open any of the five lock files (0600), so
    root's store put, log append and JSON update all complete while nobody tries to hold
    them (before: each lock held by nobody blocked root for ever)."""
    for name in LOCKS:
        assert _mode(data / name) == 0o600, name
    assert _mode(data / "j.json") == 0o644 and _mode(data / "l.log") == 0o644
    holder = hostile.attacker_process(HOLDER, *(str(data / n) for n in LOCKS))
    try:
        assert holder.stdout is not None and holder.stdin is not None
        said = [holder.stdout.readline().strip() for _ in range(len(LOCKS) + 1)]
        assert said == [f"{Path(n).name} denied" for n in LOCKS] + ["ready"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        root = subprocess.run([sys.executable, "-c", ROOT_WRITES, str(data)], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert (root.returncode, root.stdout) == (0, "written\n"), root.stderr
    finally:
        reap([holder])
    with Store(data / "s", readonly=True) as s:
        assert s.items() == [("a", {"x": 1}), ("b", {"y": 2})]
    with AppendLog(data / "l.log") as log:
        assert list(log) == [1, 2]
    assert JsonFile(data / "j.json").read() == {"n": 2}


READS = r"""
import json, sys
from racefree import AppendLog, JsonFile, Store
d = sys.argv[1]
with Store(d + "/s", readonly=True) as s:
    items = s.items()
with AppendLog(d + "/l.log") as log:
    records = list(log)
    n = len(log)
print(json.dumps([items, records, n, JsonFile(d + "/j.json").read()]))
"""


def test_the_user_who_may_only_read_still_reads_everything(data: Path) -> None:
    """The same user reads the store (read-only handle), the log (records and length) and
    the JSON file, without any of the lock files: exact contents."""
    import json

    with hostile.shared_dir("tmp") as scratch:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "PYTHONPATH": hostile.racefree_path(scratch)}
        out = hostile.attacker(READS, str(data), env=env).stdout
    assert json.loads(out) == [[["a", {"x": 1}]], [1], 1, {"n": 1}]


@pytest.mark.parametrize("name", LOCKS)
def test_case16_an_older_world_readable_lock_is_narrowed_by_its_owner(
    data: Path, name: str
) -> None:
    """A lock file an older racefree made 0644 is narrowed to 0600 by root's next write
    (the owner may change its mode; the data is only root's to write)."""
    os.chmod(data / name, 0o644)
    with Store(data / "s") as s:
        s.put("c", {"z": 3})
    with AppendLog(data / "l.log") as log:
        log.append(3)
    JsonFile(data / "j.json").write({"n": 3})
    assert _mode(data / name) == 0o600


def test_a_lock_of_group_writable_data_is_open_to_the_group(tmp_path: Path) -> None:
    """Data its group may write (umask 002: 0664): the locks are 0660, so group members
    may take them (and others may not)."""
    old = os.umask(0o002)
    try:
        with Store(tmp_path / "s") as s:
            s.put("a", {"x": 1})
        with AppendLog(tmp_path / "l.log") as log:
            log.append(1)
        JsonFile(tmp_path / "j.json").write({"n": 1})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "j.json") == 0o664
    for name in LOCKS:
        assert _mode(tmp_path / name) == 0o660, name
