"""The cache of decoded documents (``store.cache``): fresh objects, coherence, memory bound.

A ``get`` that hits the cache makes no system call; these tests check that what it
returns is always what a read of the files would return: after this process's
writes, other handles' and other processes' writes, compactions and reopens, with
threads reading while a thread writes, and with a cache small enough to rotate its
generations all the time. And that a returned document belongs to the caller.
"""

from __future__ import annotations

import copy
import json
import os
import select
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.logrecording import count_seam_calls
from helpers.testkit import reap
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from racefree import CorruptFileError, Store, _fs
from racefree.store.cache import PLAN_DEPTH, DocCache
from racefree.store.store import CACHE_BYTES

NESTED = {
    "title": "t",
    "tags": ["a", "b"],
    "messages": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "bot", "parts": []}],
    "meta": {"n": 1, "deep": {"deeper": [1, [2, [3]]]}},
    "n": 1.5,
    "none": None,
}


def _mutate_everywhere(doc: Any) -> None:
    """Change every dict and list reachable in ``doc`` (and the leaves they hold)."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in list(item):
                if isinstance(item[key], (dict, list)):
                    stack.append(item[key])
                else:
                    item[key] = "changed"
            item["added"] = ["x"]
        else:
            stack.extend(v for v in item if isinstance(v, (dict, list)))
            item.append("appended")


def _containers(doc: Any) -> list[Any]:
    out, stack = [], [doc]
    while stack:
        item = stack.pop()
        out.append(item)
        children = item.values() if isinstance(item, dict) else item
        stack.extend(v for v in children if isinstance(v, (dict, list)))
    return out


def test_a_returned_document_can_be_changed_freely(tmp_path: Path) -> None:
    """Every dict and list of a get's result is the caller's: changing them all (in the
    first get, served by a read, and in later ones, served by the cache) changes neither
    the store nor any later get."""
    with Store(tmp_path / "s", durable=False) as s:
        s.put("d", NESTED)
        for _ in range(3):
            got = s.get("d")
            assert got == NESTED
            _mutate_everywhere(got)
            assert got != NESTED
        assert s.get("d") == NESTED and s["d"] == NESTED
        assert s._core.state.cache.young  # the later gets were cache hits
        a, b = s.get("d"), s.get("d")
        ids_a = {id(c) for c in _containers(a)}
        assert not ids_a & {id(c) for c in _containers(b)}  # no dict or list shared
        assert s.items() == [("d", NESTED)]
    with Store(tmp_path / "s") as s:
        assert s.get("d") == NESTED


def test_a_document_deeper_than_the_plan_is_read_each_time(tmp_path: Path) -> None:
    """A document nested deeper than the cache copies is parsed at each get (not cached),
    and still returned whole and fresh."""
    deep: dict[str, Any] = {"v": 0}
    for i in range(PLAN_DEPTH + 5):
        deep = {"v": i, "in": deep}
    with Store(tmp_path / "s", durable=False) as s:
        s.put("deep", deep)
        first = s.get("deep")
        assert first == deep
        first["in"]["in"]["v"] = "changed"
        assert s.get("deep") == deep
        assert "deep" not in s._core.state.cache.young


def test_cache_bytes_zero_turns_the_cache_off_and_bad_values_are_refused(tmp_path: Path) -> None:
    """``cache_bytes=0``: nothing is kept; a negative bound is a ValueError, a non-int a
    TypeError."""
    with Store(tmp_path / "s", durable=False, cache_bytes=0) as s:
        s.put("a", {"n": 1})
        assert s.get("a") == {"n": 1} and s.get("a") == {"n": 1}
        assert not s._core.state.cache.young and not s._core.state.cache.old
    with pytest.raises(ValueError):
        Store(tmp_path / "t", cache_bytes=-1)
    with pytest.raises(TypeError):
        Store(tmp_path / "t", cache_bytes=1.5)  # type: ignore[arg-type]


def _distinct_marks(n: int, limit: int = CACHE_BYTES) -> list[str]:
    """``n`` ids whose admission marks are all different (under this process's hashes)
    in a cache of ``limit`` bytes."""
    ids, bits = [], set()
    mask = DocCache(limit).mask
    i = 0
    while len(ids) < n:
        bit = hash(f"k{i}") & mask
        if bit not in bits:
            bits.add(bit)
            ids.append(f"k{i}")
        i += 1
    return ids


def test_ids_read_once_are_not_cached(tmp_path: Path) -> None:
    """An id is cached at its second read: reads that never repeat keep nothing alive."""
    ids = _distinct_marks(100)
    with Store(tmp_path / "s", durable=False) as s:
        with s.batch() as b:
            for i, key in enumerate(ids):
                b.put(key, {"n": i, "l": [i]})
        for i, key in enumerate(ids):
            assert s.get(key) == {"n": i, "l": [i]}
        cache = s._core.state.cache
        assert not cache.young and not cache.old and cache.marks == 100
        assert s.get(ids[7]) == {"n": 7, "l": [7]}
        assert list(cache.young) == [ids[7]]


def test_a_store_larger_than_the_old_admission_set_is_cached_from_its_second_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20,000 documents read in turn, three times, through a cache that can hold them
    all (the default): the second pass caches every one, the third reads no file. (Hashes
    remembered in a set of 16,384, cleared when full, forgot each id before its second
    read came.)"""
    n = 20000
    with Store(tmp_path / "s", durable=False) as s:
        with s.batch() as b:
            for i in range(n):
                b.put(f"id{i}", {"n": i, "tags": ["a"]})
        for _ in range(2):
            for i in range(n):
                assert s.get(f"id{i}") == {"n": i, "tags": ["a"]}
        preads = count_seam_calls(monkeypatch, "pread")
        for i in range(n):
            assert s.get(f"id{i}") == {"n": i, "tags": ["a"]}
        assert preads == [0]
        assert len(s._core.state.cache.young) + len(s._core.state.cache.old) == n


def test_a_read_repeated_past_two_horizons_is_not_cached(tmp_path: Path) -> None:
    """A 4 MiB cache keeps two generations of 4,096 marks: an id read again after 8,192
    other ids read once (more than such a cache holds) is not cached; one read again
    within the previous generation of marks, or the current one, is."""
    limit = 4 << 20
    ids = _distinct_marks(2 * 4096 + 2, limit)
    with Store(tmp_path / "s", durable=False, cache_bytes=limit) as s:
        with s.batch() as b:
            for key in ids:
                b.put(key, {"k": key})
        cache = s._core.state.cache
        assert cache.horizon == 4096
        for key in ids:  # 4,096 marks, 4,096 more, then a third generation begins
            assert s.get(key) == {"k": key}
        assert cache.marks == 2 and not cache.young
        assert s.get(ids[0]) == {"k": ids[0]}  # its generation was dropped: marked again
        assert not cache.young and cache.marks == 3
        assert s.get(ids[4096]) == {"k": ids[4096]}  # the previous generation: cached
        assert s.get(ids[-1]) == {"k": ids[-1]}  # the current one: cached
        assert list(cache.young) == [ids[4096], ids[-1]] and cache.marks == 3


def test_a_new_generation_of_marks_begins_after_horizon_marks(tmp_path: Path) -> None:
    """Past ``horizon`` marks the bitmap starts over, and the one before stays
    readable: false marks never pile up, and no id is forgotten at once."""
    a, b, c = _distinct_marks(3)
    with Store(tmp_path / "s", durable=False) as s:
        for key in (a, b, c):
            s.put(key, {"k": key})
        assert s.get(a) == {"k": a}
        cache = s._core.state.cache
        assert cache.marks == 1
        cache.marks = cache.horizon  # as if that many ids had been read once
        assert s.get(b) == {"k": b}
        assert cache.marks == 1 and not cache.young
        assert sum(bin(x).count("1") for x in cache.seen) == 1
        assert sum(bin(x).count("1") for x in cache.seen_before) == 1
        assert s.get(a) == {"k": a}  # remembered in the generation before
        assert list(cache.young) == [a]
        cache.marks = cache.horizon
        assert s.get(c) == {"k": c}  # b's generation turns old, a's (and its mark) goes
        assert s.get(b) == {"k": b}
        assert list(cache.young) == [a, b]


def test_documents_read_at_random_that_fit_are_all_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 documents read at random through a cache whose bound holds them all, but
    not in half of it: once each was read twice, every get is a hit (the generations
    share the bound: nothing turns over while it fits)."""
    import random

    doc = {"text": "y" * 200, "tags": ["a", "b"]}
    ids = [f"d{i}" for i in range(2000)]
    with Store(tmp_path / "s", durable=False) as s:
        with s.batch() as b:
            for key in ids:
                b.put(key, doc)
        assert s.get(ids[0]) == doc
        cache = s._core.state.cache
        s.get(ids[0])
        size = cache.young[ids[0]][2]
        s.close()
    limit = size * 2000 * 3 // 2  # room for all 2,000, for 1,500 in half
    with Store(tmp_path / "s", durable=False, cache_bytes=limit) as s:
        for _ in range(2):
            for key in ids:
                assert s.get(key) == doc
        preads = count_seam_calls(monkeypatch, "pread")
        rng = random.Random(5)
        for _ in range(20000):
            assert s.get(rng.choice(ids)) == doc
        assert preads == [0]


def test_a_hit_in_the_old_generation_is_moved_back_without_a_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An id the young generation pushed out (into the old one) is still a hit: no
    ``pread``, a fresh copy, and it is young again; an id in neither is read."""
    doc = {"text": "x" * 900, "l": [1]}
    with Store(tmp_path / "s", durable=False, cache_bytes=64 << 10) as s:
        with s.batch() as b:
            for i in range(100):
                b.put(f"k{i}", doc)
        cache = s._core.state.cache
        for _ in range(2):
            assert s.get("k0") == doc
        i = 1
        while "k0" not in cache.old:  # more cached ids until k0's generation turns old
            for _ in range(2):
                assert s.get(f"k{i}") == doc
            i += 1
        preads = count_seam_calls(monkeypatch, "pread")
        got = s.get("k0")
        assert got == doc and preads == [0]
        assert "k0" in cache.young and "k0" not in cache.old
        got["l"].append(2)
        assert s.get("k0") == doc and preads == [0]
        assert s.get(f"k{i + 1}") == doc and preads == [1]  # never cached: read


def test_a_write_during_a_readers_add_into_an_empty_cache_leaves_no_stale_entry() -> None:
    """A reader's ``add`` has checked the index (under the cache's lock) and not yet
    inserted, in a cache with nothing in it, when a writer changes the index and drops
    the id: the drop must wait for the insert and remove it. (A drop that skipped the
    lock because the cache looked empty left the old document cached.)"""
    cache = DocCache(65536)
    dropped = threading.Event()

    def writer() -> None:
        index["k"] = 2
        cache.drop("k")
        dropped.set()

    class Index(dict[str, int]):
        armed = False

        def get(self, key: str, default: Any = None) -> Any:
            value = super().get(key, default)
            if self.armed:  # the reader holds the cache's lock here
                self.armed = False
                threading.Thread(target=writer).start()
                # At once, unless the drop waits for the lock (then this times out).
                dropped.wait(0.5)
            return value

    index = Index(k=1)
    assert cache.add("k", {"n": 1}, 10, index, 1) == {"n": 1}  # first read: a mark
    index.armed = True
    cache.add("k", {"n": 1}, 10, index, 1)  # second read, at index value 1
    assert dropped.wait(10)
    assert "k" not in cache.young and "k" not in cache.old


def test_first_misses_from_two_threads_on_a_new_cache_do_not_raise() -> None:
    """The marks' bitmaps are made at a new cache's first miss; another thread making
    its own first misses meanwhile never finds one made and the other not."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors: list[BaseException] = []
    try:
        for _ in range(300):
            cache = DocCache(65536)
            barrier = threading.Barrier(2)

            def run(t: int, cache: DocCache = cache, barrier: threading.Barrier = barrier) -> None:
                barrier.wait(10)
                try:
                    for j in range(20):
                        cache.add(f"t{t}-{j}", {"n": 1}, 10, {}, 1)
                except IndexError as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            if errors:
                break
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_memory_stays_within_the_bound(tmp_path: Path) -> None:
    """Reading 3,000 distinct 1 KiB documents through a 1 MiB cache: the estimate of the
    two generations together stays within the bound (and is the sum of their entries'),
    and the memory the process holds (traced) grows by less than the bound."""
    doc = {"text": "x" * 900, "tags": ["a", "b"], "n": [1, 2, 3]}
    limit = 1 << 20
    with Store(tmp_path / "s", durable=False, cache_bytes=limit) as s:
        with s.batch() as b:
            for i in range(3000):
                b.put(f"k{i}", doc)
        cache = s._core.state.cache
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i in range(6000):  # each id twice: cached at its second read
                assert s.get(f"k{i % 3000}") == doc
                assert cache.used == sum(e[2] for e in cache.young.values())
                assert cache.used_old == sum(e[2] for e in cache.old.values())
                assert cache.used + cache.used_old <= limit
            held = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert 0 < held < limit
        assert len(cache.young) + len(cache.old) < 3000  # the old generations were dropped


def test_a_document_read_before_its_segment_is_cut_short_is_served_from_memory(
    tmp_path: Path,
) -> None:
    """A cached document was read whole and checked before: a get of it needs no read,
    so a segment cut short afterwards is reported at the next read of the file (a get of
    another document, the next write), not by that get."""
    d = tmp_path / "s"
    with Store(d, durable=False) as s:
        s.put("filler", {"pad": "f" * 8192})
        s.put("a", {"n": 1})
        s.put("b", {"n": 2})
        assert s.get("a") == {"n": 1} and s.get("a") == {"n": 1}  # cached at the second
        assert "a" in s._core.state.cache.young
        os.truncate(d / "seg-00000001.rfs", 16)
        assert s.get("a") == {"n": 1}
        with pytest.raises(CorruptFileError):
            s.get("b")
        with pytest.raises(CorruptFileError):
            s.put("c", {"n": 3})


def test_readers_never_see_a_document_older_than_an_acknowledged_put(tmp_path: Path) -> None:
    """Threads read one id while a thread of the same process overwrites it 3,000 times:
    a get never returns a version older than the last put that had returned when the
    get began (a cached copy the write forgot to drop would)."""
    with Store(tmp_path / "s", durable=False) as s:
        s.put("x", {"n": 0})
        acked = [0]
        stale: list[tuple[int, int]] = []
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                before = acked[0]
                n = s.get("x")["n"]
                if n < before:
                    stale.append((n, before))

        readers = [threading.Thread(target=reader) for _ in range(3)]
        for t in readers:
            t.start()
        try:
            for n in range(1, 3001):
                s.put("x", {"n": n})
                acked[0] = n
        finally:
            done.set()
            for t in readers:
                t.join(60)
        assert not any(t.is_alive() for t in readers)
        assert stale == []
        assert s.get("x") == {"n": 3000}


def test_a_read_that_overlaps_a_write_does_not_cache_the_old_document(tmp_path: Path) -> None:
    """A reader thread misses, reads the old document from the file, and is held there
    while another thread overwrites the id: the reader may return the old document (its
    get overlapped the put), but must not leave it in the cache for later gets."""
    reading, written = threading.Event(), threading.Event()
    main = threading.current_thread()

    class HoldReader(_fs.FileSystem):
        def pread(self, fd: int, n: int, offset: int) -> bytes:
            data = super().pread(fd, n, offset)
            if threading.current_thread() is not main and not reading.is_set():
                reading.set()  # the reader has the old bytes: let the writer go first
                assert written.wait(60)
            return data

    with Store(tmp_path / "s", durable=False) as s:
        s.put("x", {"n": 1})
        assert s.get("x") == {"n": 1}  # the next read of "x" caches it
        out: list[Any] = []
        with _fs.use(HoldReader()):
            t = threading.Thread(target=lambda: out.append(s.get("x")))
            t.start()
            assert reading.wait(60)
            s.put("x", {"n": 2})
            written.set()
            t.join(60)
        assert not t.is_alive()
        assert out == [{"n": 1}]  # overlapped the put: the old version is allowed
        assert s.get("x") == {"n": 2}


# -- another process writing ----------------------------------------------------------

_PEER = """
import json, sys
from racefree import Store
s = Store(sys.argv[1], durable=False)
for line in sys.stdin:
    op, *args = json.loads(line)
    if op == "put":
        out = s.put(*args)
    elif op == "delete":
        out = s.delete(*args)
    elif op == "batch":
        with s.batch() as b:
            for key, doc in args[0]:
                b.put(key, doc) if doc is not None else b.delete(key)
        out = None
    elif op == "compact":
        out = s.compact()
    else:
        out = s.get(*args)
    print(json.dumps(out), flush=True)
s.close()
"""


class Peer:
    """A child process with the store open, doing what it is told, one line at a time."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PEER, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def __call__(self, *cmd: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert ready, "the peer did not answer in time"
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=60) == 0
        finally:
            reap([self.proc])


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    Store(tmp_path / "s").close()
    p = Peer(tmp_path / "s")
    try:
        yield p
    finally:
        p.close()


def test_cached_documents_follow_another_process(tmp_path: Path, peer: Peer) -> None:
    """Documents this process has cached: another process overwrites, deletes, batches
    and compacts; every get here returns what the other process wrote."""
    with Store(tmp_path / "s", durable=False) as s:
        s.put("a", {"v": 1})
        s.put("b", {"v": 1})
        for _ in range(2):  # cached at the second read
            assert s.get("a") == {"v": 1} and s.get("b") == {"v": 1}
        assert {"a", "b"} <= set(s._core.state.cache.young)
        peer("put", "a", {"v": 2})
        assert s.get("a") == {"v": 2}
        peer("delete", "b")
        assert s.get("b") is None
        peer("batch", [["a", {"v": 3}], ["b", {"v": 3}]])
        assert (s.get("a"), s.get("b")) == ({"v": 3}, {"v": 3})
        peer("compact")
        assert (s.get("a"), s.get("b")) == ({"v": 3}, {"v": 3})
        peer("put", "a", {"v": 4})
        peer("compact")
        assert s.get("a") == {"v": 4}
        s.put("b", {"v": 5})
        assert peer("get", "b") == {"v": 5}


DOCS = st.dictionaries(
    st.sampled_from(["k", "l", "m"]),
    st.one_of(st.integers(-3, 3), st.text(max_size=3),
              st.lists(st.one_of(st.booleans(), st.dictionaries(st.just("z"), st.none())),
                       max_size=2)),
    max_size=3,
)
IDS = st.sampled_from(["a", "b", "c", "d"])


@pytest.mark.slow
def test_cache_matches_a_model_with_other_handles_and_processes(tmp_path: Path) -> None:
    """A stateful property test: this process writes, reads, compacts and reopens through
    a handle with a tiny cache (its generations rotate every few documents); a second
    handle in this process and another process write and compact too. After every step
    every get equals the model, twice, with the first result changed in between."""
    path = tmp_path / "s"
    Store(path).close()
    peer = Peer(path)

    class CacheModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.store = Store(path, durable=False, cache_bytes=4096)
            self.other = Store(path, durable=False, cache_bytes=4096)
            self.model: dict[str, Any] = {k: self.store.get(k) for k in "abcd"}

        @rule(key=IDS, doc=DOCS, who=st.sampled_from(["self", "other", "peer"]))
        def put(self, key: str, doc: dict[str, Any], who: str) -> None:
            if who == "peer":
                peer("put", key, doc)
            else:
                (self.store if who == "self" else self.other).put(key, doc)
            self.model[key] = copy.deepcopy(doc)

        @rule(key=IDS, who=st.sampled_from(["self", "other", "peer"]))
        def delete(self, key: str, who: str) -> None:
            if who == "peer":
                peer("delete", key)
            else:
                (self.store if who == "self" else self.other).delete(key)
            self.model[key] = None

        @rule(ops=st.lists(st.tuples(IDS, st.one_of(st.none(), DOCS)), max_size=3),
              by_peer=st.booleans())
        def batch(self, ops: list[tuple[str, dict[str, Any] | None]], by_peer: bool) -> None:
            if by_peer:
                peer("batch", ops)
            else:
                with self.store.batch() as b:
                    for key, doc in ops:
                        if doc is None:
                            b.delete(key)
                        else:
                            b.put(key, doc)
            for key, doc in ops:
                self.model[key] = copy.deepcopy(doc)

        @rule(who=st.sampled_from(["self", "other", "peer"]))
        def compact(self, who: str) -> None:
            if who == "peer":
                peer("compact")
            else:
                (self.store if who == "self" else self.other).compact()

        @rule()
        def reopen(self) -> None:
            self.store.close()
            self.store = Store(path, durable=False, cache_bytes=4096)

        @invariant()
        def gets_agree(self) -> None:
            for key in "abcd":
                first = self.store.get(key)
                assert first == self.model[key]
                if first is not None:
                    _mutate_everywhere(first)
                assert self.store.get(key) == self.model[key]
                assert self.other.get(key) == self.model[key]

        @invariant()
        def the_bound_is_counted_exactly(self) -> None:
            for store in (self.store, self.other):
                cache = store._core.state.cache
                assert cache.used == sum(e[2] for e in cache.young.values())
                assert cache.used_old == sum(e[2] for e in cache.old.values())
                assert cache.used + cache.used_old <= 4096

        def teardown(self) -> None:
            self.store.close()
            self.other.close()

    CacheModel.TestCase.settings = settings(
        max_examples=40, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    try:
        CacheModel.TestCase().runTest()
    finally:
        peer.close()
