"""Fault injection at the seam: ENOSPC, EDQUOT and EIO at every call of every operation.

For each operation, a counting pass learns how many calls of each faultable
operation it makes (:data:`racefree.testing.injection.FAULT_OPS`); then every (call, errno) pair
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
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from racefree import DurabilityError, _fs
from racefree.testing.injection import ERRNOS, FAULT_OPS, FaultFS

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
    # After an fsync failure: what clears a poison that outlives the object (the store's
    # POISONED marker: ``racefree check --repair``), before a new object may write.
    unpoison: Callable[[Path], None] | None = None

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
    """One injected fault; returns what happened ("raised ...", "completed"). Asserts the contract.
    """
    d = tmp_path / f"{op}-{nth}-{errno.errorcode[err]}-{'p' if persist else 'o'}"
    d.mkdir()
    fs = FaultFS(op, nth, err, persist=persist, sync=False)
    mode = "from then on" if persist else "once"
    where = f"{sc.name}: {errno.errorcode[err]} at {op} #{nth} ({mode})"
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
            try:
                sc.again(obj)
            except DurabilityError:
                pass
            else:
                raise AssertionError(f"{where}: wrote again after {raised!r} (fsyncgate)")
            sc.close(obj)
            if sc.unpoison is not None:
                sc.unpoison(d)
            obj = sc.open_existing(d)
        sc.again(obj)
        assert sc.state(d) == sc.after_again(after), f"{where}: the object stopped working"
        sc.close(obj)
    return outcome


def matrix(sc: Scenario, tmp_path: Path) -> dict[str, int]:
    """Every faultable call of ``sc.op``, every errno, once and from then on."""
    counts = count_calls(sc, tmp_path)
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    for op, n in counts.items():
        for nth in range(1, n + 1):
            for err in ERRNOS:
                for persist in (False, True):
                    try:
                        out = run_fault(sc, tmp_path, op, nth, err, persist)
                    except AssertionError as exc:
                        failures.append(str(exc).splitlines()[0])
                        continue
                    outcomes[out] = outcomes.get(out, 0) + 1
    print(sc.name, counts, outcomes)
    # One example of each kind of failure, with how often it happened.
    kinds: dict[str, list[str]] = {}
    for f in failures:
        found = re.search(r"\((?:once|from then on)\): ([^(]*)", f)
        what = found.group(1) if found else f  # e.g. "wrote again after DurabilityError"
        kinds.setdefault(what, []).append(f.replace(str(tmp_path), ""))
    shown = [f"{len(v)} x {v[0]}" for v in kinds.values()]
    assert failures == [], f"{len(failures)} failures:\n" + "\n".join(shown)
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


# --------------------------------------------------------------------------- AppendLog
def _log_state(d: Path) -> Any:
    from racefree import AppendLog

    with AppendLog(d / "events.log") as log:
        return (len(log), log.replay(lambda s, r: [*s, r], []))


def _log_scenario(name: str, op: Callable[[Any], Any], changes: bool) -> Scenario:
    from racefree import AppendLog

    def setup(d: Path) -> Any:
        log = AppendLog(d / "events.log")
        log.append({"i": 1})
        log.append({"i": 2, "pad": "x" * 300})
        return log

    old = (2, [{"i": 1}, {"i": 2, "pad": "x" * 300}])
    new = (3, [*old[1], {"i": 3}]) if changes else old

    def after_again(before: Any) -> Any:
        return (before[0] + 1, [*before[1], {"i": 4}])

    return Scenario(
        name=name,
        setup=setup,
        op=op,
        state=_log_state,
        old=old,
        new=new,
        again=lambda log: log.append({"i": 4}),
        after_again=after_again,
        close=lambda log: log.close(),
        reopen=lambda d: AppendLog(d / "events.log"),
    )


def test_log_append_faults(tmp_path: Path) -> None:
    """AppendLog.append under each fault: typed error, no partial record, the handle keeps working.
    """
    sc = _log_scenario("AppendLog.append", lambda log: log.append({"i": 3}), True)
    outcomes = matrix(sc, tmp_path)
    assert outcomes.get("raised DurabilityError", 0) == 6  # the fdatasync, 3 errnos x 2 modes
    assert "completed" not in outcomes


def test_log_compact_faults(tmp_path: Path) -> None:
    """AppendLog.compact under each fault: the log means the same, and keeps working."""
    sc = _log_scenario("AppendLog.compact", lambda log: log.compact(lambda s, r: [*s, r], []),
                       False)
    outcomes = matrix(sc, tmp_path)
    assert "completed" not in outcomes


# --------------------------------------------------------------------------- Store
SMALL = {"_segment_size": 4096}


def _store_state(d: Path) -> Any:
    from racefree import Store

    with Store(d / "store", **SMALL) as s:
        s.check()
        return dict(s.items())


def _store_scenario(name: str, op: Callable[[Any], Any], new: dict[str, Any],
                    **kw: Any) -> Scenario:
    from racefree import Store

    opts = {**SMALL, **kw}

    def setup(d: Path) -> Any:
        store = Store(d / "store", **opts)
        store.put("a", {"n": 1})
        store.put("b", {"n": 2, "pad": "p" * 900})
        store.put("b", {"n": 2, "pad": "p" * 900})
        return store

    def after_again(before: dict[str, Any]) -> dict[str, Any]:
        return {**before, "again": {"n": 9}}

    return Scenario(
        name=name,
        setup=setup,
        op=op,
        state=_store_state,
        old={"a": {"n": 1}, "b": {"n": 2, "pad": "p" * 900}},
        new=new,
        again=lambda s: s.put("again", {"n": 9}),
        after_again=after_again,
        close=lambda s: s.close(),
        reopen=lambda d: Store(d / "store", **opts),
        unpoison=_store_unpoison,
    )


def _store_unpoison(d: Path) -> None:
    """``racefree check --repair``: the poison outlives every handle until it is cleared."""
    from racefree.check.checker import check_path

    [found] = check_path(d / "store", repair=True)
    assert found.ok, found.detail
    assert not (d / "store" / "POISONED").exists()


OLD = {"a": {"n": 1}, "b": {"n": 2, "pad": "p" * 900}}


def _batch(s: Any) -> None:
    with s.batch() as b:
        b.put("c", {"n": 3})
        b.delete("a")


STORE_OPS: dict[str, tuple[Callable[[Any], Any], dict[str, Any], dict[str, Any]]] = {
    "Store.put": (lambda s: s.put("c", {"n": 3}), {**OLD, "c": {"n": 3}}, {}),
    "Store.put (new segment)": (
        lambda s: s.put("c", {"n": 3, "pad": "q" * 3000}),
        {**OLD, "c": {"n": 3, "pad": "q" * 3000}}, {},
    ),
    "Store.delete": (lambda s: s.delete("a"), {"b": OLD["b"]}, {}),
    "Store.batch": (_batch, {"b": OLD["b"], "c": {"n": 3}}, {}),
    "Store.compact": (lambda s: s.compact(), OLD, {}),
    "Store auto-compaction": (
        lambda s: s.put("b", {"n": 2, "pad": "p" * 900}), OLD, {"_compact_min": 512},
    ),
}


@pytest.mark.parametrize("name", list(STORE_OPS))
def test_store_faults(tmp_path: Path, name: str) -> None:
    """Store operations under each fault: typed error, old documents intact, the store keeps
    working.
    """
    op, new, kw = STORE_OPS[name]
    outcomes = matrix(_store_scenario(name, op, new, **kw), tmp_path)
    assert "completed" not in outcomes or name in ("Store.compact", "Store auto-compaction")


def test_store_compact_directory_fsync_failure_keeps_the_store_openable(tmp_path: Path) -> None:
    """A failed directory fsync after compaction's MANIFEST rename must not orphan the MANIFEST.

    atomic_write raises DurabilityError "the file was replaced but its directory
    could not be synced": the new MANIFEST, naming the new segments, is in
    place. Deleting those segments as if the compaction had not happened leaves
    a MANIFEST naming missing files: the store no longer opens.
    """
    from racefree import Store

    d = tmp_path / "store"
    with Store(d, **SMALL) as store:
        store.put("a", {"n": 1})
        store.put("a", {"n": 2})
        fs = FaultFS("fsync_dir", 2, errno.EIO, sync=False)
        with _fs.use(fs):
            fs.arm()
            with pytest.raises(DurabilityError):
                store.compact()
    assert fs.log and fs.log[0].startswith("fsync_dir#2")
    with Store(d, **SMALL) as again:  # FileNotFoundError here: a segment the MANIFEST names is gone
        assert dict(again.items()) == {"a": {"n": 2}}


def test_short_writes_are_completed_everywhere(tmp_path: Path) -> None:
    """Every write(2)/pwrite(2) writes only half of what it is given (W6): all data still lands."""
    from racefree import AppendLog, JsonFile, Store, atomic_write

    fs = FaultFS(None, sync=False, short_writes=True)
    doc = {"text": "w" * 5000}
    with _fs.use(fs):
        fs.arm()
        atomic_write(tmp_path / "f", b"x" * 10_000)
        JsonFile(tmp_path / "doc.json").write(doc)
        with AppendLog(tmp_path / "l.log") as log:
            log.append(doc)
        with Store(tmp_path / "s", **SMALL) as s:
            s.put("a", doc)
    assert fs.counts["write"] + fs.counts["pwrite"] > 20  # the halving really happened
    assert (tmp_path / "f").read_bytes() == b"x" * 10_000
    assert JsonFile(tmp_path / "doc.json").read() == doc
    with AppendLog(tmp_path / "l.log") as log:
        assert list(log) == [doc]
    with Store(tmp_path / "s", **SMALL) as s:
        assert s.get("a") == doc
