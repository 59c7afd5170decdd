"""Document store puts and gets: racefree's Store against the peers and the raw floor.

Prints one markdown table. Every row runs in the same invocation, on the same 1 KiB
JSON document (``DOC``) over ``--docs`` ids (default 1,000), round by round (a busy
moment of the machine hits every row alike); each figure is the median over the
rounds. Puts overwrite random ids; gets read random ids and parse the JSON.

Rows (durability level in its own column):

- racefree ``Store`` with ``durable=True`` (fdatasync before put returns; concurrent
  writers share one: group commit) and ``durable=False`` (survives kill -9); and once
  more with ``durable=False`` in a store its group may write (files 0664), where every
  process reads the shared header with ``pread`` instead of a mapping;
- ``sqlite3`` in WAL mode, one autocommit ``INSERT OR REPLACE`` per put, with
  ``synchronous=FULL`` (durable) and ``NORMAL``; a get is a point ``SELECT`` plus
  ``json.loads``. These are the reference for the ratio columns (FULL for durable
  rows, NORMAL for the others);
- ``diskcache.Cache`` (SQLite WAL, synchronous=NORMAL), ``sqlitedict`` (JSON codec,
  autocommit: commits in a background thread after put returns), ``lmdb``
  (``sync=True``), ``tinydb`` (rewrites its JSON file per write, no fsync) and the
  seed's rewrite-the-whole-file store (``seed_store.py``);
- the raw floor: ``pwrite`` of the encoded document into preallocated space (+
  ``fdatasync`` when durable), and ``pread`` + ``json.loads`` for a get.

"4 writers" runs four writer processes at once (started behind a barrier) and
reports their total puts/s; peers that are not safe with several writer
processes show n/a. A get in racefree is coherent across processes: it sees every
put that returned before it began, in any process.

``--scale N`` adds racefree rows for N documents against 1,000 (cost per put and per
get, open time, index bytes per document; N=1,000,000 takes a few minutes and
about 1.2 GB of disk).

    python benchmarks/bench_store.py               # full run, about two minutes
    python benchmarks/bench_store.py --quick       # a smoke run of a few seconds
    python benchmarks/bench_store.py --scale 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import racefree

DOC: dict[str, Any] = {
    "id": "conversation-0001",
    "title": "A chat about file systems",
    "tags": ["storage", "fsync", "json"],
    "messages": [{"role": "user", "text": "x" * 300}, {"role": "assistant", "text": "y" * 400}],
    "tokens": 12345,
    "archived": False,
}
DOC["pad"] = "z" * (1024 - len(json.dumps(DOC)) - 10)


# -- backends: open(path, durable) -> (put, get, close) ---------------------------------
Ops = tuple[Callable[[str, dict[str, Any]], Any], Callable[[str], Any], Callable[[], None]]


def open_racefree(path: str, durable: bool) -> Ops:
    s = racefree.Store(path, durable=durable)
    return s.put, s.get, s.close


def open_racefree_group(path: str, durable: bool) -> Ops:
    """A store its group may write (files 0664): every process reads the shared header
    with pread instead of a mapping (a mapped file that a group member truncates would
    kill the process with SIGBUS), so each read costs one system call more."""
    old = os.umask(0o002)
    try:
        s = racefree.Store(path, durable=durable)
    finally:
        os.umask(old)
    return s.put, s.get, s.close


def _sqlite(path: str, sync: str) -> Ops:
    con = sqlite3.connect(os.path.join(path, "db.sqlite"), isolation_level=None, timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={sync}")
    con.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    dumps, loads = json.dumps, json.loads

    def put(key: str, doc: dict[str, Any]) -> None:
        con.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, dumps(doc)))

    def get(key: str) -> Any:
        row = con.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else loads(row[0])

    return put, get, con.close


def open_sqlite_full(path: str, durable: bool) -> Ops:
    return _sqlite(path, "FULL")


def open_sqlite_normal(path: str, durable: bool) -> Ops:
    return _sqlite(path, "NORMAL")


def open_diskcache(path: str, durable: bool) -> Ops:
    import diskcache

    cache = diskcache.Cache(path)
    dumps, loads = json.dumps, json.loads

    def get(key: str) -> Any:
        raw = cache.get(key)
        return None if raw is None else loads(raw)

    return (lambda k, d: cache.set(k, dumps(d))), get, cache.close


def open_sqlitedict(path: str, durable: bool) -> Ops:
    from sqlitedict import SqliteDict

    d = SqliteDict(os.path.join(path, "sd.sqlite"), autocommit=True,
                   encode=json.dumps, decode=json.loads)

    def put(key: str, doc: dict[str, Any]) -> None:
        d[key] = doc

    return put, d.get, d.close


def open_lmdb(path: str, durable: bool) -> Ops:
    import lmdb

    env = lmdb.open(path, map_size=4 << 30, sync=True)
    dumps, loads = json.dumps, json.loads

    def put(key: str, doc: dict[str, Any]) -> None:
        with env.begin(write=True) as txn:
            txn.put(key.encode(), dumps(doc).encode())

    def get(key: str) -> Any:
        with env.begin() as txn:
            raw = txn.get(key.encode())
        return None if raw is None else loads(raw)

    return put, get, env.close


def open_tinydb(path: str, durable: bool) -> Ops:
    from tinydb import Query, TinyDB

    db = TinyDB(os.path.join(path, "db.json"))
    q = Query()

    def put(key: str, doc: dict[str, Any]) -> None:
        db.upsert({"_k": key, **doc}, q._k == key)

    def get(key: str) -> Any:
        return db.get(q._k == key)

    return put, get, db.close


def open_seed(path: str, durable: bool) -> Ops:
    from seed_store import SeedStore

    s = SeedStore(os.path.join(path, "conversations.json"))
    return s.save, s.get, s.close


def open_floor(path: str, durable: bool) -> Ops:
    fd = os.open(os.path.join(path, "floor"), os.O_RDWR | os.O_CREAT, 0o644)
    slot = 2048
    size = slot * 100_000
    if os.fstat(fd).st_size < size:
        zeros = bytes(1 << 20)
        for off in range(0, size, len(zeros)):
            os.pwrite(fd, zeros, off)
        os.fsync(fd)
    slots: dict[str, int] = {}
    lengths: dict[str, int] = {}

    def put(key: str, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        at = slots.setdefault(key, len(slots) * slot)
        os.pwrite(fd, data, at)
        lengths[key] = len(data)
        if durable:
            os.fdatasync(fd)

    def get(key: str) -> Any:
        return json.loads(os.pread(fd, lengths[key], slots[key]))

    return put, get, lambda: os.close(fd)


# name -> (opener, durable flag, durability text, safe with several writer processes,
#          puts per round (1 writer), peer kind)
BACKENDS: dict[str, tuple[Callable[[str, bool], Ops], bool, str, bool, int]] = {
    "raw floor (pwrite+fdatasync)": (open_floor, True, "fdatasync", False, 1000),
    "racefree Store durable=True": (open_racefree, True, "fdatasync (power loss)", True, 1000),
    "sqlite3 WAL synchronous=FULL": (open_sqlite_full, True, "fsync (power loss)", True, 1000),
    "lmdb sync=True": (open_lmdb, True, "fsync (power loss)", True, 1000),
    "raw floor (pwrite)": (open_floor, False, "none", False, 20000),
    "racefree Store durable=False": (open_racefree, False, "kill -9", True, 20000),
    "racefree Store durable=False, group-writable (header read with pread)": (
        open_racefree_group, False, "kill -9", True, 20000),
    "sqlite3 WAL synchronous=NORMAL": (open_sqlite_normal, False, "kill -9", True, 5000),
    "diskcache": (open_diskcache, False, "kill -9", True, 5000),
    "sqlitedict (autocommit)": (open_sqlitedict, False, "none (commit after return)", False, 5000),
    "tinydb": (open_tinydb, False, "none (rewrite in place)", False, 40),
    "seed store (rewrite whole file)": (open_seed, False, "none (rewrite in place)", False, 100),
}


def _keys(n: int) -> list[str]:
    return [f"conversation-{i:07d}" for i in range(n)]


def _fill(put: Callable[[str, dict[str, Any]], Any], n: int) -> None:
    for key in _keys(n):
        put(key, DOC)


def _time_puts(put: Callable[..., Any], keys: list[str], count: int) -> float:
    rng = random.Random(1)
    chosen = [rng.choice(keys) for _ in range(count)]
    start = time.perf_counter()
    for key in chosen:
        put(key, DOC)
    return count / (time.perf_counter() - start)


def _time_gets(get: Callable[[str], Any], keys: list[str], count: int) -> float:
    rng = random.Random(2)
    chosen = [rng.choice(keys) for _ in range(count)]
    start = time.perf_counter()
    for key in chosen:
        get(key)
    return count / (time.perf_counter() - start)


def _writer(name: str, path: str, docs: int, count: int, barrier: Any, out: Any) -> None:
    opener, durable = BACKENDS[name][0], BACKENDS[name][1]
    put, _, close = opener(path, durable)
    keys = _keys(docs)
    rng = random.Random(os.getpid())
    chosen = [rng.choice(keys) for _ in range(count)]
    barrier.wait(120)
    start = time.perf_counter()
    for key in chosen:
        put(key, DOC)
    end = time.perf_counter()
    close()
    out.put((start, end))


def _four_writers(name: str, path: str, docs: int, count: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(name, path, docs, count, barrier, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    try:
        spans = [out.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    return 4 * count / (max(e for _, e in spans) - min(s for s, _ in spans))


def measure(
    name: str, root: str, docs: int, scale: float, gets: int, multi: bool
) -> dict[str, float]:
    opener, durable, _, multi_ok, puts = BACKENDS[name]
    path = tempfile.mkdtemp(dir=root)
    put, get, close = opener(path, durable)
    keys = _keys(docs)
    fill_put = put
    if name.startswith("racefree") and durable:  # fill fast, then measure durable puts
        close()
        put, get, close = open_racefree(path, False)
        fill_put = put
    if name.startswith("tinydb") or name.startswith("seed"):
        keys = keys[: min(docs, 200)]  # their cost grows with the file; fill what they manage
    for key in keys:
        fill_put(key, DOC)
    if name.startswith("racefree") and durable:
        close()
        put, get, close = opener(path, durable)
    result = {"puts": _time_puts(put, keys, max(5, int(puts * scale)))}
    n_gets = gets if not (name.startswith("tinydb") or name.startswith("seed")) else 200
    result["gets"] = _time_gets(get, keys, max(20, int(n_gets * scale)))
    close()
    if multi and multi_ok:
        result["puts4"] = _four_writers(name, path, len(keys), max(5, int(puts * scale / 2)))
    return result


def scaling(root: str, big: int) -> list[str]:
    """Per-op cost at 1,000 and ``big`` documents, open time, index bytes per document."""
    lines = ["", f"| racefree Store, durable=False | 1,000 docs | {big:,} docs | ratio |",
             "|---|---:|---:|---:|"]
    rows: dict[str, list[float]] = {"put (µs)": [], "get (µs)": [], "open (s)": [],
                                    "index bytes/doc": []}
    for n in (1000, big):
        path = os.path.join(root, f"scale{n}")
        s = racefree.Store(path, durable=False)
        keys = _keys(n)
        for key in keys:  # one record per document, as a store written by puts has
            s.put(key, DOC)
        s.close()
        gc.collect()
        start = time.perf_counter()
        s = racefree.Store(path, durable=False)
        rows["open (s)"].append(time.perf_counter() - start)
        rows["put (µs)"].append(1e6 / _time_puts(s.put, keys, 20000))
        rows["get (µs)"].append(1e6 / _time_gets(s.get, keys, 100000))
        s.close()
        gc.collect()
        tracemalloc.start()
        s = racefree.Store(path, durable=False)
        rows["index bytes/doc"].append(tracemalloc.get_traced_memory()[0] / n)
        tracemalloc.stop()
        s.close()
    for label, (small, large) in rows.items():
        lines.append(f"| {label} | {small:.2f} | {large:.2f} | {large / small:.2f}x |")
    lines.append(f"\nTargets: put and get at {big:,} within 1.5x of 1,000; open under 3 s; "
                 "index under 300 bytes/doc.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--docs", type=int, default=1000, help="documents per store")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=0, help="also measure N documents")
    parser.add_argument("--dir", default=None, help="where to create the stores")
    parser.add_argument("--only", default="", help="run only rows whose name contains this")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    rounds = 1 if args.quick else args.rounds
    gets = 50000
    names = [n for n in BACKENDS if args.only in n or n.startswith("sqlite3")]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.dir) as root:
        for r in range(rounds):
            for name in names:
                results[name].append(measure(name, root, args.docs, scale, gets, multi=r == 0))
        extra = scaling(root, args.scale) if args.scale else []

    def med(name: str, key: str) -> float | None:
        vals = [r[key] for r in results[name] if key in r]
        return statistics.median(vals) if vals else None

    ref_put = {True: med("sqlite3 WAL synchronous=FULL", "puts"),
               False: med("sqlite3 WAL synchronous=NORMAL", "puts")}
    ref_put4 = {True: med("sqlite3 WAL synchronous=FULL", "puts4"),
                False: med("sqlite3 WAL synchronous=NORMAL", "puts4")}
    ref_get = med("sqlite3 WAL synchronous=FULL", "gets")
    print(f"Store benchmark: {args.docs:,} documents of {len(json.dumps(DOC))} bytes, "
          f"{rounds} round(s){' (quick)' if args.quick else ''}; Python "
          f"{platform.python_version()}, {platform.system()} {platform.machine()}.\n")
    print("| store | durability | puts/s (1 writer) | vs SQLite | puts/s (4 writers) "
          "| vs SQLite | gets/s | vs SQLite |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        durable, level = BACKENDS[name][1], BACKENDS[name][2]
        p, p4, g = med(name, "puts"), med(name, "puts4"), med(name, "gets")

        def ratio(x: float | None, ref: float | None) -> str:
            return f"{x / ref:.2f}x" if x and ref else "n/a"

        print(f"| {name} | {level} | {p:,.0f} | {ratio(p, ref_put[durable])} | "
              f"{f'{p4:,.0f}' if p4 else 'n/a'} | {ratio(p4, ref_put4[durable])} | "
              f"{g:,.0f} | {ratio(g, ref_get)} |")
    print("\nRatios: durable rows against sqlite3 FULL, the others against NORMAL; gets "
          "against sqlite3 (point SELECT + json.loads). Targets: racefree durable put "
          ">= 1.0x (1 writer) and >= 2x (4 writers); durable=False put >= 2x; get >= 3x.")
    for line in extra:
        print(line)


if __name__ == "__main__":
    main()
