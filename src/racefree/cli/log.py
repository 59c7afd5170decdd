"""``racefree log FILE tail | check``: look into an append-only log (:class:`racefree.AppendLog`).

Both actions only read: they take no lock (unless damage must be confirmed)
and change nothing, not even an incomplete last record. ``FILE`` must be a log
racefree wrote: a missing file, a directory or an empty file is an error here
(an empty file has no header line; only :class:`racefree.AppendLog` itself
takes an empty file for a new, empty log, as it does a missing one).
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
import time
from collections import deque
from typing import Any

from racefree import _fs
from racefree.log.appendlog import AppendLog

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "log",
        help="look into an append-only log: tail, check",
        description="Print the last records of an append-only log, or verify it.",
    )
    p.add_argument("file", metavar="FILE", help="the log file (not its .snapshot or .lock)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    tail = actions.add_parser(
        "tail", help="print the last records as JSON lines",
        description="Print the last N records stored after the snapshot, one JSON value a line.",
    )
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                      help="how many records (default 10)")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="keep printing records as they are appended (Ctrl-C stops)")
    tail.add_argument("--seq", action="store_true",
                      help="print each record's sequence number and a tab before it")
    actions.add_parser(
        "check", help="verify framing, checksums and JSON; exit 1 on damage",
        description="Verify every record's framing, checksum and JSON, and the snapshot. "
        "Prints a summary; an incomplete last record (an interrupted append) is reported, "
        "not damage. Exits 1 with one line naming the file and offset on damage.",
    )
    p.set_defaults(func=run)


def _existing_log(path: str) -> None:
    """Raise ``ValueError`` unless ``path`` is a non-empty file (AppendLog vets the rest)."""
    try:
        st = _fs.stat(path)
    except FileNotFoundError:
        raise ValueError(f"no log at {path}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} is a directory, not a log")
    if st.st_size == 0:  # the first append writes a header: this is no log racefree wrote
        raise ValueError(f"{path} is empty: not a racefree log")


def run(args: argparse.Namespace) -> int:
    _existing_log(args.file)  # a missing or empty file is an error here, not an empty log
    with AppendLog(args.file, durable=False) as log:
        if args.action == "check":
            print(_summary(log))
            return 0
        if args.lines < 0:
            raise ValueError(f"-n must be 0 or more, not {args.lines}")
        nxt = _tail(log, args.lines, args.seq)
        while args.follow:
            time.sleep(0.2)  # a person is watching: polling is fine here
            nxt = _print(log, nxt, args.seq)
    return 0


def _tail(log: AppendLog, n: int, seq: bool) -> int:
    """Print the last ``n`` records; return the sequence number after them."""
    end = len(log)
    try:
        last: deque[tuple[int, Any]] = deque(log.items(max(end - n, 0)), maxlen=n)
    except ValueError:  # the start was compacted away: read what is stored
        last = deque(log.items(), maxlen=n)
    for i, record in last:
        _emit(i, record, seq)
    sys.stdout.flush()
    return last[-1][0] + 1 if last else end


def _print(log: AppendLog, start: int, seq: bool) -> int:
    try:
        records = list(log.items(start))
    except ValueError:  # compacted before we printed them: say so, go on after the snapshot
        first = log.check().first
        print(f"racefree log: records {start} to {first - 1} were compacted into the snapshot "
              f"before they could be printed", file=sys.stderr)
        records = list(log.items(first))
    for i, record in records:
        _emit(i, record, seq)
    sys.stdout.flush()
    return records[-1][0] + 1 if records else start


def _emit(i: int, record: Any, seq: bool) -> None:
    text = json.dumps(record, ensure_ascii=False)
    print(f"{i}\t{text}" if seq else text)


def _summary(log: AppendLog) -> str:
    r = log.check()
    span = f"sequence {r.next - r.records}..{r.next - 1}" if r.records else "none stored"
    parts = [f"{r.path}: ok: {r.records} records ({span}), {r.size} bytes, segment {r.segment}"]
    if r.snapshot_upto is not None:
        parts.append(f"snapshot up to {r.snapshot_upto}")
    if r.torn:
        parts.append(f"an incomplete last record of {r.torn} bytes (invisible; the next "
                     f"append removes it)")
    else:
        parts.append("no torn tail")
    return "; ".join(parts)
