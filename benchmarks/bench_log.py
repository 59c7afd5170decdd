"""AppendLog appends per second, durable and not, against the raw system-call floor and SQLite.

Prints one markdown table. Rows are measured in the same run, interleaved round by
round (a busy moment of the machine hits every row alike); each figure is the median
over the rounds of the mean time per operation. A record is a ~100-byte JSON object.

- raw floor: ``write`` of a ready-made line to an ``O_APPEND`` descriptor, plus
  ``fdatasync`` when durable; "raw floor + flock" adds ``flock``/unlock around it
  (what any multi-process appender needs at the least).
- ``AppendLog.append`` with ``durable=True`` / ``False`` (each append: lock, stat,
  frame + checksum, pwrite, fdatasync if durable, unlock).
- ``sqlite3`` in WAL mode, one autocommit INSERT of the JSON text per append, with
  ``synchronous=FULL`` (durable) and ``NORMAL`` (not durable).
- reading: iterate every record (``list(log)``) against ``readlines`` + ``json.loads``.

    python benchmarks/bench_log.py            # full run, about a minute
    python benchmarks/bench_log.py --quick    # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import racefree

RECORD = {"type": "message", "user": "ana", "text": "hello " * 8, "n": 12345}
LINE = (json.dumps(RECORD, separators=(",", ":")) + "\n").encode()

Op = Callable[[], object]


def raw(directory: str, durable: bool, locked: bool) -> Op:
    fd = os.open(os.path.join(directory, "raw"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    lock = os.open(os.path.join(directory, "raw.lock"), os.O_RDWR | os.O_CREAT, 0o666)

    def op() -> None:
        if locked:
            fcntl.flock(lock, fcntl.LOCK_EX)
        os.write(fd, LINE)
        if durable:
            os.fdatasync(fd)
        if locked:
            fcntl.flock(lock, fcntl.LOCK_UN)

    return op


def appendlog(directory: str, durable: bool) -> Op:
    log = racefree.AppendLog(os.path.join(directory, "x.log"), durable=durable)
    return lambda: log.append(RECORD)


def sqlite(directory: str, durable: bool) -> Op:
    db = sqlite3.connect(os.path.join(directory, "x.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    db.execute("CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, record TEXT)")
    return lambda: db.execute("INSERT INTO log (record) VALUES (?)", (json.dumps(RECORD),))


ROWS: list[tuple[str, str, Callable[[str], Op]]] = [
    ("raw floor: write + fdatasync", "durable", lambda d: raw(d, True, False)),
    ("raw floor + flock: write + fdatasync", "durable", lambda d: raw(d, True, True)),
    ("racefree AppendLog.append", "durable", lambda d: appendlog(d, True)),
    ("sqlite3 WAL, synchronous=FULL", "durable", lambda d: sqlite(d, True)),
    ("raw floor: write", "process crash", lambda d: raw(d, False, False)),
    ("raw floor + flock: write", "process crash", lambda d: raw(d, False, True)),
    ("racefree AppendLog.append durable=False", "process crash", lambda d: appendlog(d, False)),
    ("sqlite3 WAL, synchronous=NORMAL", "process crash", lambda d: sqlite(d, False)),
]


def bench_reads(directory: str, n: int) -> tuple[float, float]:
    """Seconds per record: AppendLog iteration, and readlines + json.loads of JSON lines."""
    path = os.path.join(directory, "read.log")
    with racefree.AppendLog(path, durable=False) as log:
        for _ in range(n):
            log.append(RECORD)
        plain = os.path.join(directory, "read.jsonl")
        with open(plain, "wb") as f:
            f.write(LINE * n)
        t0 = time.perf_counter()
        got = sum(1 for _ in log)
        t1 = time.perf_counter()
        with open(plain, "rb") as f:
            floor = sum(1 for line in f.readlines() if json.loads(line))
        t2 = time.perf_counter()
    assert got == floor == n
    return (t1 - t0) / n, (t2 - t1) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    n_durable, n_fast, rounds = (20, 300, 3) if args.quick else (150, 3000, 9)
    samples: dict[int, list[float]] = {i: [] for i in range(len(ROWS))}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as top:
        ops = []
        for i, (_, level, make) in enumerate(ROWS):
            d = os.path.join(top, str(i))
            os.mkdir(d)
            ops.append((make(d), n_durable if level == "durable" else n_fast))
        for _ in range(rounds):
            for i, (op, n) in enumerate(ops):
                t0 = time.perf_counter()
                for _ in range(n):
                    op()
                samples[i].append((time.perf_counter() - t0) / n)
        read_log, read_floor = bench_reads(top, 2000 if args.quick else 100_000)
    med = {i: statistics.median(s) for i, s in samples.items()}
    print(f"AppendLog, {len(LINE)}-byte JSON records, median of {rounds} rounds "
          f"(Python {platform.python_version()}, {platform.system()}); ratio: time per "
          f"operation / the raw floor of the same durability (lower is better)\n")
    print("| operation | durable against | appends/s | µs/op | ratio to floor |")
    print("|---|---|---:|---:|---:|")
    for i, (label, level, _) in enumerate(ROWS):
        floor = med[0] if level == "durable" else med[4]
        print(f"| {label} | {level} | {1 / med[i]:,.0f} | {med[i] * 1e6:,.1f} "
              f"| {med[i] / floor:.2f}x |")
    print(f"| racefree iterate (`list(log)`) | - | {1 / read_log:,.0f} records/s "
          f"| {read_log * 1e6:.2f} | {read_log / read_floor:.2f}x |")
    print(f"| floor: readlines + json.loads | - | {1 / read_floor:,.0f} records/s "
          f"| {read_floor * 1e6:.2f} | 1.00x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
