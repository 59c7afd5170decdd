"""A log-writing worker process for tests/logging/test_logging_handler.py (and its record format).

Run as ``python logworker_stress.py SPEC_JSON``: it builds the handler the spec
names, prints ``ready``, waits for one line on stdin (the start barrier), then
logs ``records`` records from each of ``threads`` threads (or, with
``seconds``, as many as fit in that time, and prints ``done {writer: count}``)
and exits 0.

Each record is one line ``<writer> <seq> <length> <payload>`` where ``writer``
is ``w<worker>t<thread>``, and the payload is a deterministic function of
(writer, seq, length), so a reader can check that every record is whole.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from typing import Any

BIG_EVERY = 40  # every 40th record of a writer is large


def record_length(worker: int, thread: int, seq: int, big_max: int) -> int:
    """The payload length of one record: mostly 20..300 bytes, sometimes up to ``big_max``."""
    h = (worker * 1_000_003 + thread * 10_007 + seq * 7_919) % 1_000_000_007
    if seq % BIG_EVERY == BIG_EVERY - 1:
        return 4_096 + h % max(1, big_max - 4_096)
    return 20 + h % 281


def payload(writer: str, seq: int, length: int) -> str:
    """The payload of one record: its identity repeated, cut to ``length`` characters."""
    unit = f"{writer}.{seq}."
    return (unit * (length // len(unit) + 1))[:length]


def line(writer: str, seq: int, length: int) -> str:
    return f"{writer} {seq} {length} {payload(writer, seq, length)}"


def parse(raw: bytes) -> tuple[str, int] | None:
    """(writer, seq) if ``raw`` (a line without its newline) is a whole, valid record."""
    try:
        writer, seq_s, length_s, body = raw.decode("ascii").split(" ", 3)
        seq, length = int(seq_s), int(length_s)
    except (UnicodeDecodeError, ValueError):
        return None
    if body != payload(writer, seq, length):
        return None
    return writer, seq


def make_handler(spec: dict[str, Any]) -> logging.Handler:
    kind = spec["kind"]
    if kind == "racefree":
        from racefree.logging import RotatingFileHandler

        return RotatingFileHandler(
            spec["path"], maxBytes=spec["max_bytes"], backupCount=spec["backup_count"],
            compress=bool(spec.get("compress", False)),
        )
    if kind == "stdlib":
        return logging.handlers.RotatingFileHandler(
            spec["path"], maxBytes=spec["max_bytes"], backupCount=spec["backup_count"]
        )
    raise SystemExit(f"unknown kind {kind!r}")


def main() -> int:
    spec = json.loads(sys.argv[1])
    worker = int(spec["worker"])
    handler = make_handler(spec)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"stress{worker}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    # The stdlib handler reports its rename races on stderr; the test counts records instead.
    logging.raiseExceptions = bool(spec.get("raise_exceptions", True))

    counts: dict[str, int] = {}
    seconds = spec.get("seconds")

    def run(thread: int) -> None:
        writer = f"w{worker}t{thread}"
        if seconds is None:
            for seq in range(spec["records"]):
                length = record_length(worker, thread, seq, spec["big_max"])
                logger.info("%s", line(writer, seq, length))
            return
        # For a bounded time instead of a count: how many were written is reported.
        deadline = time.monotonic() + seconds
        seq = 0
        while time.monotonic() < deadline:
            length = record_length(worker, thread, seq, spec["big_max"])
            logger.info("%s", line(writer, seq, length))
            seq += 1
        counts[writer] = seq

    threads = [threading.Thread(target=run, args=(t,)) for t in range(spec["threads"])]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handler.close()
    print("done" if seconds is None else "done " + json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
