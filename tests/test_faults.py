"""Fault injection at the seam: ENOSPC, EDQUOT and EIO at every call of every operation.

For each operation, a counting pass learns how many calls of each faultable
operation it makes (:data:`faultfs.FAULT_OPS`); then every (call, errno) pair
is failed once ("a transient error") and from then on ("the disk stays full").
Each run must show:

* a typed error reaches the caller: an ``OSError`` carrying the injected errno
  (``DurabilityError`` is one), or the operation completes when the failed call
  was cleanup whose failure the layer documents as harmless;
* the data reads as the old version, or the new one where the error came after
  the commit point (a ``DurabilityError`` saying "may or may not be committed");
  never a mix, never an error on reading;
* no temp file is left (unless the failing call was the ``unlink`` removing it);
* once the disk is healthy again, the same object keeps working, unless an
  fsync failed: then it refuses further writes with ``DurabilityError`` instead of
  retrying the fsync (fsyncgate), and a freshly opened object works;
* recovery (opening again) that itself hits the fault is safe to run again.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faultfs import ERRNOS, FAULT_OPS, FaultFS

from racefree import DurabilityError, _fs

SYNC_OPS = ("fsync", "fdatasync", "fsync_dir")


@dataclasses.dataclass
class Scenario:
    """One operation under test.

    ``setup(dir)`` creates the old state and returns the object; ``op(obj)`` does
    the operation; ``state(dir)`` reads the data back with a fresh object (the
    public API); ``old``/``new`` are what ``state`` returns before and after;
    ``again(obj)`` is a further write on the same object, ``after_again(before)``
    the state it leaves; ``close(obj)`` releases it.
    """

    name: str
    setup: Callable[[Path], Any]
    op: Callable[[Any], Any]
    state: Callable[[Path], Any]
    old: Any
    new: Any
    again: Callable[[Any], Any]
    after_again: Callable[[Any], Any]  # the state ``again`` leaves, given the state before it
    close: Callable[[Any], None] = lambda obj: None
    stateful: bool = True  # does the object remember a failed fsync?
    reopen: Callable[[Path], Any] | None = None  # open the existing data (recovery)

    def open_existing(self, d: Path) -> Any:
        return self.reopen(d) if self.reopen is not None else self.setup(d)


def temps(directory: Path) -> list[str]:
    """Temp files racefree left anywhere under ``directory``."""
    out = []
    for dirpath, _dirs, files in os.walk(directory):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".rftmp")]
    return sorted(out)


def count_calls(sc: Scenario, tmp_path: Path) -> dict[str, int]:
    """How many calls of each faultable operation ``sc.op`` makes."""
    d = tmp_path / "count"
    d.mkdir()
    fs = FaultFS(None, sync=False)
    with _fs.use(fs):
        obj = sc.setup(d)
        fs.arm()
        sc.op(obj)
        fs.disarm()
        sc.close(obj)
    return {op: fs.counts[op] for op in FAULT_OPS if fs.counts[op]}


def run_fault(sc: Scenario, tmp_path: Path, op: str, nth: int, err: int, persist: bool) -> str:
    """One injected fault; returns what happened ("raised ...", "completed"). Asserts the contract."""
    d = tmp_path / f"{op}-{nth}-{errno.errorcode[err]}-{'p' if persist else 'o'}"
    d.mkdir()
    fs = FaultFS(op, nth, err, persist=persist, sync=False)
    where = f"{sc.name}: {errno.errorcode[err]} at {op} #{nth} ({'from then on' if persist else 'once'})"
    with _fs.use(fs):
        obj = sc.setup(d)
        fs.arm()
        raised: BaseException | None = None
        try:
            sc.op(obj)
        except Exception as exc:
            raised = exc
        if persist and sc.reopen is not None:
            # Recovery while the disk is still failing may fail (with a typed error) but
            # must not damage anything: it is run again below on a healthy disk.
            try:
                sc.close(sc.reopen(d))
            except OSError as exc:
                assert exc.errno == err, f"{where}: recovery raised {exc!r}"
        fs.disarm()
        try:
            after = sc.state(d)
        except Exception as exc:  # reading back must work once the disk is healthy
            raise AssertionError(f"{where}: reading back raised {exc!r}") from exc
        if raised is None:
            # The failing call was one whose error the layer may absorb (cleanup of a
            # temp, closing a read-only descriptor): then the operation did its job.
            assert fs.fired, where
            assert after == sc.new, f"{where}: completed but state is {after!r}"
            outcome = "completed"
        else:
            assert isinstance(raised, OSError), f"{where}: untyped {raised!r}"
            assert raised.errno == err, f"{where}: errno {raised.errno} in {raised!r}"
            if after != sc.old:
                # Only an error after the commit point may leave the new version.
                assert after == sc.new, f"{where}: neither old nor new: {after!r}"
                assert isinstance(raised, DurabilityError) or op in ("close", "unlink"), (
                    f"{where}: new version visible after {raised!r}"
                )
            outcome = f"raised {type(raised).__name__}"
        left = temps(d)
        if not (op == "unlink" and (persist or raised is None)):
            assert left == [], f"{where}: temp files left: {left}"
        # The object keeps working after a transient error; after an fsync failure
        # it refuses further writes (fsyncgate), and a new object works.
        if isinstance(raised, DurabilityError) and sc.stateful:
            with pytest.raises(DurabilityError):
                sc.again(obj)
            sc.close(obj)
            obj = sc.open_existing(d)
        sc.again(obj)
        assert sc.state(d) == sc.after_again(after), f"{where}: the object stopped working"
        sc.close(obj)
    return outcome


def matrix(sc: Scenario, tmp_path: Path) -> dict[str, int]:
    """Every faultable call of ``sc.op``, every errno, once and from then on."""
    counts = count_calls(sc, tmp_path)
    outcomes: dict[str, int] = {}
    for op, n in counts.items():
        for nth in range(1, n + 1):
            for err in ERRNOS:
                for persist in (False, True):
                    out = run_fault(sc, tmp_path, op, nth, err, persist)
                    outcomes[out] = outcomes.get(out, 0) + 1
    print(sc.name, counts, outcomes)
    return outcomes


# --------------------------------------------------------------------------- atomic_write
def _atomic_scenario() -> Scenario:
    from racefree import atomic_write

    def setup(d: Path) -> Path:
        atomic_write(d / "f", b"old" * 500)
        return d / "f"

    return Scenario(
        name="atomic_write",
        setup=setup,
        op=lambda p: atomic_write(p, b"new" * 700),
        state=lambda d: (d / "f").read_bytes(),
        old=b"old" * 500,
        new=b"new" * 700,
        again=lambda p: atomic_write(p, b"again"),
        after_again=lambda before: b"again",
        stateful=False,
    )


def test_atomic_write_faults(tmp_path: Path) -> None:
    """atomic_write under ENOSPC/EDQUOT/EIO at each call: typed error, old file kept, no temp."""
    outcomes = matrix(_atomic_scenario(), tmp_path)
    # 6 calls (open, write, fsync, close, replace, fsync_dir) x 3 errnos x 2 modes: the
    # two syncs raise DurabilityError, the other four the OSError itself.
    assert outcomes == {"raised InjectedFault": 24, "raised DurabilityError": 12}


# --------------------------------------------------------------------------- JsonFile
def _jsonfile_scenario() -> Scenario:
    from racefree import JsonFile

    def setup(d: Path) -> Any:
        jf = JsonFile(d / "doc.json", default={})
        jf.write({"n": 1})
        return jf

    return Scenario(
        name="JsonFile.update",
        setup=setup,
        op=lambda jf: jf.update(lambda doc: {"n": doc["n"] + 1}),
        state=lambda d: JsonFile(d / "doc.json").read(),
        old={"n": 1},
        new={"n": 2},
        again=lambda jf: jf.update(lambda doc: {"n": doc["n"] + 10}),
        after_again=lambda before: {"n": before["n"] + 10},
        reopen=lambda d: JsonFile(d / "doc.json"),
    )


def test_jsonfile_update_faults(tmp_path: Path) -> None:
    """JsonFile.update under each fault: typed error, old document kept, then it keeps working."""
    outcomes = matrix(_jsonfile_scenario(), tmp_path)
    # 8 calls (2 open, write, fsync, 2 close, replace, fsync_dir) x 3 errnos x 2 modes.
    assert outcomes == {"raised InjectedFault": 36, "raised DurabilityError": 12}
