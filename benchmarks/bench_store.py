"""Document store puts and gets: racefree's Store against the peers and the raw floor.

Prints one markdown table. Every row runs in the same invocation, on the same 1 KiB
JSON document (``DOC``) over ``--docs`` ids (default 1,000), round by round (a busy
moment of the machine hits every row alike); each figure is the median over the
rounds. Puts overwrite random ids; gets read random ids and parse the JSON.

Before the gets are timed, every id is read twice (every row: SQLite's page cache,
racefree's cache of decoded documents, which keeps an id from its second read).

Rows (durability level in its own column):

- racefree ``Store`` with ``durable=True`` (fdatasync before put returns; concurrent
  writers share one: group commit) and ``durable=False`` (survives kill -9); once
  more with its cache of decoded documents off (``cache_bytes=0``: every get reads
  and parses); and with ``durable=False`` in a store its group may write (files
  0664), where every process reads the shared header with ``pread``;
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

"4 writers" runs four writer processes at once (started anew with ``spawn``, behind a
barrier) and reports their total puts/s (in every round); for racefree's durable row it
also counts the fdatasyncs at racefree's file-system seam and prints how many puts each
covered and how much of the time one was running; peers that are not safe with several
writer processes show n/a. racefree's durable row and SQLite FULL run four writers once
more forked from the benchmark's process (as a web server's workers are), printed below
the table. A get in racefree is coherent across processes: it sees every
put that returned before it began, in any process.

``--scale N`` adds racefree rows for N documents of about 100 bytes against 1,000
(cost per put and per get, with the cache off, with the default cache over every id,
and over a hot set of 1,000 ids; open time, index bytes per document; N=1,000,000
takes a few minutes and about 200 MB of disk).

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


def open_racefree_nocache(path: str, durable: bool) -> Ops:
    """The same store with its cache of decoded documents off: every get reads and parses."""
    s = racefree.Store(path, durable=durable, cache_bytes=0)
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
    "racefree Store durable=False, cache_bytes=0 (every get reads and parses)": (
        open_racefree_nocache, False, "kill -9", False, 20000),
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


def _time_puts(
    put: Callable[..., Any], keys: list[str], count: int, doc: dict[str, Any] = DOC
) -> float:
    rng = random.Random(1)
    chosen = [rng.choice(keys) for _ in range(count)]
    start = time.perf_counter()
    for key in chosen:
        put(key, doc)
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
    syncs = [0, 0.0]
    if name.startswith("racefree"):
        # Count racefree's fdatasyncs at its file-system seam (and the time they take).
        from racefree import _fs

        real = _fs.fdatasync

        def counted(fd: int) -> None:
            start = time.perf_counter()
            real(fd)
            syncs[0] += 1
            syncs[1] += time.perf_counter() - start

        _fs.fdatasync = counted
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
    out.put((start, end, syncs[0], syncs[1]))


def _four_writers(
    name: str, path: str, docs: int, count: int, start: str = "spawn"
) -> tuple[float, int, float]:
    ctx = multiprocessing.get_context(start)
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
    span = max(s[1] for s in spans) - min(s[0] for s in spans)
    return 4 * count / span, sum(s[2] for s in spans), sum(s[3] for s in spans) / span


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
    for _ in range(2):  # warm: every row's caches (page cache, SQLite's, racefree's)
        for key in keys:
            get(key)
    result["gets"] = _time_gets(get, keys, max(20, int(n_gets * scale)))
    close()
    if multi and multi_ok:
        n4 = max(5, int(puts * scale / 2))
        result["puts4"], syncs, busy = _four_writers(name, path, len(keys), n4)
        if syncs:
            result["per_sync4"] = 4 * n4 / syncs
            result["busy4"] = busy
        if name in FORKED:
            result["puts4f"], syncs, _ = _four_writers(name, path, len(keys), n4, "fork")
            if syncs:
                result["per_sync4f"] = 4 * n4 / syncs
    return result


#: The rows whose four writers are measured once more forked from one parent.
FORKED = ("racefree Store durable=True", "sqlite3 WAL synchronous=FULL")


#: The ``--scale`` document: about 100 bytes, where a get is cheapest, so that the
#: memory misses of a large index weigh the most.
SMALL_DOC: dict[str, Any] = {"id": "conversation-0001", "title": "A chat about file systems",
                             "tags": ["storage", "json"], "tokens": 12345, "archived": False}


def _floor_get(path: str, keys: list[str], length: int) -> float:
    """µs per get of the floor: a dict from id to offset (keys decoded anew, as an index
    read from a file holds them), one ``pread`` of the document, and the parse racefree
    uses (the json module's scanner on the decoded text: ``json.loads`` adds its checks)."""
    where = {key.encode().decode(): i * length for i, key in enumerate(keys)}
    fd = os.open(path, os.O_RDONLY)
    try:
        scan, pread = json.JSONDecoder().scan_once, os.pread  # type: ignore[attr-defined]

        def get(key: str) -> Any:
            return scan(pread(fd, length, where[key]).decode("ascii"), 0)[0]

        return 1e6 / _time_gets(get, keys, 200000)
    finally:
        os.close(fd)


def scaling(root: str, big: int) -> list[str]:
    """Per-op cost at 1,000 and ``big`` documents, open time, index bytes per document.

    Three rounds, the two sizes taking turns; each figure is the median. Three get
    rows: every id at random with the cache off (``cache_bytes=0``: the
    file path, what the size of the index costs); every id at random with the default
    cache (at 1,000 all hits; at ``big`` mostly misses, as a bounded cache must be
    when the reads spread over more documents than it holds); and a hot set, the
    same 1,000 ids at both sizes, read through the default cache. And the floor of a
    get that reads the file: a dict lookup, one ``pread`` and a JSON parse.
    """
    lines = ["", f"| racefree Store, durable=False, {len(json.dumps(SMALL_DOC))}-byte documents "
             f"| 1,000 docs | {big:,} docs | ratio |", "|---|---:|---:|---:|"]
    rows: dict[str, list[float]] = {
        "put (µs)": [], "get, every id, cache off (µs)": [],
        "get, every id, default cache (µs)": [], "get, 1,000 hot ids, default cache (µs)": [],
        "floor: dict lookup + pread + JSON parse (µs)": [], "open (s)": [],
        "index bytes/doc": [],
    }
    paths = {}
    raw = json.dumps(SMALL_DOC, separators=(",", ":")).encode()
    for n in (1000, big):
        with open(os.path.join(root, f"floor{n}"), "wb") as f:
            for i in range(0, n, 1000):
                f.write(raw * min(1000, n - i))
        paths[n] = path = os.path.join(root, f"scale{n}")
        s = racefree.Store(path, durable=False)
        keys = _keys(n)
        for i in range(0, n, 1000):
            with s.batch() as b:  # one record per 1,000 documents: a quick fill
                for key in keys[i:i + 1000]:
                    b.put(key, SMALL_DOC)
        s.close()
    samples: dict[str, dict[int, list[float]]] = {label: {1000: [], big: []} for label in rows}
    for _ in range(3):  # rounds: the two sizes take turns, so a busy moment hits both
        for n in (1000, big):
            keys = _keys(n)
            got = samples
            gc.collect()
            start = time.perf_counter()
            s = racefree.Store(paths[n], durable=False)
            got["open (s)"][n].append(time.perf_counter() - start)
            got["put (µs)"][n].append(1e6 / _time_puts(s.put, keys, 20000, SMALL_DOC))
            s.close()
            s = racefree.Store(paths[n], durable=False, cache_bytes=0)
            got["get, every id, cache off (µs)"][n].append(1e6 / _time_gets(s.get, keys, 200000))
            s.close()
            s = racefree.Store(paths[n], durable=False)
            got["get, every id, default cache (µs)"][n].append(
                1e6 / _time_gets(s.get, keys, 200000))
            hot = keys[:: max(1, n // 1000)][:1000]
            for _ in range(2):  # warm the cache (an id is cached at its second read)
                for key in hot:
                    s.get(key)
            got["get, 1,000 hot ids, default cache (µs)"][n].append(
                1e6 / _time_gets(s.get, hot, 200000))
            s.close()
            got["floor: dict lookup + pread + JSON parse (µs)"][n].append(
                _floor_get(os.path.join(root, f"floor{n}"), keys, len(raw)))
            gc.collect()
            tracemalloc.start()
            s = racefree.Store(paths[n], durable=False)
            got["index bytes/doc"][n].append(tracemalloc.get_traced_memory()[0] / n)
            tracemalloc.stop()
            s.close()
    for label in rows:
        rows[label] = [statistics.median(samples[label][n]) for n in (1000, big)]
    for label, (small, large) in rows.items():
        lines.append(f"| {label} | {small:.2f} | {large:.2f} | {large / small:.2f}x |")
    lines.append(f"\nTargets: put and get at {big:,} within 1.5x of 1,000 (get: "
                 f"{_verdict(rows['get, every id, cache off (µs)'], 1.5)} with the cache off, "
                 f"{_verdict(rows['get, 1,000 hot ids, default cache (µs)'], 1.5)} for a hot "
                 f"set, {_verdict(rows['get, every id, default cache (µs)'], 1.5)} for every id "
                 "with the default cache); open under 3 s "
                 f"({'met' if rows['open (s)'][1] < 3 else 'missed'}); index under 300 "
                 f"bytes/doc ({'met' if rows['index bytes/doc'][1] < 300 else 'missed'}).")
    return lines


def _verdict(pair: list[float], most: float) -> str:
    return f"{pair[1] / pair[0]:.2f}x, {'met' if pair[1] / pair[0] <= most else 'missed'}"


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
        for _ in range(rounds):
            for name in names:
                results[name].append(measure(name, root, args.docs, scale, gets, multi=True))
        extra = scaling(root, args.scale) if args.scale else []

    def med(name: str, key: str) -> float | None:
        vals = [r[key] for r in results.get(name, []) if key in r]
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
          "against sqlite3 (point SELECT + json.loads). Every row uses the standard "
          "library's json (no optional codec).\n")

    def target(label: str, name: str, key: str, ref: float | None, least: float) -> None:
        x = med(name, key)
        if x and ref:
            verdict = "met" if x / ref >= least else "missed"
            print(f"- {label}: {x / ref:.2f}x (target >= {least:g}x): {verdict}")

    rf, rn = "racefree Store durable=True", "racefree Store durable=False"
    target("durable put, 1 writer, vs SQLite FULL", rf, "puts", ref_put[True], 1.5)
    target("durable put, 4 writers, vs SQLite FULL", rf, "puts4", ref_put4[True], 3)
    target("durable=False put, 1 writer, vs SQLite NORMAL", rn, "puts", ref_put[False], 3)
    target("get (cache hit) vs SQLite point SELECT + json.loads", rn, "gets", ref_get, 5)
    per, busy = med(rf, "per_sync4"), med(rf, "busy4")
    if per and busy:
        print(f"\nDurable puts, 4 writers: each fdatasync covered {per:.2f} puts (at most 4: "
              "each writer waits for its put's fdatasync, so it has one put in flight); "
              f"fdatasync was running {busy:.0%} of the time. What limits it: a put waits "
              "for an fdatasync, so one covers at most one put per writer; in between two, "
              "the writers a sync released wake up together, return and write their next "
              "records (four writers on two cores), which the next leader waits for (at most "
              "one fdatasync) before it syncs: the disk idles meanwhile.")
    forked, ref_forked = med(rf, "puts4f"), med("sqlite3 WAL synchronous=FULL", "puts4f")
    if forked and ref_forked:
        per_f = med(rf, "per_sync4f")
        print(f"\nDurable puts, 4 writers forked from one parent (as a web server's workers "
              f"are) instead of started anew: racefree {forked:,.0f} puts/s"
              f"{f' ({per_f:.2f} per fdatasync)' if per_f else ''}, SQLite FULL "
              f"{ref_forked:,.0f}: {forked / ref_forked:.2f}x. Forked writers share their "
              "parent's memory pages, so each spends less processor time per put; the "
              "target above is stated for the writers started anew.")
    for line in extra:
        print(line)


if __name__ == "__main__":
    main()
