"""The end of ``racefree torture``: the final state against what the workers acknowledged.

The workers' acknowledgement files (see :mod:`racefree.torture.worker`) say,
per worker, which operations began and which returned. A SIGKILL leaves at most
one operation of an incarnation in flight. The checks are exact bounds:

- a counter (JSON file, store document, lock-protected counter file) lies
  between the number of acknowledged increments and the number begun;
- a key written by put/delete holds the result of the last acknowledged
  operation on it, or of one begun after it; nothing older, nothing invented;
- a batch's two documents are equal (all or nothing), with the same bound;
- the log holds every acknowledged record, nothing that was never begun, no
  duplicate, and each worker's records in the order it appended them;
- lock holders' intervals (monotonic clock) never overlap; LockFile fencing
  tokens grow with every hold; no worker saw another live holder inside;
- every file opens and passes its layer's ``check()``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import defaultdict
from typing import Any

from racefree import _fs
from racefree.torture.worker import pg_object


@dataclasses.dataclass
class Op:
    kind: str
    seq: int
    acked: bool = False
    begin: list[str] = dataclasses.field(default_factory=list)  # the B line's extra fields
    end: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Row:
    """One line of the final table."""

    check: str
    acked: int = 0
    in_flight: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Acks:
    ops: dict[int, dict[int, Op]]  # worker -> seq -> op
    notes: dict[int, list[str]]  # worker -> V/X lines

    def of(self, wid: int, *kinds: str) -> list[Op]:
        return sorted((o for o in self.ops[wid].values() if o.kind in kinds), key=lambda o: o.seq)


def read_acks(ack_dir: str) -> Acks:
    ops: dict[int, dict[int, Op]] = defaultdict(dict)
    notes: dict[int, list[str]] = defaultdict(list)
    for name in sorted(_fs.listdir(ack_dir)):
        if not name.startswith("w") or name.endswith(".err"):
            continue
        wid = int(name[1:].split(".")[0])
        ops[wid]
        raw = _fs.read_file(os.path.join(ack_dir, name)).decode(errors="replace")
        for line in raw.split("\n")[:-1]:  # a line without its newline was never written
            tag, _, rest = line.partition(" ")
            if tag in ("V", "X"):
                notes[wid].append(rest)
                continue
            kind, seq_text, *extra = rest.split()
            seq = int(seq_text)
            op = ops[wid].setdefault(seq, Op(kind, seq))
            if tag == "B":
                op.begin = extra
            else:
                op.acked = True
                op.end = extra
    return Acks(dict(ops), dict(notes))


def _bound(row: Row, what: str, value: int, ops: list[Op]) -> None:
    acked = sum(o.acked for o in ops)
    row.acked += acked
    row.in_flight += len(ops) - acked
    if not acked <= value <= len(ops):
        row.problems.append(f"{what} is {value}: {acked} increments acknowledged, {len(ops)} begun")


def _last_write(row: Row, what: str, actual: Any, ops: list[Op], result: Any) -> None:
    """``actual`` must be the result of the last acknowledged op, or of one begun after it."""
    acked = [i for i, o in enumerate(ops) if o.acked]
    row.acked += len(acked)
    row.in_flight += len(ops) - len(acked)
    first = acked[-1] if acked else -1
    allowed = [result(o) for o in ops[max(first, 0):]]
    if first < 0:
        allowed.append(None)  # nothing acknowledged: never written is possible
    if actual not in allowed:
        row.problems.append(f"{what} is {actual!r}, allowed {allowed[:6]!r}")


def verify(root: str, kinds: list[str], workers: int, url: str = "") -> list[Row]:
    """Check the final state in ``root`` (and at ``url``); one row per kind of check."""
    acks = read_acks(os.path.join(root, "acks"))
    wids = range(workers)
    rows: list[Row] = []
    if "json" in kinds:
        rows.append(_json(root, acks, wids))
    if any(k.startswith("store.") for k in kinds):
        rows += _store(root, acks, wids, kinds, url)
    if "log" in kinds:
        rows.append(_log(root, acks, wids))
    for kind in ("flock", "lockfile"):
        if kind in kinds:
            rows.append(_lock(root, acks, wids, kind, url))
    notes = Row("workers: no exception, nothing seen inside")
    for wid, lines in sorted(acks.notes.items()):
        notes.problems += [f"worker {wid}: {line}" for line in lines]
    rows.append(notes)
    return rows


def _guard(row: Row, func: Any, *args: Any) -> Any:
    try:
        return func(*args)
    except Exception as exc:  # any failure to open or read is the finding itself
        row.problems.append(f"{type(exc).__name__}: {exc}")
        return None


def _json(root: str, acks: Acks, wids: range) -> Row:
    from racefree.files.jsonfile import JsonFile

    row = Row("JsonFile.update counters")
    doc = _guard(row, JsonFile(os.path.join(root, "counter.json"), default={}).read)
    if doc is not None:
        for wid in wids:
            _bound(row, f"counter w{wid}", doc.get(f"w{wid}", 0), acks.of(wid, "json"))
    return row


def _store(root: str, acks: Acks, wids: range, kinds: list[str], url: str) -> list[Row]:
    if url:

        opened = Row("PgStore opens and check() passes")
        store = _guard(opened, pg_object, url, "store", root)
    else:
        from racefree.store.store import Store

        opened = Row("Store opens and check() passes")
        store = _guard(opened, Store, os.path.join(root, "store"))
    if store is None:
        return [opened]
    try:
        _guard(opened, store.check)
        upd, kv, bat = Row("Store.update counters"), Row("Store.put/delete"), Row("Store.batch")
        for wid in wids:
            doc = _guard(upd, store.get, f"c{wid}")
            _bound(upd, f"c{wid}", 0 if doc is None else doc["n"], acks.of(wid, "store.update"))
            doc = _guard(kv, store.get, f"k{wid}")
            _last_write(kv, f"k{wid}", None if doc is None else doc["s"],
                        acks.of(wid, "store.put", "store.delete"),
                        lambda o: o.seq if o.kind == "store.put" else None)
            a, b = _guard(bat, store.get, f"ba{wid}"), _guard(bat, store.get, f"bb{wid}")
            if a != b:
                bat.problems.append(f"batch of worker {wid} torn: {a!r} != {b!r}")
            _last_write(bat, f"ba{wid}", None if a is None else a["s"],
                        acks.of(wid, "store.batch"), lambda o: o.seq)
        rows = [opened]
        rows += [r for r, k in ((upd, "store.update"), (kv, "store.put"), (bat, "store.batch"))
                 if k in kinds or (k == "store.put" and "store.delete" in kinds)]
        if "store.compact" in kinds:
            comp = Row("Store.compact")
            for wid in wids:
                ops = acks.of(wid, "store.compact")
                comp.acked += sum(o.acked for o in ops)
                comp.in_flight += sum(not o.acked for o in ops)
            rows.append(comp)
        return rows
    finally:
        store.close()


def _log(root: str, acks: Acks, wids: range) -> Row:
    from racefree.log.appendlog import AppendLog

    row = Row("AppendLog.append: all acked, in order")
    log = AppendLog(os.path.join(root, "log.rfl"))
    try:
        _guard(row, log.check)
        records = _guard(row, lambda: list(log.read(0)))
    finally:
        log.close()
    if records is None:
        return row
    seen: dict[int, list[int]] = defaultdict(list)
    for rec in records:
        seen[rec["w"]].append(rec["s"])
    for wid in wids:
        ops = acks.of(wid, "log")
        got = seen.get(wid, [])
        row.acked += sum(o.acked for o in ops)
        row.in_flight += sum(not o.acked for o in ops)
        begun = {o.seq for o in ops}
        missing = [o.seq for o in ops if o.acked and o.seq not in got]
        if missing:
            row.problems.append(f"worker {wid}: acknowledged records lost: {missing[:5]}")
        if any(s not in begun for s in got):
            row.problems.append(f"worker {wid}: records never appended: "
                                f"{[s for s in got if s not in begun][:5]}")
        if got != sorted(set(got)):
            row.problems.append(f"worker {wid}: records out of order or duplicated")
    return row


def _lock(root: str, acks: Acks, wids: range, kind: str, url: str = "") -> Row:
    label = "LockFile" if kind == "lockfile" else ("PgLock" if url else "FileLock")
    row = Row(f"{label}: one holder at a time")
    holds: list[tuple[int, int, int, Op]] = []  # (enter, exit or -1, worker, op)
    ops_all: list[Op] = []
    for wid in wids:
        ops = acks.of(wid, kind)
        ops_all += ops
        for o in ops:
            if o.begin:
                holds.append((int(o.begin[0]), int(o.end[0]) if o.end else -1, wid, o))
    holds.sort(key=lambda h: h[0])
    last_end, last_who = -1, -1
    for enter, leave, wid, o in holds:
        if enter < last_end and wid != last_who:
            row.problems.append(f"worker {wid} entered (seq {o.seq}) while worker {last_who} "
                                f"was inside, {(last_end - enter) / 1e3:.0f} µs before it left")
        if leave >= 0 and leave > last_end:
            last_end, last_who = leave, wid
    if kind == "lockfile":
        tokens = [int(h[3].begin[1]) for h in holds if len(h[3].begin) > 1]
        if any(b <= a for a, b in itertools.pairwise(tokens)):
            row.problems.append("fencing tokens did not grow with every hold")
    raw = _guard(row, _fs.read_file, os.path.join(root, f"{kind}.count"))
    if raw is not None or not ops_all:
        value = int(raw.decode().strip("\0 ") or 0) if raw else 0
        _bound(row, f"{kind} counter", value, ops_all)
    return row
