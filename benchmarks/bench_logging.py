"""Benchmark: log records per second from 1 and 8 processes writing one rotating log file.

Prints one markdown table: racefree's RotatingFileHandler beside the standard
library's FileHandler (no rotation: a floor, and unsafe with several processes
only because it never rotates), the standard RotatingFileHandler (which races
at rollover: see its "kept" column), concurrent-log-handler, and the raw
system-call floor (one ``os.write`` of a preformatted line on an ``O_APPEND``
descriptor, no logging at all), all from the same run.

Setup as in issue 6: 8 processes x 3,000 records of ~110 bytes, ``max_bytes``
200 KB; the 1-process rows write the same 24,000 records alone. Each process
creates its handler after it starts, then waits at a start barrier; the time is
from the barrier to the last process's exit. No fsync anywhere (every handler
at its default durability) but in the ``durable`` rows. The rows run round by
round (9 rounds; a busy moment of the machine hits every row alike), and each
figure is the median of its rounds.

    .venv/bin/python benchmarks/bench_logging.py            # full run (~1 minute)
    .venv/bin/python benchmarks/bench_logging.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from typing import Any

MAX_BYTES = 200_000
BACKUPS = 200  # room for every record (~13 rotations): "kept" counts only what races lost

Factory = Callable[[str], logging.Handler]


def _racefree(path: str) -> logging.Handler:
    from racefree.logging import RotatingFileHandler

    return RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS)


def _racefree_rotate(path: str) -> logging.Handler:
    from racefree.logging import RotatingFileHandler

    return RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, durable="rotate")


def _racefree_record(path: str) -> logging.Handler:
    from racefree.logging import RotatingFileHandler

    return RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, durable="record")


def _stdlib_rotating(path: str) -> logging.Handler:
    return logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS)


def _stdlib_file(path: str) -> logging.Handler:
    return logging.FileHandler(path)


def _clh(path: str) -> logging.Handler:
    from concurrent_log_handler import ConcurrentRotatingFileHandler

    handler: logging.Handler = ConcurrentRotatingFileHandler(
        path, maxBytes=MAX_BYTES, backupCount=BACKUPS
    )
    return handler


IMPLS: dict[str, Factory | None] = {
    "raw os.write (O_APPEND, no logging)": None,
    "stdlib FileHandler (no rotation)": _stdlib_file,
    "stdlib RotatingFileHandler": _stdlib_rotating,
    "concurrent-log-handler": _clh,
    "racefree RotatingFileHandler": _racefree,
    'racefree, durable="rotate"': _racefree_rotate,
    'racefree, durable="record"': _racefree_record,
}
#: Rows with fsyncs: fewer records per row (each durable record is an fdatasync).
DURABLE_ROWS = {'racefree, durable="record"'}


def _worker(name: str, path: str, count: int, wid: int, start: Event) -> None:
    factory = IMPLS[name]
    logging.raiseExceptions = False  # the stdlib handler's rename races would flood stderr
    if factory is None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        start.wait()
        for i in range(count):
            line = f"2026-11-27 10:00:00,000 INFO bench w{wid} record {i:06d} {'x' * 60}\n"
            os.write(fd, line.encode())
        os.close(fd)
        return
    handler = factory(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log = logging.getLogger("bench")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    start.wait()
    for i in range(count):
        log.info("w%d record %06d %s", wid, i, "x" * 60)
    handler.close()


def _count_lines(directory: str) -> int:
    total = 0
    for entry in os.listdir(directory):
        if entry.startswith("app.log"):
            with open(os.path.join(directory, entry), "rb") as f:
                total += f.read().count(b"\n")
    return total


def run_once(name: str, procs: int, total: int) -> tuple[float, int]:
    """(records/s, records found in the files afterwards) for one configuration."""
    ctx: Any = multiprocessing.get_context("fork")
    directory = tempfile.mkdtemp(prefix="bench-logging-")
    try:
        path = os.path.join(directory, "app.log")
        start = ctx.Event()
        workers = [
            ctx.Process(target=_worker, args=(name, path, total // procs, w, start))
            for w in range(procs)
        ]
        # What the rows before left (dirty pages, journal commits, files deleted) is
        # flushed now, not while this row is timed.
        os.sync()
        for w in workers:
            w.start()
        time.sleep(0.3)  # let every worker open its handler; not part of the timing
        t0 = time.perf_counter()
        start.set()
        for w in workers:
            w.join(timeout=600)
            if w.exitcode != 0:
                raise RuntimeError(f"{name}: a worker exited with {w.exitcode}")
        elapsed = time.perf_counter() - t0
        return total / elapsed, _count_lines(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    per_proc, repeats = (1_500, 1) if args.quick else (3_000, 9)
    total = 8 * per_proc
    # Round by round, every row once per round: a busy moment of the (shared)
    # machine hits every row alike instead of the rows that ran during it.
    runs: dict[tuple[str, int], list[tuple[float, int]]] = {}
    for _ in range(repeats):
        for procs in (1, 8):
            for name in IMPLS:
                n = total // 8 if name in DURABLE_ROWS else total
                runs.setdefault((name, procs), []).append(run_once(name, procs, n))
    results: dict[tuple[str, int], tuple[float, int]] = {
        key: (statistics.median(r for r, _ in got), min(k for _, k in got))
        for key, got in runs.items()
    }
    ours = "racefree RotatingFileHandler"
    floor1 = results[("stdlib FileHandler (no rotation)", 1)][0]
    clh8 = results[("concurrent-log-handler", 8)][0]
    print(f"records of ~110 bytes, max_bytes {MAX_BYTES:,}, {total:,} records per row, "
          f"median of {repeats}; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print("| handler | processes | records/s | kept / logged | racefree's records/s / this |")
    print("|---|---:|---:|---:|---|")
    for procs in (1, 8):
        mine = results[(ours, procs)][0]
        for name in IMPLS:
            rate, kept = results[(name, procs)]
            n = total // 8 if name in DURABLE_ROWS else total
            ratio = "" if name == ours else f"{mine / rate:.2f}"
            print(f"| {name} | {procs} | {rate:,.0f} | {kept:,} / {n:,} | {ratio} |")
    print()
    r1, r8 = results[(ours, 1)][0], results[(ours, 8)][0]
    file8 = results[("stdlib FileHandler (no rotation)", 8)][0]
    raw1 = results[("raw os.write (O_APPEND, no logging)", 1)][0]
    raw8 = results[("raw os.write (O_APPEND, no logging)", 8)][0]
    print(f"- 1 process: racefree's time per record is {floor1 / r1:.2f}x the stdlib "
          f"FileHandler's (target <= 1.1)")
    print(f"- 8 processes: racefree does {r8 / clh8:.2f}x the records/s of "
          f"concurrent-log-handler (target >= 4) and {r8 / file8:.2f}x the stdlib "
          f"FileHandler's (target >= 0.8)")
    print(f"- racefree 8 processes / 1 process: {r8 / r1:.2f}x (target >= 1.5; the raw "
          f"os.write floor: {raw8 / raw1:.2f}x, the stdlib FileHandler: "
          f"{file8 / floor1:.2f}x)")
    for name in ('racefree, durable="rotate"', 'racefree, durable="record"'):
        print(f"- {name}: {results[(name, 1)][0] / r1:.2f}x the default's records/s with 1 "
              f"process, {results[(name, 8)][0] / r8:.2f}x with 8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
