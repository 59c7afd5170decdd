"""racefree.testing.faults and count_calls: the Nth call of a kind fails, once or from then on."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from racefree import DurabilityError, JsonFile, Store, atomic_write
from racefree.testing import InjectedFault, count_calls, faults


def test_count_calls_counts_what_racefree_does(tmp_path: Path) -> None:
    """One durable atomic_write: one write, one fsync, one rename, one directory fsync."""
    with count_calls() as fs:
        atomic_write(tmp_path / "f", b"data")
    assert (fs.count("write"), fs.count("fsync"), fs.count("rename"),
            fs.count("fsync_dir")) == (1, 1, 1, 1)
    assert fs.fired == 0 and (tmp_path / "f").read_bytes() == b"data"


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_the_nth_write_fails_once(tmp_path: Path, error: int) -> None:
    """The second write fails with the errno given; the first and third go through."""
    with faults("write", error, nth=2) as fs:
        atomic_write(tmp_path / "a", b"1")
        with pytest.raises(OSError) as info:
            atomic_write(tmp_path / "b", b"2")
        atomic_write(tmp_path / "c", b"3")
    assert isinstance(info.value, InjectedFault) and info.value.errno == error
    assert fs.fired == 1 and fs.count("write") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c"]  # no temp file left


def test_times_none_fails_from_then_on(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    JsonFile(path).write({"n": 0})
    with faults("rename", errno.ENOSPC, nth=2, times=None) as fs:
        JsonFile(path).update(lambda d: {"n": d["n"] + 1})
        for _ in range(3):
            with pytest.raises(OSError, match="No space left"):
                JsonFile(path).update(lambda d: {"n": d["n"] + 1})
    assert fs.fired == 3
    assert JsonFile(path).read() == {"n": 1}
    JsonFile(path).update(lambda d: {"n": d["n"] + 1})  # healthy again outside the block
    assert JsonFile(path).read() == {"n": 2}


def test_times_counts_consecutive_failures(tmp_path: Path) -> None:
    failed = []
    with faults("write", errno.EIO, nth=1, times=2) as fs:
        for name in "abc":
            try:
                atomic_write(tmp_path / name, b"x")
            except OSError as exc:
                failed.append((name, exc.errno))
    assert failed == [("a", errno.EIO), ("b", errno.EIO)] and fs.fired == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_failed_fdatasync_poisons_a_store(tmp_path: Path) -> None:
    """A user's error handling under test: the store refuses writes after a failed sync."""
    with Store(tmp_path / "s") as store:
        store.put("a", {"n": 1})
        with faults("fdatasync", errno.EIO), pytest.raises(DurabilityError):
            store.put("a", {"n": 2})
        with pytest.raises(DurabilityError):
            store.put("a", {"n": 3})


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no fault injection"), faults("sendfile", errno.EIO):
        pass
    with pytest.raises(ValueError, match="errno"), faults("write", 0):
        pass
    with pytest.raises(ValueError, match=">= 1"), faults("write", errno.EIO, nth=0):
        pass
