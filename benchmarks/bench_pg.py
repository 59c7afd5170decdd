"""The PostgreSQL backend against raw psycopg: put, get, update and the advisory lock.

Prints one markdown table. Every row is measured in the same run, interleaved
round by round (a busy moment of the machine hits every row alike), and
reported as the median over the rounds of the mean time per operation; within a
round, racefree and its floor alternate operation by operation.

The floor is what an application would write by hand with psycopg 3 on one
connection (autocommit, statements prepared by psycopg after a few uses), on
the same server, with the same 1 KiB JSON documents and the same durability:

- put: ``json.dumps`` + ``INSERT ... ON CONFLICT (id) DO UPDATE`` into a
  ``(id text primary key, doc json)`` table; ``synchronous_commit`` on
  (durable) or off (``durable=False``), as racefree sets it.
- get: ``SELECT doc ... WHERE id = %s`` (psycopg parses the json into a dict).
- update: ``BEGIN; SELECT ... FOR UPDATE; UPDATE; COMMIT`` (a locked read-modify-write).
- lock: ``pg_advisory_lock`` + ``pg_advisory_unlock`` on one session
  (racefree's acquire also draws a fencing token in the same statement).

racefree's store uses its connection pool (one thread here, so one session).
Targets: put and get at most 1.3x the floor.

    python benchmarks/bench_pg.py                 # full run, about a minute
    python benchmarks/bench_pg.py --quick         # a smoke run of a few seconds
    python benchmarks/bench_pg.py --url postgresql://user@host/db

The URL defaults to ``RACEFREE_TEST_POSTGRES``, else postgresql://postgres@127.0.0.1:5432/test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

import racefree

DOC: dict[str, Any] = {"user": "alice", "n": 0, "tags": ["a", "b"], "text": ""}
DOC["text"] = "x" * (1024 - len(json.dumps(DOC, separators=(",", ":"))))
assert len(json.dumps(DOC, separators=(",", ":"))) == 1024
KEYS = 1000
SLICE = 1


class Raw:
    """The floor: one autocommit psycopg connection and hand-written SQL."""

    def __init__(self, url: str, durable: bool) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"SET synchronous_commit = {'on' if durable else 'off'}")
        self.table = f"racefree_bench_raw_{uuid.uuid4().hex[:8]}"
        self.conn.execute(f"CREATE TABLE {self.table} (id text PRIMARY KEY, doc json NOT NULL)")
        self.put_sql = (
            f"INSERT INTO {self.table} (id, doc) VALUES (%s, %s)"
            " ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc"
        )
        self.get_sql = f"SELECT doc FROM {self.table} WHERE id = %s"
        self.lock_sql = f"SELECT doc FROM {self.table} WHERE id = %s FOR UPDATE"
        self.upd_sql = f"UPDATE {self.table} SET doc = %s WHERE id = %s"

    def put(self, key: str, doc: dict[str, Any]) -> None:
        self.conn.execute(self.put_sql, (key, json.dumps(doc, separators=(",", ":"))))

    def get(self, key: str) -> Any:
        row = self.conn.execute(self.get_sql, (key,)).fetchone()
        return None if row is None else row[0]

    def update(self, key: str) -> None:
        with self.conn.transaction():
            doc = self.conn.execute(self.lock_sql, (key,)).fetchone()[0]  # type: ignore[index]
            doc["n"] += 1
            self.conn.execute(self.upd_sql, (json.dumps(doc, separators=(",", ":")), key))

    def close(self) -> None:
        self.conn.execute(f"DROP TABLE {self.table}")
        self.conn.close()


def bump(doc: dict[str, Any]) -> dict[str, Any]:
    doc["n"] += 1
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    ap.add_argument("--url", default=None)
    args = ap.parse_args()
    url = args.url or os.environ.get(
        "RACEFREE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
    )
    rounds, per = (3, 150) if args.quick else (7, 1500)

    name = f"bench-{uuid.uuid4().hex[:8]}"
    store = racefree.open_store(url, name=name, durable=True, max_connections=1)
    fast = racefree.open_store(url, name=name + "-nd", durable=False, max_connections=1)
    raw, raw_fast = Raw(url, durable=True), Raw(url, durable=False)
    lock = racefree.open_lock(url, name)
    lock_conn = psycopg.connect(url, autocommit=True)
    keys = [f"doc-{i:05d}" for i in range(KEYS)]
    for k in keys:
        store.put(k, DOC)
        fast.put(k, DOC)
        raw.put(k, DOC)
        raw_fast.put(k, DOC)

    def loop(fn: Callable[[str], Any]) -> Callable[[int], None]:
        ids = itertools.cycle([keys[(i * 7919) % KEYS] for i in range(KEYS)])

        def run(n: int) -> None:
            for _ in range(n):
                fn(next(ids))

        return run

    def raw_lock(_: str) -> None:
        lock_conn.execute("SELECT pg_advisory_lock(12345)")
        lock_conn.execute("SELECT pg_advisory_unlock(12345)")

    def rf_lock(_: str) -> None:
        lock.acquire()
        lock.release()

    # (operation, durability, racefree, floor)
    rows: list[tuple[str, str, Callable[[int], None], Callable[[int], None]]] = [
        ("put", "durable (synchronous_commit=on)",
         loop(lambda k: store.put(k, DOC)), loop(lambda k: raw.put(k, DOC))),
        ("put", "durable=False (synchronous_commit=off)",
         loop(lambda k: fast.put(k, DOC)), loop(lambda k: raw_fast.put(k, DOC))),
        ("get", "-", loop(store.get), loop(raw.get)),
        ("update (locked read-modify-write)", "durable",
         loop(lambda k: store.update(k, bump)), loop(raw.update)),
        ("lock acquire+release", "-", loop(rf_lock), loop(raw_lock)),
    ]
    times: dict[tuple[int, int], list[float]] = {}
    for r in range(rounds):
        n = per if r else per // 5  # the first round warms up (prepared statements)
        for i, (_, _, ours, floor) in enumerate(rows):
            # racefree and its floor alternate every SLICE operations, so
            # that a burst of load on this shared machine hits both alike.
            spent = [0.0, 0.0]
            for _ in range(max(1, n // SLICE)):
                for j, fn in enumerate((ours, floor)):
                    t0 = time.perf_counter()
                    fn(SLICE)
                    spent[j] += time.perf_counter() - t0
            if r:
                for j in (0, 1):
                    times.setdefault((i, j), []).append(spent[j] / (max(1, n // SLICE) * SLICE))

    print(f"PostgreSQL backend, 1 KiB JSON documents, {KEYS} ids; median of {rounds - 1} rounds"
          f" x {per} ops; Python {platform.python_version()}, psycopg {psycopg.__version__},"
          f" server {lock_conn.info.server_version}")
    print()
    print("| operation | durability | racefree µs/op | raw psycopg µs/op | racefree ops/s |"
          " ratio (time, racefree/raw) | target |")
    print("|---|---|---:|---:|---:|---:|---|")
    for i, (op, dur, _, _) in enumerate(rows):
        ours = statistics.median(times[(i, 0)])
        floor = statistics.median(times[(i, 1)])
        target = "<= 1.3x" if op in ("put", "get") else ""
        print(f"| {op} | {dur} | {ours * 1e6:.1f} | {floor * 1e6:.1f} | {1 / ours:,.0f} |"
              f" {ours / floor:.2f}x | {target} |")

    store.close()
    fast.close()
    lock.close()
    raw.close()
    raw_fast.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM racefree_docs WHERE store IN (%s, %s)", (name, name + "-nd"))
    lock_conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
