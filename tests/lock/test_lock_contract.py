"""The lock contract (tests/helpers/lock_contract.py) run against every way of locking.

Kinds: FileLock exclusive, FileLock shared (readers and writers), LockFile.
Holders: threads, asyncio tasks, processes, and all of them at once; with one
lock instance shared by the holders of a process (L3) and with one instance
each (L2). Each run checks the inside flags, interval overlap and an exact
counter.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers.lock_contract import (
    API_CHECKS,
    SPECS,
    Workload,
    check_intervals,
    check_kill_9,
    run_contract,
)

MODES = {
    # name: (workload fields, child processes, run holders in the test process too)
    "threads": ({"threads": 5}, 0, True),
    "tasks": ({"tasks": 5}, 0, True),
    "threads-own-instances": ({"threads": 5, "share_instance": False}, 0, True),
    "tasks-own-instances": ({"tasks": 5, "share_instance": False}, 0, True),
    "processes": ({"threads": 1}, 3, False),
    "mixed": ({"threads": 2, "tasks": 2, "iterations": 20}, 2, True),
}


def _needs(spec: str) -> None:
    if spec == "lockfile":
        import racefree

        try:
            racefree.LockFile  # noqa: B018 - the import is the check
        except (AttributeError, ImportError):
            pytest.skip("racefree.LockFile is not available in this tree")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.timeout(180)
def test_contract(spec: str, mode: str, tmp_path: Path) -> None:
    """Never two writers, never a writer with a reader; the counter is exact."""
    _needs(spec)
    fields, processes, in_parent = MODES[mode]
    fields = {"iterations": 40, **fields}
    if spec == "lockfile":  # a LockFile waiter polls other processes: fewer rounds
        fields["iterations"] = min(fields["iterations"], 15)
    wl = Workload(spec=spec, **fields)  # type: ignore[arg-type]
    result = run_contract(wl, tmp_path, processes=processes, in_parent=in_parent)
    assert result["writes"] > 0


@pytest.mark.parametrize("check", list(API_CHECKS))
@pytest.mark.parametrize("spec", ["filelock", "lockfile"])
@pytest.mark.timeout(120)
def test_api_contract(spec: str, check: str, tmp_path: Path) -> None:
    """Reentrancy, timeouts, nowait, cancellation, two instances: the same for every lock."""
    _needs(spec)
    API_CHECKS[check](spec, str(tmp_path / "the.lock"))


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["filelock", "lockfile"])
@pytest.mark.timeout(120)
def test_kill_9_holder(spec: str, tmp_path: Path) -> None:
    """SIGKILL of the holder process: the next waiter gets the lock (kernel / proof of death)."""
    _needs(spec)
    took = check_kill_9(spec, str(tmp_path / "the.lock"), within=30.0)
    print(f"{spec}: waiter got the lock {1000 * took:.1f} ms after SIGKILL")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_contract_shared_many_processes(tmp_path: Path) -> None:
    """Readers and writers in 4 processes x (2 threads + 2 tasks) each, one lock file."""
    wl = Workload(spec="filelock-shared", threads=2, tasks=2, iterations=15, writer_every=2)
    run_contract(wl, tmp_path, processes=3, in_parent=True)


def test_check_intervals_finds_overlaps() -> None:
    """The overlap checker itself: it flags writer overlaps and allows reader overlaps."""
    assert check_intervals([(0.0, 1.0, True), (1.0, 2.0, True)]) == []
    assert len(check_intervals([(0.0, 1.0, True), (0.5, 2.0, True)])) == 1
    assert check_intervals([(0.0, 1.0, False), (0.5, 2.0, False)]) == []
    assert len(check_intervals([(0.0, 1.0, False), (0.5, 2.0, True)])) == 1
    assert len(check_intervals([(0.0, 3.0, True), (1.0, 1.5, False)])) == 1
    assert len(check_intervals([(0.0, 3.0, False), (1.0, 1.5, False), (2.0, 2.5, True)])) == 1


def test_contract_detects_a_broken_lock(tmp_path: Path) -> None:
    """The contract fails on a lock that excludes nobody (so it can fail at all)."""
    from helpers import lock_contract

    class NoLock:
        def __enter__(self) -> NoLock:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        async def __aenter__(self) -> NoLock:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

    original = lock_contract.make_lock
    lock_contract.make_lock = lambda spec, path, writer: NoLock()
    try:
        wl = dataclasses.replace(Workload(spec="filelock"), tasks=5, iterations=20)
        with pytest.raises(AssertionError):
            run_contract(wl, tmp_path)
    finally:
        lock_contract.make_lock = original
